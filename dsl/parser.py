"""Parse ``.sched`` text into the located syntax tree of :mod:`aglmc.dsl.ast`.

The grammar lives in ``schedule.lark`` and is compiled once, on first use, into an LALR(1) parser. Lark's parse
tree becomes frozen dataclasses (``_Builder``), and every lark error becomes a :class:`ScheduleError` that
points at the offending token and says in words what was expected there::

    net.sched:3:15: error: expected '=' after dataset name 'calib', got '{'

Parsing checks only what the text itself shows: syntax, string escapes, positive input dimensions, the form of
model and data set sources, and that ``model``, ``evaluate`` and ``generate`` appear at most once. Everything that needs the
pass and target registries is :func:`aglmc.dsl.check.check`'s job.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from aglmc.dsl.ast import (DatasetDecl, EvaluateDecl, GenerateDecl, InputDecl, ModelDecl, PassStep, Schedule,
                           Selector, Setting, Source, TargetDecl, Value)
from aglmc.dsl.params import Ident
from aglmc.errors import Location, ScheduleError

__all__ = ["parse_text", "parse_file"]

_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}

# Where a source may come from, besides "file.py:factory".
_SOURCE_SUFFIX = {"model": ".onnx", "dataset": ".npz"}


@functools.cache
def _lark() -> Lark:
    grammar = Path(__file__).with_name("schedule.lark").read_text(encoding="utf-8")
    # The basic lexer makes keywords reserved words; lark's default contextual lexer would read `passes` as the
    # keyword `pass` followed by the name `es` wherever a name cannot follow.
    return Lark(grammar, parser="lalr", lexer="basic", propagate_positions=True, maybe_placeholders=True)


def parse_text(text: str, path: Union[str, Path]) -> Schedule:
    """Parse the text of a schedule.

    Parameters
    ----------
    text : the schedule's source.
    path : the file it came from; locations name it and sources are resolved against its folder.

    Raises
    ------
    ScheduleError
        located at the first syntax error, bad string escape, bad input dimension or bad source.
    """
    path = Path(path)
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, str(path), text) from None
    try:
        return _Builder(path, text).transform(tree)
    except VisitError as e:
        raise e.orig_exc from None


def parse_file(path: Union[str, Path]) -> Schedule:
    """Read and parse a ``.sched`` file; a missing or unreadable file is a :class:`ScheduleError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScheduleError(f"schedule file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScheduleError(f"cannot read schedule file {path}: {e}") from e
    return parse_text(text, path)


def _span(file: str, item) -> Location:
    """The location of a token or of a tree's ``meta``."""
    return Location(file, item.line, item.column, item.end_line, item.end_column)


@v_args(meta=True, inline=True)
class _Builder(Transformer):
    """Turns lark's parse tree into :class:`Schedule` (each method builds the node of its rule)."""

    def __init__(self, path: Path, text: str):
        super().__init__()
        self.path = path
        self.text = text
        self.file = str(path)

    def _loc(self, item) -> Location:
        return _span(self.file, item)

    def _error(self, message: str, loc: Location, hint: Optional[str] = None) -> ScheduleError:
        return ScheduleError(message, loc, hint=hint, source=self.text)

    def _unquote(self, token: Token) -> str:
        def escape(m: re.Match) -> str:
            if m.group(1) not in _ESCAPES:
                col = token.column + 1 + m.start()
                raise self._error(f"unknown escape '\\{m.group(1)}' in string",
                                  Location(self.file, token.line, col, token.line, col + 2),
                                  hint='the escapes are \\" \\\\ \\n and \\t')
            return _ESCAPES[m.group(1)]

        return re.sub(r"\\(.)", escape, token[1:-1])

    def _source(self, token: Token, what: str) -> Source:
        """``"file.onnx"``/``"file.npz"`` or ``"file.py:factory"``, resolved against the schedule's folder."""
        text, loc = self._unquote(token), self._loc(token)
        suffix = _SOURCE_SUFFIX[what]
        form = f'an {suffix} file or "file.py:factory"'
        file, factory = text.rsplit(":", 1) if ":" in text else (text, None)
        if factory is not None and not (file.endswith(".py") and factory.isidentifier()):
            raise self._error(f"bad {what} source '{text}'", loc, hint=f"a {what} comes from {form}")
        if factory is None and not file.endswith(suffix):
            hint = (f'name the factory that builds it: "{file}:build"' if file.endswith(".py")
                    else f"a {what} comes from {form}")
            raise self._error(f"unsupported {what} source '{text}'", loc, hint=hint)
        return Source(text, (self.path.parent / file).resolve(), factory, loc)

    def start(self, meta, *statements) -> Schedule:
        def every(kind):
            return tuple(s for s in statements if isinstance(s, kind))

        return Schedule(self.path, self.text, self._single(every(ModelDecl), "model"), every(InputDecl),
                        every(DatasetDecl), self._single(every(EvaluateDecl), "evaluate"), every(PassStep),
                        every(TargetDecl), self._single(every(GenerateDecl), "generate"))

    def _single(self, found: tuple, keyword: str):
        """The one statement of a kind that may appear at most once, or None."""
        if len(found) > 1:
            raise self._error(f"a schedule has one '{keyword}' statement; this is the second", found[1].loc,
                              hint=f"the first is at line {found[0].loc.line}")
        return found[0] if found else None

    def model(self, meta, source: Token) -> ModelDecl:
        return ModelDecl(self._source(source, "model"), self._loc(meta))

    def input(self, meta, name: Token, dtype: Token, *dims: Optional[Token]) -> InputDecl:
        dims = [d for d in dims if d is not None]
        for dim in dims:
            if int(dim) <= 0:
                raise self._error(f"input dimensions are positive integers, got {dim}", self._loc(dim))
        return InputDecl(str(name), str(dtype), tuple(int(d) for d in dims), self._loc(name), self._loc(dtype))

    def dataset(self, meta, name: Token, source: Token) -> DatasetDecl:
        return DatasetDecl(str(name), self._source(source, "dataset"), self._loc(name))

    def evaluate(self, meta, keyword: Token, settings: tuple) -> EvaluateDecl:
        return EvaluateDecl(settings, self._loc(keyword))

    def generate(self, meta, keyword: Token, settings: tuple) -> GenerateDecl:
        return GenerateDecl(settings, self._loc(keyword))

    def pass_step(self, meta, name: Token, ops: Optional[Selector], glob: Optional[Selector],
                  settings: Optional[tuple]) -> PassStep:
        parts = [s for s in (ops, glob) if s is not None]
        selector = Selector()
        if parts:
            first, last = parts[0].loc, parts[-1].loc
            selector = Selector(ops.ops if ops else (), glob.path if glob else None,
                                Location(self.file, first.line, first.col, last.end_line, last.end_col),
                                ops.ops_locs if ops else ())
        return PassStep(str(name), selector, settings or (), self._loc(name))

    def ops(self, meta, *names: Token) -> Selector:
        return Selector(ops=tuple(map(str, names)), loc=self._loc(meta), ops_locs=tuple(map(self._loc, names)))

    def glob(self, meta, pattern: Token) -> Selector:
        return Selector(path=self._unquote(pattern), loc=self._loc(meta))

    def target(self, meta, kind: Token, settings: Optional[tuple]) -> TargetDecl:
        return TargetDecl(str(kind), settings or (), self._loc(kind))

    def block(self, meta, *settings: Setting) -> tuple:
        return settings

    def setting(self, meta, key: Token, value: Value) -> Setting:
        return Setting(str(key), value, self._loc(key))

    def int_value(self, meta, token: Token) -> Value:
        return Value(int(token), self._loc(meta))

    def float_value(self, meta, token: Token) -> Value:
        return Value(float(token), self._loc(meta))

    def str_value(self, meta, token: Token) -> Value:
        return Value(self._unquote(token), self._loc(meta))

    def true(self, meta) -> Value:
        return Value(True, self._loc(meta))

    def false(self, meta) -> Value:
        return Value(False, self._loc(meta))

    def ident(self, meta, token: Token) -> Value:
        return Value(Ident(str(token)), self._loc(meta))

    def list_value(self, meta, *items: Optional[Value]) -> Value:
        return Value(tuple(i for i in items if i is not None), self._loc(meta))


# ---- syntax errors in words --------------------------------------------------------------------------------

_IGNORED = {"WS", "COMMENT"}
_WORDS = {"NAME": "a name", "STRING": "a string", "INT": "an integer", "FLOAT": "a number", "$END": "end of file"}
_STATEMENTS = ("MODEL", "INPUT", "DATASET", "EVALUATE", "GENERATE", "PASS", "TARGET")
_VALUE_STARTS = {"INT", "FLOAT", "STRING", "TRUE", "FALSE", "NAME", "LSQB"}
# What a NAME is, judged by the token that opened its statement or list.
_NAME_ROLES = {"INPUT": "input name", "COLON": "dtype", "DATASET": "dataset name", "PASS": "pass name",
               "TARGET": "target kind", "ON": "op kind", "LBRACE": "setting name"}


def _syntax_error(err: UnexpectedInput, file: str, text: str) -> ScheduleError:
    """A located, worded :class:`ScheduleError` for one of lark's parse errors."""
    stack = getattr(err.state, "value_stack", ())
    # lark's `accepts()` replays the parser, so unlike `expected` it lists no terminal merged in by LALR
    parser = getattr(err, "interactive_parser", None)
    accepts = parser.accepts() if parser else None
    if isinstance(err, UnexpectedCharacters):
        line, col = err.line, err.column
        if err.char == '"':  # a quote the STRING pattern cannot match has no closing quote on its line
            end = len(text.splitlines()[line - 1]) + 1
            return ScheduleError("unterminated string", Location(file, line, col, line, end),
                                 hint='close it with " on the same line', source=text)
        loc, got, expected = Location(file, line, col, line, col + 1), f"'{err.char}'", accepts or err.allowed
    elif isinstance(err, UnexpectedToken) and err.token.type != "$END":
        token = err.token
        loc, got, expected = _span(file, token), _describe_token(token), accepts or err.expected
    else:  # end of input: point just after the last token
        token = getattr(err, "token", None)
        line, col = (token.end_line, token.end_column) if token and token.end_line else _end_of(text)
        loc, got, expected = Location(file, line, col), "end of file", accepts or err.expected
    # between statements, what came before says nothing about what may come next
    after = "" if set(expected) - _IGNORED <= {*_STATEMENTS, "$END"} else _after(stack)
    return ScheduleError(f"expected {_describe_expected(expected)}{after}, got {got}", loc, source=text)


def _end_of(text: str) -> tuple:
    lines = text.splitlines() or [""]
    return len(lines), len(lines[-1]) + 1


def _describe_token(token: Token) -> str:
    shown = token if len(token) <= 30 else token[:27] + "..."
    return f"string {shown}" if token.type == "STRING" else f"'{shown}'"


def _describe_expected(names: Iterable[str]) -> str:
    names = set(names) - _IGNORED
    words = []
    if _VALUE_STARTS <= names:
        names -= _VALUE_STARTS
        words.append("a value")
    if {"INT", "FLOAT"} <= names:
        names -= {"INT", "FLOAT"}
        words.append("a number")
    statement = set(_STATEMENTS) <= names
    if statement:
        names -= {*_STATEMENTS, "$END"}
    if "RBRACE" in names and "NAME" in names:  # a name may only open a setting where a block may close
        names.remove("NAME")
        words.append("a setting")
    words += sorted(_WORDS.get(n) or _literal(n) for n in names)
    if statement:
        kinds = ", ".join(s.lower() for s in _STATEMENTS)
        words.append("a new statement" if words else f"a statement ({kinds})")
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _literal(terminal: str) -> str:
    return f"'{_lark().get_terminal(terminal).pattern.value}'"


def _after(stack: Sequence) -> str:
    """' after <what the parser saw last>', from lark's value stack at the error."""
    if not stack or not isinstance(stack[-1], Token):
        return ""
    last = stack[-1]
    if last.type == "STRING":
        return " after a string"
    role = None
    if last.type == "NAME":
        # what a name is depends on the nearest token that opened its list: `on a, b`, `{ a = 1, b`, `[a, b`
        for item in reversed(stack[:-1]):
            if isinstance(item, Token) and item.type not in ("COMMA", "NAME"):
                role = _NAME_ROLES.get(item.type)
                break
    return f" after {role} '{last}'" if role else f" after '{last}'"
