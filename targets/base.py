"""What a target is, how it is registered, and how its settings are checked.

A target is one class in one file under ``targets/`` (``host.py``, ``arm.py``)::

    from aglmc.dsl.params import Param
    from aglmc.targets.base import Target, register_target

    @register_target
    class ArmTarget(Target):
        '''aarch64 Linux boards with NEON, cross-compiled from this machine.'''
        kind = "arm"                       # the name a .sched file writes: `target arm { ... }`
        library_name = "arm.so"            # the library's file name inside an artifact
        params = (Param("threads", "int", default=4, min=1, doc="..."), ...)

        @classmethod
        def tvm_target(cls, settings): ...  # -> tvm.target.Target built from a JSON dict
        @classmethod
        def build(cls, mod, settings, out_path): ...  # -> BuildInfo

Targets are used as classes, never instantiated: ``get_target("arm").build(mod, {"cpu": "cortex-a76"}, path)``.
``settings`` may be partial; :meth:`Target.resolve` fills in the defaults and checks every value against
``params``, so a bad setting is a :class:`~aglmc.errors.TargetError` whichever caller passed it.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple, Type

from aglmc.dsl.params import Ident, Param
from aglmc.errors import TargetError, did_you_mean

# The modules that define the built-in targets; imported on first use of the registry.
_BUILTIN_MODULES = ("aglmc.targets.host", "aglmc.targets.arm", "aglmc.targets.vulkan.target")


@dataclass(frozen=True)
class BuildInfo:
    """What one target build produced.

    ``target`` is the TVM target as JSON (``str(tvm.target.Target)``), ``settings`` the resolved settings the
    build used, ``compile_seconds``/``link_seconds`` split ``seconds``, and ``linker`` names the program that
    linked the shared object (``zig cc -target aarch64-linux-gnu``, ``/usr/bin/g++`` ...).
    """

    kind: str
    path: Path
    target: str
    settings: Mapping[str, Any]
    seconds: float
    compile_seconds: float
    link_seconds: float
    linker: str
    #: which schedule rule (or tuning record) scheduled each kernel (CPU targets), else None
    schedule: Any = field(default=None, compare=False)

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict for build reports (the target as a nested object, tuples as lists)."""
        return {
            "kind": self.kind,
            "path": str(self.path),
            "target": json.loads(self.target),
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in self.settings.items()},
            "seconds": round(self.seconds, 3),
            "compile_seconds": round(self.compile_seconds, 3),
            "link_seconds": round(self.link_seconds, 3),
            "linker": self.linker,
            **({"schedule": {f.name: {"rule": f.rule, "macs": f.macs, "calls": f.calls,
                                      **({"ms": round(f.ms, 5)} if getattr(f, "ms", None) is not None else {})}
                             for f in self.schedule.functions}}
               if self.schedule is not None else {}),
        }


class Target:
    """Base class of every target. Subclasses set the class attributes and implement the two classmethods."""

    kind: ClassVar[str] = ""
    library_name: ClassVar[str] = ""
    params: ClassVar[Tuple[Param, ...]] = ()

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def resolve(cls, settings: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """``settings`` with defaults filled in and every value checked; raises TargetError on a bad one.

        Values may come straight from a parsed schedule: ``Ident`` enum values become strings and lists may be
        tuples. Lists come back as tuples, so the result can be stored in frozen objects.
        """
        settings = dict(settings or {})
        known = {p.name: p for p in cls.params}
        for key in settings:
            if key not in known:
                raise TargetError(f"target '{cls.kind}' has no setting '{key}'",
                                  hint=did_you_mean(key, known) or f"settings: {', '.join(known)}")
        out: Dict[str, Any] = {}
        for p in cls.params:
            if p.name in settings:
                out[p.name] = _check_value(cls.kind, p, settings[p.name])
            elif p.required:
                raise TargetError(f"target '{cls.kind}' needs the setting '{p.name}' ({p.doc})")
            else:
                out[p.name] = tuple(p.default) if isinstance(p.default, list) else p.default
        return out

    @classmethod
    def tvm_target(cls, settings: Mapping[str, Any]):  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def build(cls, mod, settings: Mapping[str, Any], out_path: Path) -> BuildInfo:  # pragma: no cover
        raise NotImplementedError


def _check_value(kind: str, p: Param, value: Any) -> Any:
    """``value`` converted to ``p``'s Python type, or a TargetError that names the target and setting."""
    where = f"target '{kind}': setting '{p.name}'"
    if isinstance(value, Ident):
        value = value.name
    t = p.type
    if t.startswith("list["):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise TargetError(f"{where} must be a list, got {value!r}")
        elem = Param(p.name, t[5:-1], default=None, min=p.min, max=p.max)
        value = tuple(_check_value(kind, elem, v) for v in value)
    elif t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TargetError(f"{where} must be an integer, got {value!r}")
    elif t == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TargetError(f"{where} must be a number, got {value!r}")
        value = float(value)
    elif t == "bool":
        if not isinstance(value, bool):
            raise TargetError(f"{where} must be true or false, got {value!r}")
    elif t in ("str", "enum", "dataset"):
        if not isinstance(value, str):
            raise TargetError(f"{where} must be a string, got {value!r}")
        if t == "enum" and value not in p.choices:
            raise TargetError(f"{where} must be one of {', '.join(p.choices)}, got {value!r}",
                              hint=did_you_mean(value, p.choices))
    if t in ("int", "float"):
        low_bad = p.min is not None and (value <= p.min if p.min_open else value < p.min)
        high_bad = p.max is not None and (value >= p.max if p.max_open else value > p.max)
        if low_bad or high_bad:
            raise TargetError(f"{where} must be in {p.describe_range()}, got {value!r}")
    if p.check is not None:
        problem = p.check(value)
        if problem:
            raise TargetError(f"{where}: {problem}")
    return value


_REGISTRY: Dict[str, Type[Target]] = {}


def register_target(cls: Type[Target]) -> Type[Target]:
    """Class decorator: make ``cls`` available to schedules as ``target <cls.kind> { ... }``."""
    if not isinstance(cls, type) or not issubclass(cls, Target):
        raise TypeError("register_target decorates subclasses of aglmc.targets.base.Target")
    if not cls.kind or not cls.kind.isidentifier():
        raise ValueError(f"{cls.__qualname__}: a target needs a kind that is an identifier, got {cls.kind!r}")
    if not cls.library_name:
        raise ValueError(f"target '{cls.kind}' needs a library_name")
    other = _REGISTRY.get(cls.kind)
    if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"target kind '{cls.kind}' is taken by {other.__module__}.{other.__qualname__}")
    _REGISTRY[cls.kind] = cls
    return cls


_DISCOVERED = False


def _discover() -> None:
    global _DISCOVERED
    if not _DISCOVERED:
        _DISCOVERED = True
        for name in _BUILTIN_MODULES:
            importlib.import_module(name)


def targets() -> Mapping[str, Type[Target]]:
    """All registered targets by kind."""
    _discover()
    return dict(_REGISTRY)


def get_target(kind: str) -> Type[Target]:
    """The target class for ``kind``; an unknown kind is a TargetError with a 'did you mean' hint."""
    known = targets()
    if kind not in known:
        raise TargetError(f"unknown target '{kind}'",
                          hint=did_you_mean(kind, known) or f"targets: {', '.join(sorted(known))}")
    return known[kind]
