"""Check a parsed schedule against the registries of passes, targets, metrics and op kinds.

:func:`check` resolves a :class:`~aglmc.dsl.ast.Schedule` into a :class:`CheckedSchedule`: every name is known,
every setting is typed, in range and filled with its default, and every pass step's ``requires`` is guaranteed by
an earlier step. The first problem found is raised as a located :class:`ScheduleError` with a hint.

The registries come in as a :class:`Catalog` of plain declarations, so this module imports neither the passes nor
the targets; the compiler builds the catalog from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

from aglmc.dsl.ast import DatasetDecl, InputDecl, ModelDecl, PassStep, Schedule, Selector, Setting, Source, Value
from aglmc.dsl.params import Ident, Param
from aglmc.errors import Location, ScheduleError, did_you_mean

__all__ = ["DTYPES", "PassSig", "Catalog", "ResolvedStep", "ResolvedTarget", "Evaluation", "Generation",
           "CheckedSchedule", "check"]

DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool")


@dataclass(frozen=True)
class PassSig:
    """What the checker needs to know about a pass (mirrors the class attributes of ``passes.base.Pass``)."""

    name: str
    params: Tuple[Param, ...] = ()
    graph_kinds: Tuple[str, ...] = ()
    requires: Tuple[str, ...] = ()
    guarantees: Tuple[str, ...] = ()
    invalidates: Tuple[str, ...] = ()
    doc: str = ""
    #: a check of the parameters together (each one is already typed and in range): an error message or None
    validate: Optional[Callable[[Mapping[str, Any]], Optional[str]]] = field(default=None, compare=False)


@dataclass(frozen=True)
class Catalog:
    """Everything a schedule may name.

    Parameters
    ----------
    passes : pass signatures by pass name.
    targets : each target kind's parameters.
    metrics : the metrics ``evaluate`` may use; the first is the default.
    op_kinds : the op kinds a selector may name (``on conv2d, linear``).
    generate : the settings of a ``generate`` block (empty: the block is not accepted).
    """

    passes: Mapping[str, PassSig]
    targets: Mapping[str, Tuple[Param, ...]]
    metrics: Tuple[str, ...]
    op_kinds: Tuple[str, ...]
    generate: Tuple[Param, ...] = ()

    def __post_init__(self):
        if not self.metrics:
            raise ValueError("a catalog needs at least one metric (the default of `evaluate`)")

    def evaluate_params(self) -> Tuple[Param, ...]:
        """The settings of an ``evaluate`` block."""
        return (
            Param("data", "dataset", default=None, doc="the data set the model is evaluated on"),
            Param("metric", "enum", default=self.metrics[0], choices=self.metrics, doc="how outputs are scored"),
            Param("tolerance", "float", default=None, min=0, min_open=True,
                  doc="the largest absolute output error allowed vs the original model"),
            Param("metric_drop", "float", default=None, min=0,
                  doc="the largest metric drop allowed vs the original model"),
            Param("limit", "int", default=None, min=1, doc="how many samples to evaluate"),
        )


@dataclass(frozen=True)
class ResolvedStep:
    """A checked pass step: ``params`` holds every parameter, defaults filled, as plain Python values."""

    name: str
    selector: Selector
    params: Mapping[str, Any]
    loc: Location = field(compare=False)


@dataclass(frozen=True)
class ResolvedTarget:
    """A checked target block, defaults filled."""

    kind: str
    params: Mapping[str, Any]
    loc: Location = field(compare=False)


@dataclass(frozen=True)
class Evaluation:
    """A checked ``evaluate`` block; unset optional settings are None."""

    data: Optional[str]
    metric: str
    tolerance: Optional[float]
    metric_drop: Optional[float]
    limit: Optional[int]
    loc: Location = field(compare=False)


@dataclass(frozen=True)
class Generation:
    """A checked ``generate`` block: every setting, defaults filled."""

    params: Mapping[str, Any]
    loc: Location = field(compare=False)


@dataclass(frozen=True)
class CheckedSchedule:
    """A schedule whose names, settings and step order are valid; equality ignores the source text."""

    schedule: Schedule = field(compare=False, repr=False)
    model: ModelDecl
    inputs: Tuple[InputDecl, ...]
    datasets: Mapping[str, DatasetDecl]
    evaluation: Optional[Evaluation]
    steps: Tuple[ResolvedStep, ...]
    targets: Tuple[ResolvedTarget, ...]
    generation: Optional[Generation] = None


def check(schedule: Schedule, catalog: Catalog) -> CheckedSchedule:
    """Resolve ``schedule`` against ``catalog``.

    Raises
    ------
    ScheduleError
        the first problem found, located in the schedule, with a hint where one helps.
    """
    return _Checker(schedule, catalog).run()


_EXPECTED = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
             "dataset": "a dataset name"}
_PLURAL = {"int": "integers", "float": "numbers", "str": "strings"}


def _suggest(name: str, candidates: Iterable[str], what: str) -> Optional[str]:
    """'did you mean' when something is close, else the list of ``what`` there is."""
    candidates = sorted(candidates)
    return did_you_mean(name, candidates) or (f"{what}: {', '.join(candidates)}" if candidates else None)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Ident):
        return f"the name '{value}'"
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, tuple):
        return "a list"
    return repr(value)


def _range_words(p: Param) -> str:
    if p.min is not None and p.max is not None:
        return f"in {p.describe_range()}"
    if p.min is not None:
        return f"{'>' if p.min_open else '>='} {p.min}"
    return f"{'<' if p.max_open else '<='} {p.max}"


def _in_range(p: Param, v: float) -> bool:
    above = p.min is None or (v > p.min if p.min_open else v >= p.min)
    below = p.max is None or (v < p.max if p.max_open else v <= p.max)
    return above and below


def _default(p: Param) -> Any:
    """A parameter's default in the form a parsed value takes (so a formatted schedule re-checks equal)."""
    v = p.default
    if v is None:
        return None
    if p.type == "float":
        return float(v)
    if p.type.startswith("list["):
        return tuple(float(x) if p.type == "list[float]" else x for x in v)
    return v


