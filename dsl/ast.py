"""The typed, located syntax tree of a ``.sched`` file.

The parser turns lark's parse tree into these frozen dataclasses; every node carries the :class:`Location` of
the text it came from so later stages (the checker, the compiler, the passes) can point at the schedule when
something is wrong. Paths are resolved relative to the schedule's folder at parse time.

Locations are metadata: they take no part in equality, so a schedule re-parsed from its formatted text compares
equal to the original.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Tuple

from aglmc.errors import Location


@dataclass(frozen=True)
class Value:
    """A literal: int, float, str, bool, :class:`~aglmc.dsl.params.Ident` or a tuple of Values."""

    value: Any
    loc: Location = field(compare=False)

    def plain(self) -> Any:
        """The Python value with nested Values unwrapped (lists become tuples)."""
        if isinstance(self.value, tuple):
            return tuple(v.plain() for v in self.value)
        return self.value


@dataclass(frozen=True)
class Setting:
    """``key = value`` inside a block."""

    key: str
    value: Value
    loc: Location = field(compare=False)  # of the key


@dataclass(frozen=True)
class Source:
    """Where a model or data set comes from: an ``.onnx``/``.npz`` file, or ``file.py:factory``."""

    text: str  # as written in the schedule
    path: Path  # resolved against the schedule's folder
    factory: Optional[str]  # the function name for Python sources, else None
    loc: Location = field(compare=False)

    @property
    def is_python(self) -> bool:
        return self.factory is not None


@dataclass(frozen=True)
class ModelDecl:
    """``model "model.py:build"`` or ``model "net.onnx"``."""

    source: Source
    loc: Location = field(compare=False)  # of the whole statement


@dataclass(frozen=True)
class InputDecl:
    """``input NAME: DTYPE[d0, d1, ...]``."""

    name: str
    dtype: str
    shape: Tuple[int, ...]
    loc: Location = field(compare=False)  # of the name
    dtype_loc: Location = field(compare=False)


@dataclass(frozen=True)
class DatasetDecl:
    """``dataset NAME = "file.npz"`` or ``dataset NAME = "file.py:factory"``."""

    name: str
    source: Source
    loc: Location = field(compare=False)  # of the name


@dataclass(frozen=True)
class EvaluateDecl:
    """``evaluate { data = NAME  metric = accuracy  tolerance = 1e-4 ... }``."""

    settings: Tuple[Setting, ...]
    loc: Location = field(compare=False)  # of the keyword


@dataclass(frozen=True)
class GenerateDecl:
    """``generate { max_cache_len = 256  prompts = NAME ... }``: build the model as a language model that
    generates (``prefill`` + ``decode`` with a key/value cache), see :mod:`aglmc.compiler.llm`."""

    settings: Tuple[Setting, ...]
    loc: Location = field(compare=False)  # of the keyword


@dataclass(frozen=True)
class Selector:
    """Which parts of the model a pass step touches: op kinds, a module-path glob, or both.

    ``pass prune_channels on conv2d, linear in "features.*"`` → ``ops=("conv2d", "linear")``,
    ``path="features.*"``. An empty selector (no ``on``/``in``) selects everything.
    """

    ops: Tuple[str, ...] = ()
    path: Optional[str] = None
    loc: Optional[Location] = field(default=None, compare=False)
    ops_locs: Tuple[Location, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class PassStep:
    """``pass NAME [on OPS] [in "GLOB"] [{ settings }]``."""

    name: str
    selector: Selector
    settings: Tuple[Setting, ...]
    loc: Location = field(compare=False)  # of the pass name


@dataclass(frozen=True)
class TargetDecl:
    """``target KIND { settings }``."""

    kind: str
    settings: Tuple[Setting, ...]
    loc: Location = field(compare=False)  # of the kind


@dataclass(frozen=True)
class Schedule:
    """A parsed ``.sched`` file, before its names and settings are checked against the registries."""

    path: Path
    text: str
    model: Optional[ModelDecl]
    inputs: Tuple[InputDecl, ...]
    datasets: Tuple[DatasetDecl, ...]
    evaluate: Optional[EvaluateDecl]
    passes: Tuple[PassStep, ...]
    targets: Tuple[TargetDecl, ...]
    generate: Optional[GenerateDecl] = None
