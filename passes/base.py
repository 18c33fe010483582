"""The pass API: what a pass is, how it is registered, and what it is given when it runs.

A pass is one class in one file under ``passes/``::

    from aglmc.dsl.params import Param
    from aglmc.passes.base import Pass, PassResult, register_pass

    @register_pass
    class FoldBatchNorm(Pass):
        '''Fold inference batch norm into the preceding conv / linear.'''
        name = "fold_batchnorm"            # the name a .sched file writes: `pass fold_batchnorm`
        graph_kinds = ("fx", "onnx")       # which graph forms it handles
        requires = ()                      # graph properties that must hold before it runs
        guarantees = ("no_batchnorm",)     # properties that hold after it ran
        params = (Param("eps_override", "float", default=0.0, doc="..."),)

        def run_fx(self, gm, ctx): ... return PassResult(changed=True, summary="folded 3 batch norms")
        def run_onnx(self, graph, ctx): ...

Modules in this package are discovered automatically, so dropping a file here registers its passes; passes that
live outside the tree are loaded with ``aglmc build --plugin FILE.py`` (see :func:`load_plugin`).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple, Type

from aglmc.dsl.params import Param
from aglmc.errors import AglmcError, PassError

GRAPH_KINDS = ("fx", "onnx")


@dataclass
class PassResult:
    """What a pass did: whether the graph changed, a one-line summary and per-site details for the report."""

    changed: bool
    summary: str = ""
    details: List[str] = field(default_factory=list)


@dataclass
class PassContext:
    """What a running pass may use besides the graph.

    ``selects(node)`` answers whether a node is inside the step's selector; ``datasets`` maps the schedule's
    data set names to loaded data (a :class:`aglmc.compiler.data.Dataset`); ``example_inputs`` are the
    model's inputs as numpy arrays, by name; ``reference_module`` is the original, untransformed
    ``torch.nn.Module`` of a PyTorch model (None for ONNX), e.g. the teacher for distillation: passes must not
    modify it; ``log`` prints a progress line.
    """

    selects: Any
    datasets: Mapping[str, Any] = field(default_factory=dict)
    example_inputs: Mapping[str, Any] = field(default_factory=dict)
    reference_module: Any = None
    log: Any = print
    explain: bool = False


class Pass:
    """Base class of every graph pass. Subclasses set the class attributes and implement ``run_<kind>``."""

    name: ClassVar[str] = ""
    graph_kinds: ClassVar[Tuple[str, ...]] = ()
    requires: ClassVar[Tuple[str, ...]] = ()
    guarantees: ClassVar[Tuple[str, ...]] = ()
    #: properties this pass makes false again (e.g. a pass that re-introduces batch norms)
    invalidates: ClassVar[Tuple[str, ...]] = ()
    params: ClassVar[Tuple[Param, ...]] = ()

    def __init__(self, **params: Any):
        known = {p.name: p for p in self.params}
        for key in params:
            if key not in known:
                raise PassError(f"pass '{self.name}' has no parameter '{key}'")
        self.options: Dict[str, Any] = {p.name: p.default for p in self.params if not p.required}
        self.options.update(params)
        missing = [p.name for p in self.params if p.required and p.name not in self.options]
        if missing:
            raise PassError(f"pass '{self.name}' needs parameter(s) {', '.join(missing)}")
        problem = self.validate(self.options)
        if problem:
            raise PassError(f"pass '{self.name}': {problem}")

    @classmethod
    def validate(cls, params: Mapping[str, Any]) -> Optional[str]:
        """Check the parameters together (each is already typed and in range); an error message or None.

        ``aglmc check`` calls it too, so a bad combination is reported at the step in the schedule.
        """
        return None

    def run(self, kind: str, graph: Any, ctx: PassContext) -> PassResult:
        if kind not in self.graph_kinds:
            raise PassError(f"pass '{self.name}' does not handle {kind} graphs (it handles: "
                            f"{', '.join(self.graph_kinds)})")
        result = getattr(self, f"run_{kind}")(graph, ctx)
        if not isinstance(result, PassResult):
            raise TypeError(f"pass '{self.name}'.run_{kind} returned {type(result).__name__}, not PassResult")
        return result

    def run_fx(self, gm, ctx: PassContext) -> PassResult:  # pragma: no cover - overridden
        raise NotImplementedError

    def run_onnx(self, graph, ctx: PassContext) -> PassResult:  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def describe(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


_REGISTRY: Dict[str, Type[Pass]] = {}


def register_pass(cls: Type[Pass]) -> Type[Pass]:
    """Class decorator: make ``cls`` available to schedules under ``cls.name``."""
    if not isinstance(cls, type) or not issubclass(cls, Pass):
        raise TypeError("register_pass decorates subclasses of aglmc.passes.base.Pass")
    if not cls.name or not cls.name.isidentifier():
        raise ValueError(f"{cls.__qualname__}: a pass needs a name that is an identifier, got {cls.name!r}")
    bad = [k for k in cls.graph_kinds if k not in GRAPH_KINDS]
    if not cls.graph_kinds or bad:
        raise ValueError(f"pass '{cls.name}': graph_kinds must be a non-empty subset of {GRAPH_KINDS}")
    for kind in cls.graph_kinds:
        if getattr(cls, f"run_{kind}") is getattr(Pass, f"run_{kind}"):
            raise ValueError(f"pass '{cls.name}' declares graph kind '{kind}' but does not define run_{kind}")
    other = _REGISTRY.get(cls.name)
    if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"pass name '{cls.name}' is taken by {other.__module__}.{other.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


_DISCOVERED = False


def _discover() -> None:
    """Import every pass module of this package (not the ``*_test`` files) so their passes register."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    import aglmc.passes as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_") or info.name.endswith("_test") or info.name == "base":
            continue
        importlib.import_module(f"aglmc.passes.{info.name}")


def registry() -> Mapping[str, Type[Pass]]:
    """All registered passes by name (in-tree passes and loaded plugins)."""
    _discover()
    return dict(_REGISTRY)


def get_pass(name: str) -> Type[Pass]:
    reg = registry()
    if name not in reg:
        from aglmc.errors import did_you_mean

        raise PassError(f"unknown pass '{name}'", hint=did_you_mean(name, reg))
    return reg[name]


def load_plugin(path: str | Path) -> List[str]:
    """Import a Python file that registers passes; returns the names it added.

    Raises a located :class:`PassError` when the file is missing or fails to import.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise PassError(f"plugin file not found: {path}")
    before = set(registry())
    mod_name = f"aglmc_plugin_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except AglmcError:
        raise
    except Exception as e:  # the plugin's own bug: say where
        raise PassError(f"plugin {path} failed to import: {type(e).__name__}: {e}") from e
    return sorted(set(_REGISTRY) - before)