class _Checker:
    """Checks one schedule: each method resolves one part and raises at the first problem in it."""

    def __init__(self, schedule: Schedule, catalog: Catalog):
        self.schedule = schedule
        self.catalog = catalog
        self.file = str(schedule.path)
        self.datasets: Dict[str, DatasetDecl] = {}

    def error(self, message: str, loc: Location, hint: Optional[str] = None) -> ScheduleError:
        return ScheduleError(message, loc, hint=hint, source=self.schedule.text)

    def run(self) -> CheckedSchedule:
        model = self.model()
        inputs = self.inputs()
        self.datasets = self.declared_datasets()
        evaluation = self.evaluation()
        generation = self.generation(model)
        steps = self.steps()
        targets = self.targets()
        return CheckedSchedule(self.schedule, model, inputs, dict(self.datasets), evaluation, steps, targets,
                               generation)

    def model(self) -> ModelDecl:
        model = self.schedule.model
        if model is None:
            raise self.error("the schedule has no model", Location(self.file, 1, 1),
                             hint='add `model "model.py:build"` or `model "net.onnx"`')
        self.exists(model.source, "model")
        return model

    def exists(self, source: Source, what: str) -> None:
        if not source.path.is_file():
            raise self.error(f"{what} file not found: {source.path.name}", source.loc,
                             hint=f"looked for {source.path} (paths are relative to the schedule's folder)")

    def inputs(self) -> Tuple[InputDecl, ...]:
        seen: Dict[str, InputDecl] = {}
        for decl in self.schedule.inputs:
            if decl.name in seen:
                raise self.error(f"input '{decl.name}' is declared twice", decl.loc,
                                 hint=f"the first is at line {seen[decl.name].loc.line}")
            if decl.dtype not in DTYPES:
                raise self.error(f"unknown dtype '{decl.dtype}'", decl.dtype_loc,
                                 hint=_suggest(decl.dtype, DTYPES, "dtypes"))
            seen[decl.name] = decl
        return self.schedule.inputs

    def declared_datasets(self) -> Dict[str, DatasetDecl]:
        seen: Dict[str, DatasetDecl] = {}
        for decl in self.schedule.datasets:
            if decl.name in seen:
                raise self.error(f"dataset '{decl.name}' is declared twice", decl.loc,
                                 hint=f"the first is at line {seen[decl.name].loc.line}")
            self.exists(decl.source, "dataset")
            seen[decl.name] = decl
        return seen

    def evaluation(self) -> Optional[Evaluation]:
        decl = self.schedule.evaluate
        if decl is None:
            return None
        params = self.settings(decl.settings, self.catalog.evaluate_params(), "evaluate", decl.loc)
        return Evaluation(**params, loc=decl.loc)

    def generation(self, model: ModelDecl) -> Optional[Generation]:
        decl = self.schedule.generate
        if decl is None:
            return None
        if not self.catalog.generate:
            raise self.error("this catalog has no language-model builds", decl.loc)
        if not model.source.is_python:
            raise self.error("a generate block needs a PyTorch model (\"model.py:factory\"): the cached "
                             "prefill/decode entry points are written around the model's own modules", decl.loc)
        params = self.settings(decl.settings, self.catalog.generate, "generate", decl.loc)
        return Generation(params, decl.loc)

    def steps(self) -> Tuple[ResolvedStep, ...]:
        holds: Dict[str, PassStep] = {}  # property -> the step that guaranteed it
        invalidated: Dict[str, PassStep] = {}  # property -> the step that made it false since
        steps = []
        for step in self.schedule.passes:
            sig = self.catalog.passes.get(step.name)
            if sig is None:
                raise self.error(f"unknown pass '{step.name}'", step.loc,
                                 hint=_suggest(step.name, self.catalog.passes, "passes"))
            for op, loc in zip(step.selector.ops, step.selector.ops_locs):
                if op not in self.catalog.op_kinds:
                    raise self.error(f"unknown op kind '{op}'", loc,
                                     hint=_suggest(op, self.catalog.op_kinds, "op kinds"))
            params = self.settings(step.settings, sig.params, f"pass '{step.name}'", step.loc)
            problem = sig.validate(params) if sig.validate is not None else None
            if problem:
                raise self.error(f"pass '{step.name}': {problem}", step.loc)
            for prop in sig.requires:
                if prop not in holds:
                    raise self.unmet(step, prop, invalidated.get(prop))
            for prop in sig.invalidates:
                holds.pop(prop, None)
                invalidated[prop] = step
            for prop in sig.guarantees:
                holds[prop] = step
                invalidated.pop(prop, None)
            steps.append(ResolvedStep(step.name, step.selector, params, step.loc))
        return tuple(steps)

    def unmet(self, step: PassStep, prop: str, breaker: Optional[PassStep]) -> ScheduleError:
        why = (f"which pass '{breaker.name}' at line {breaker.loc.line} invalidated" if breaker
               else "which no earlier step guarantees")
        providers = sorted(name for name, sig in self.catalog.passes.items() if prop in sig.guarantees)
        hint = None
        if len(providers) == 1:
            hint = f"add `pass {providers[0]}` before this step"
        elif providers:
            hint = f"add one of {', '.join(f'`pass {p}`' for p in providers)} before this step"
        return self.error(f"pass '{step.name}' requires '{prop}', {why}", step.loc, hint=hint)

    def targets(self) -> Tuple[ResolvedTarget, ...]:
        seen: Dict[str, ResolvedTarget] = {}
        for decl in self.schedule.targets:
            params = self.catalog.targets.get(decl.kind)
            if params is None:
                raise self.error(f"unknown target '{decl.kind}'", decl.loc,
                                 hint=_suggest(decl.kind, self.catalog.targets, "targets"))
            if decl.kind in seen:
                raise self.error(f"target '{decl.kind}' is declared twice", decl.loc,
                                 hint=f"the first is at line {seen[decl.kind].loc.line}")
            seen[decl.kind] = ResolvedTarget(decl.kind, self.settings(decl.settings, params, f"target '{decl.kind}'",
                                                                      decl.loc), decl.loc)
        if not seen:
            lines = self.schedule.text.splitlines() or [""]
            kinds = ", ".join(f"`target {k}`" for k in sorted(self.catalog.targets))
            raise self.error("the schedule has no target", Location(self.file, len(lines), len(lines[-1]) + 1),
                             hint=f"add one of {kinds}" if kinds else None)
        return tuple(seen.values())

    def settings(self, settings: Tuple[Setting, ...], params: Tuple[Param, ...], owner: str,
                 owner_loc: Location) -> Dict[str, Any]:
        """Type-check a block's settings against ``params``; every parameter's value, in declaration order."""
        known = {p.name: p for p in params}
        given: Dict[str, Setting] = {}
        values: Dict[str, Any] = {}
        for s in settings:
            p = known.get(s.key)
            if p is None and not known:
                raise self.error(f"{owner} takes no settings", s.loc)
            if p is None:
                raise self.error(f"{owner} has no setting '{s.key}'", s.loc,
                                 hint=did_you_mean(s.key, known) or f"its settings are: {', '.join(known)}")
            if s.key in given:
                raise self.error(f"duplicate setting '{s.key}'", s.loc,
                                 hint=f"it is first set at line {given[s.key].loc.line}")
            given[s.key] = s
            values[s.key] = self.value(p, s.value)
        for p in params:
            if p.name not in values:
                if p.required:
                    raise self.error(f"{owner} needs the setting '{p.name}'", owner_loc,
                                     hint=f"add `{p.name} = <{p.type}>`" + (f": {p.doc}" if p.doc else ""))
                values[p.name] = _default(p)
        return {p.name: values[p.name] for p in params}

    def value(self, p: Param, value: Value) -> Any:
        """The plain Python value of ``value`` as parameter ``p``, checked."""
        if p.type.startswith("list["):
            if not isinstance(value.value, tuple):
                raise self.error(f"{p.name} must be a list of {_PLURAL[p.type[5:-1]]}, got {_describe(value.value)}",
                                 value.loc)
            plain = tuple(self.scalar(p, p.type[5:-1], v, f"{p.name}[{i}]") for i, v in enumerate(value.value))
        else:
            plain = self.scalar(p, p.type, value, p.name)
        message = p.check(plain) if p.check else None
        if message:
            raise self.error(message, value.loc, hint=p.doc or None)
        return plain

    def scalar(self, p: Param, kind: str, value: Value, what: str) -> Any:
        v = value.value
        ok = {"bool": isinstance(v, bool),
              "int": isinstance(v, int) and not isinstance(v, bool),
              "float": isinstance(v, (int, float)) and not isinstance(v, bool),
              "str": isinstance(v, str),
              "enum": isinstance(v, (str, Ident)),
              "dataset": isinstance(v, (str, Ident))}[kind]
        if not ok:
            expected = f"one of {', '.join(p.choices)}" if kind == "enum" else _EXPECTED[kind]
            hint = f'quote it: "{v}"' if kind == "str" and isinstance(v, Ident) else None
            raise self.error(f"{what} must be {expected}, got {_describe(v)}", value.loc, hint=hint)
        if kind == "float":
            v = float(v)
        if kind in ("int", "float") and not _in_range(p, v):
            raise self.error(f"{what} must be {_range_words(p)}, got {v}", value.loc, hint=p.doc or None)
        if kind == "enum" and str(v) not in p.choices:
            raise self.error(f"{what} must be one of {', '.join(p.choices)}, got '{v}'", value.loc,
                             hint=did_you_mean(str(v), p.choices))
        if kind == "dataset" and str(v) not in self.datasets:
            raise self.error(f"unknown dataset '{v}'", value.loc,
                             hint=did_you_mean(str(v), self.datasets) or f'declare it: dataset {v} = "data.npz"')
        return str(v) if kind in ("enum", "dataset") else v
