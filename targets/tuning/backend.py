"""What the tuning loop needs from a target: its kernels, their untuned schedules, a search space, a builder and
a runner. :class:`CpuBackend` is the LLVM CPU targets' (host here, arm on boards); the vulkan target has its
own (:mod:`aglmc.targets.vulkan.tuning`). The loop itself (:mod:`.tuner`) knows none of them.

A backend, in the order the loop uses it::

    extract_tasks(relax_mod, target)          the kernels to tune (tasks.Task), as the target's build cuts them
    pipeline_key(target)                      what identifies that cutting (part of a finished model's key)
    default_kernels(relax_mod, target, tasks) each task as an untuned build schedules it: {shash: (mod, rule)}
    search_target(target), design_space(target), load_intrinsics()   what MetaSchedule's TuneContext gets
    open(target, measure) / close()           start and stop the builder and runner
    build(mods) -> [(artifact, error)]        candidates into what the runner loads (artifact None: failed)
    runner, device_type                       a MetaSchedule runner and the RunnerInput device it reads
    describe()                                where candidates run, for messages
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

#: explicit unroll depths the CPU search may pick (MetaSchedule's LLVM default adds 512: one depthwise kernel of
#: MobileNetV2 tuned with it took LLVM 30 s to compile, and made a warm rebuild 24 s instead of 5 s)
UNROLL_MAX_STEPS = (0, 16, 64)


def design_space(target):
    """The search space of a task: MetaSchedule's post-order-apply with its LLVM rules, except that explicit
    unrolling stops at :data:`UNROLL_MAX_STEPS` (compile time stays bounded); other targets: the default."""
    from tvm.s_tir import meta_schedule as ms

    if target.kind.name != "llvm":
        return "post-order-apply"
    rules = []
    for rule in ms.ScheduleRule.create("llvm"):
        if isinstance(rule, ms.schedule_rule.ParallelizeVectorizeUnroll):
            rule = ms.schedule_rule.ParallelizeVectorizeUnroll(max_jobs_per_core=16, max_vectorize_extent=64,
                                                               unroll_max_steps=list(UNROLL_MAX_STEPS),
                                                               unroll_explicit=True)
        rules.append(rule)
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs="llvm", mutator_probs="llvm")


class TuningBackend:
    """The interface :func:`~aglmc.targets.tuning.tuner.tune_kernels` drives (see the module doc)."""

    device_type = "cpu"
    runner = None

    def extract_tasks(self, relax_mod, target) -> List:
        raise NotImplementedError

    def pipeline_key(self, target) -> str:
        raise NotImplementedError

    def default_kernels(self, relax_mod, target, tasks: Sequence) -> Dict[str, Tuple[object, Optional[str]]]:
        raise NotImplementedError

    def search_target(self, target):
        """The target MetaSchedule's TuneContext sees (its schedule rules read their limits from it)."""
        return target

    def design_space(self, target):
        return design_space(target)

    def load_intrinsics(self) -> None:
        pass

    def open(self, target, measure) -> None:
        raise NotImplementedError

    def build(self, mods: Sequence) -> List[Tuple[Optional[str], Optional[str]]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> str:
        raise NotImplementedError


class CpuBackend(TuningBackend):
    """LLVM CPU targets: aglmc's CPU pipeline cuts the tasks, ``linker`` links candidates in worker processes,
    MetaSchedule's LocalRunner (``runner_spec.board`` None) or RPCRunner (boards) times them."""

    def __init__(self, linker, runner_spec):
        self.linker = linker
        self.runner_spec = runner_spec
        self.builder = None
        self.target = None

    def extract_tasks(self, relax_mod, target) -> List:
        from .tasks import extract_tasks

        return extract_tasks(relax_mod, target)

    def pipeline_key(self, target) -> str:
        from aglmc.targets.cpu import pipeline_steps

        return ",".join(name for name, _ in pipeline_steps(target))

    def default_kernels(self, relax_mod, target, tasks):
        from .tasks import default_kernels

        return default_kernels(relax_mod, target, tasks)

    def load_intrinsics(self) -> None:
        from .measure import load_cpu_intrinsics

        load_cpu_intrinsics()

    def open(self, target, measure) -> None:
        from aglmc.targets.llvm import usable_cores

        from .measure import CandidateBuilder, make_runner

        self.target = target
        self.builder = CandidateBuilder(self.linker, workers=usable_cores(), timeout=measure.build_timeout)
        self.runner = make_runner(self.runner_spec, measure)

    def build(self, mods):
        return self.builder.build(mods, self.target)

    def close(self) -> None:
        if self.builder is not None:
            self.builder.close()

    def describe(self) -> str:
        return self.runner_spec.describe()
