"""aglmc's Relax lowering pipeline for CPU targets: fuse, schedule with default rules, prepack weights.

``tvm.compile`` on an LLVM target only legalizes and lowers: no fusion, no parallel loops, no vectors
(relax/vm_build.py takes a target's own pipeline for GPUs only). :func:`cpu_pipeline` is the pipeline an
untuned build should use instead. Its steps, top to bottom:

1. library dispatch      ``cpu_generic.library_dispatch_passes`` (sampling, sort/scan)
2. legalize and fuse     decompose inference ops, softmax/exp/erf/tanh/GELU as vectorisable polynomials
                         (``fast_math``: LLVM has no vector expf/erff), fold constant calls with numpy (``fold_numpy``: what
                         FoldConstant would compile with LLVM one call at a time), aglmc's pattern fusion
                         (``relax_fusion``: pads into convs, flattens into dense), LegalizeOps, FoldConstant,
                         FuseOps, FuseTIR
3. count MACs            ``aglmc.macs`` on every fused PrimFunc (for :class:`ScheduleReport`)
4. mark constants        ``AttachAttrLayoutFreeBuffers``: parameters bound to constants may be repacked
5. apply database        ``MetaScheduleApplyDatabase`` (only with a database): tuned records win
6. schedule              ``dlight.ApplyDefaultSchedule(*rules)`` on everything still unscheduled
7. prepack weights       ``SplitLayoutRewritePreproc`` + ``FoldConstant``: packing blocks run at compile time
8. lower dataflow        ``cpu_generic.dataflow_lower_passes``
9. finalize              ``cpu_generic.finalize_passes`` (memory planning, VM shape lowering)
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.s_tir import dlight
from tvm.s_tir import meta_schedule as ms

from aglmc.errors import TargetError

from aglmc.targets.relax_fusion import FusePatterns


from .fast_math import fast_math
from .fold_numpy import fold_constants_numpy
from .isa import vector_isa
from .report import ScheduleReport, annotate_macs, call_counts
from .rules import CpuRule, default_rules


def pipeline_steps(
    target: tvm.target.Target, *, database: ms.Database | None = None, rules: list[CpuRule] | None = None
) -> list[tuple[str, tvm.transform.Pass]]:
    """The named steps of :func:`cpu_pipeline`, each one ``Sequential`` pass carrying that name."""
    # imported here: the int8 rules build on this package's rules (a module-level import is a cycle)
    from aglmc.targets.quant.int8_rule import Int8Matmul, WeightOnlyMatmul
    from aglmc.targets.quant.lower_qdq import lower_qdq_pass

    vector_isa(target)  # raises TargetError for a non-CPU target
    rules = [Int8Matmul(), WeightOnlyMatmul(), *default_rules()] if rules is None else rules  # issue 6: int kernels
    steps = [
        # issue 6 (INT8): Q/DQ chains -> int8 x int8 -> int32 kernels; must run before legalize/FoldConstant
        ("lower Q/DQ", [lower_qdq_pass(target)]),
        ("library dispatch", cpu_generic.library_dispatch_passes(target)),
        (
            "legalize and fuse",
            [relax.transform.FoldBatchnormToConv2D(), relax.transform.DecomposeOpsForInference(),
             relax.transform.CanonicalizeBindings(), fast_math, fold_constants_numpy, FusePatterns()]
            + cpu_generic.legalize_passes(target),
        ),
        ("count MACs", [annotate_macs]),
        ("mark constants", [relax.transform.AttachAttrLayoutFreeBuffers()]),
    ]
    if database is not None:
        steps.append(("apply database", [_with_database(database)]))
    steps += [
        ("schedule", [dlight.ApplyDefaultSchedule(*rules)]),
        (
            "prepack weights",
            [
                relax.transform.SplitLayoutRewritePreproc(),
                relax.transform.FoldConstant(),
                relax.transform.DeadCodeElimination(),
            ],
        ),
        ("lower dataflow", cpu_generic.dataflow_lower_passes(target)),
        ("finalize", cpu_generic.finalize_passes(target)),
    ]
    return [(name, tvm.transform.Sequential(passes, name=name)) for name, passes in steps]


def cpu_pipeline(
    target: tvm.target.Target, *, database: ms.Database | None = None, rules: list[CpuRule] | None = None
) -> tvm.transform.Pass:
    """The Relax pipeline for ``target``, for ``tvm.compile(mod, target, relax_pipeline=...)``.

    ``rules`` replaces :func:`~aglmc.targets.cpu.rules.default_rules` (tests use it to try one rule).
    """
    steps = [step for _, step in pipeline_steps(target, database=database, rules=rules)]

    @tvm.transform.module_pass(opt_level=0, name="AglmcCpuPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(steps)(mod)

    return _pipeline


def compile_cpu(
    mod: tvm.IRModule, target: tvm.target.Target, *, database: ms.Database | None = None
) -> tuple[relax.Executable, ScheduleReport]:
    """Build a Relax module for a CPU target with aglmc's pipeline.

    Returns the executable and the report of which rule (or database record) scheduled each function.
    Parallel loops use the target's ``num-cores`` (absent or 1: no parallel loops at all).

    Raises
    ------
    TargetError
        When ``target`` is not an LLVM CPU target, or TVM fails to build the module.
    """
    calls: dict = {}
    with target:
        for name, step in pipeline_steps(target, database=database):
            if name == "lower dataflow":  # the last step where kernels are still call_tir (for the time shares)
                calls = call_counts(mod)
            mod = step(mod)
    lowered = mod
    report = ScheduleReport.from_module(lowered, calls)
    try:
        executable = tvm.compile(lowered, target, relax_pipeline=None)
    except tvm.error.InternalError as err:
        raise TargetError(f"TVM could not build the scheduled module for {target.kind.name}: {err}") from err
    return executable, report


def _with_database(database: ms.Database) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="ApplyTuningDatabase")
    def _apply(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with database:
            return relax.transform.MetaScheduleApplyDatabase()(mod)

    return _apply
