"""The names a schedule may use, gathered from the registries: passes, targets, metrics, op kinds and the
settings of a ``generate`` block."""

from __future__ import annotations

from typing import Iterable

from aglmc.compiler.llm import GENERATE_PARAMS
from aglmc.compiler.verify import METRICS
from aglmc.dsl import Catalog, PassSig
from aglmc.passes.base import load_plugin, registry
from aglmc.passes.select import OP_KINDS


def build_catalog(plugins: Iterable = ()) -> Catalog:
    for plugin in plugins:
        load_plugin(plugin)
    from aglmc.targets.base import targets

    passes = {
        name: PassSig(name=name, params=cls.params, graph_kinds=cls.graph_kinds, requires=cls.requires,
                      guarantees=cls.guarantees, invalidates=cls.invalidates, doc=cls.describe(),
                      validate=cls.validate)
        for name, cls in sorted(registry().items())
    }
    return Catalog(passes=passes, targets={k: t.params for k, t in targets().items()},
                   metrics=tuple(METRICS), op_kinds=tuple(OP_KINDS), generate=GENERATE_PARAMS)
