"""``aglmc build``: the pipeline, top to bottom, as named steps.

    check schedule → import model → load data → evaluate original → each scheduled pass →
    legalize for TVM → import to Relax → build each target → verify → [language model] → package

A schedule with a ``generate { ... }`` block also gets the language-model step: the Linears the passes changed
are carried back into the model's modules (:mod:`aglmc.compiler.transplant`) and ``prefill`` + ``decode`` with a
key/value cache are built for every target and checked by greedy generation (:mod:`aglmc.compiler.llm`).

Each step is timed and logged; ``--print-after-all`` prints the graph after every pass and ``--dump-ir DIR``
writes it (and the Relax module) to numbered files whose names are the step names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import aglmc
from aglmc.compiler import artifact, report
from aglmc.compiler.catalog import build_catalog
from aglmc.compiler.data import Dataset, load_dataset
from aglmc.compiler.model import Model, load_model
from aglmc.compiler.stats import Stats, model_stats
from aglmc.compiler.tune import database_options, target_settings, tune_target, tuning_budget  # aglmc issue 7
from aglmc.compiler.verify import LOWERING_RTOL, Outputs, max_abs, measure_latency, metric_value, scale
from aglmc.dsl import CheckedSchedule, check, format_schedule, parse_file
from aglmc.errors import AglmcError, PassError, ScheduleError, TargetError, VerifyError
from aglmc.passes.base import PassContext, PassResult, get_pass
from aglmc.passes.quant_spec import QUANTIZED_LOWERING_RTOL, check_schedule_schemes  # aglmc issue 6
from aglmc.passes.select import make_selector

#: FX passes run on every torch model before lowering, so TVM's frontend accepts what torch.export produced
#: (each pass's docstring names the TVM 0.27 failure it works around; its test proves the failure still exists).
FX_LEGALIZATION: Sequence[str] = ("legalize_cumsum_dtype", "legalize_batchnorm")


@dataclass
class BuildOptions:
    out_dir: Path
    plugins: Sequence[Path] = ()
    print_after_all: bool = False
    dump_ir: Optional[Path] = None
    log: Callable[[str], None] = print


@dataclass
class StepRecord:
    name: str
    seconds: float


@dataclass
class PassRecord:
    name: str
    selector: str
    params: Dict[str, Any]
    result: PassResult
    seconds: float


@dataclass
class TargetRecord:
    kind: str
    library: str
    info: Any
    size: int
    sha256: str


@dataclass
class Verification:
    data: str
    samples: int
    dropped: int
    metric: str
    tolerance: Optional[float]
    metric_drop: Optional[float]
    error_vs_original: float
    error_vs_transformed: float
    output_scale: float
    metric_original: Optional[float]
    metric_transformed: Optional[float]
    metric_compiled: Optional[float]
    #: median host latency of the built library, and of the same model built without the schedule's passes
    latency_ms: Optional[float] = None
    baseline_latency_ms: Optional[float] = None
    #: size in bytes of the host library built without the schedule's passes
    baseline_size: Optional[int] = None
    #: the same evaluation run by the other targets' libraries: on a board (``board = ...`` in an arm block) or on
    #: a device of this machine (targets that have a local runner, e.g. vulkan)
    devices: List["DeviceCheck"] = field(default_factory=list)


@dataclass
class DeviceCheck:
    target: str
    where: str  # "board KEY@HOST:PORT", the device's name, or why it did not run ("not run: ...")
    error_vs_original: Optional[float]
    error_vs_host: Optional[float]
    metric: Optional[float]


@dataclass
class BuildResult:
    out_dir: Path
    checked: CheckedSchedule
    model: Model
    stats_before: Stats
    stats_after: Stats
    passes: List[PassRecord]
    targets: List[TargetRecord]
    verification: Verification
    steps: List[StepRecord] = field(default_factory=list)
    llm: Any = None  # aglmc issue 10: the LlmBuild of a schedule with a generate block


class _Steps:
    """Runs and times the named steps, logging ``[n] name ... 1.2 s``."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.records: List[StepRecord] = []

    def run(self, name: str, fn: Callable, *args, **kwargs):
        self.log(f"[{len(self.records) + 1:>2}] {name} ...")
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        seconds = time.perf_counter() - start
        self.records.append(StepRecord(name, seconds))
        if seconds >= 0.5:
            self.log(f"     {name}: {seconds:.1f} s")
        return value


def check_schedule(path: Path, plugins: Sequence[Path] = ()) -> CheckedSchedule:
    """Parse and check a ``.sched`` file against the registered passes and targets (``aglmc check``)."""
    checked = check(parse_file(path), build_catalog(plugins))
    check_schedule_schemes(checked)  # aglmc issue 6: quantization schemes against the schedule's targets
    return checked


def build(sched_path: Path, options: BuildOptions) -> BuildResult:
    steps = _Steps(options.log)
    checked = steps.run("check schedule", check_schedule, Path(sched_path), options.plugins)
    _check_graph_kinds(checked)
    dump = _Dumper(options)

    model = steps.run("import model", load_model, checked)
    dump.graph("import", model)
    datasets = steps.run("load data", load_datasets, checked, model)
    evaluation = evaluation_batches(checked, model, datasets)
    original = steps.run("evaluate original", Outputs.collect, model.reference, evaluation.batches())
    stats_before = model_stats(model)
    # the untransformed model, lowered too, so the report can time the host library before and after the passes
    baseline_mod = steps.run("import original to Relax", _baseline_relax, model) if checked.steps else None

    passes: List[PassRecord] = []
    for step in checked.steps:
        passes.append(steps.run(f"pass {step.name}", run_pass, checked, step, model, datasets, options.log))
        dump.graph(f"pass-{step.name}", model)
    if model.kind == "fx":
        for name in FX_LEGALIZATION:
            steps.run(f"legalize {name}", _run_legalization, name, model)
        dump.graph("legalized", model)
    stats_after = model_stats(model)
    transformed = steps.run("evaluate transformed", Outputs.collect, model.run, evaluation.batches())

    relax_mod = steps.run("import to Relax", model.to_relax)
    dump.text("relax", relax_mod.script(show_meta=False))

    # aglmc issue 7: tune the kernels of targets whose block sets a tuning budget (nothing once the database has it)
    targets = [(t.kind, target_settings(t, checked)) for t in _targets_with_host(checked)]
    for kind, settings in targets:
        if tuning_budget(kind, settings):
            steps.run(f"tune {kind}", tune_target, kind, settings, relax_mod, options.log)

    with artifact.staging(options.out_dir) as stage:
        target_records = [steps.run(f"build {kind}", _build_target, kind, settings, relax_mod, stage)
                          for kind, settings in targets]
        host = next(r for r in target_records if r.kind == "host")
        compiled = steps.run("verify on host", _run_library, stage / host.library, evaluation.batches())
        verification = _verify(checked, evaluation, original, transformed, compiled)
        for record in target_records:
            if record.kind != "host":
                check = steps.run(f"verify {record.kind}", _verify_device, record, stage, evaluation, original,
                                  compiled, checked)
                if check is not None:
                    verification.devices.append(check)
        verification.latency_ms = steps.run("time host library", _latency, stage / host.library, host, model)
        if baseline_mod is not None and any(p.result.changed for p in passes):
            verification.baseline_latency_ms, verification.baseline_size = steps.run(
                "time host library without passes", _baseline_latency, baseline_mod, host, model)
        result = BuildResult(Path(options.out_dir), checked, model, stats_before, stats_after, passes,
                             target_records, verification, steps.records)
        if checked.generation is not None:  # aglmc issue 10: prefill + decode with a key/value cache
            result.llm = steps.run("language model: prefill + decode", _build_llm, checked, model, passes, datasets,
                                   targets, stage, options.log)
        steps.run("package", _package, result, stage)
    options.log(f"wrote {options.out_dir}")
    return result


# ---- steps ----------------------------------------------------------------------------------------------
def _check_graph_kinds(checked: CheckedSchedule) -> None:
    kind = "fx" if checked.model.source.is_python else "onnx"
    for step in checked.steps:
        cls = get_pass(step.name)
        if kind not in cls.graph_kinds:
            raise ScheduleError(f"pass '{step.name}' handles {' and '.join(cls.graph_kinds)} graphs; this model "
                                f"is {'a PyTorch model (fx)' if kind == 'fx' else 'an ONNX model'}", step.loc,
                                source=checked.schedule.text)


def load_datasets(checked: CheckedSchedule, model: Model) -> Dict[str, Dataset]:
    """The schedule's data sets, checked against the model's inputs; those only a ``generate`` block reads are
    token rows of any length (prompts, held-out text)."""
    from aglmc.compiler.data import load_token_rows

    tokens_only = set()
    if checked.generation is not None:
        used = {v for v in checked.generation.params.values() if isinstance(v, str)} & set(checked.datasets)
        elsewhere = {checked.evaluation.data} if checked.evaluation is not None else set()
        elsewhere |= {v for step in checked.steps for v in step.params.values() if isinstance(v, str)}
        tokens_only = used - elsewhere
    return {name: (load_token_rows if name in tokens_only else load_dataset)(decl, model.inputs, checked.schedule.text)
            for name, decl in checked.datasets.items()}


@dataclass
class EvalData:
    name: str
    dataset: Optional[Dataset]
    model: Model
    limit: Optional[int]

    def batches(self):
        if self.dataset is None:
            return iter([(self.model.example_inputs, None)])
        return self.dataset.batches(self.model.inputs, self.limit)

    def labels(self) -> Optional[np.ndarray]:
        if self.dataset is None or self.dataset.labels is None:
            return None
        return self.dataset.labels[: self.samples()]

    def samples(self) -> int:
        return 1 if self.dataset is None else self.dataset.used(self.model.inputs, self.limit)

    def dropped(self) -> int:
        if self.dataset is None:
            return 0
        total = len(self.dataset) if self.limit is None else min(self.limit, len(self.dataset))
        return total - self.samples()


def evaluation_batches(checked: CheckedSchedule, model: Model, datasets: Dict[str, Dataset]) -> EvalData:
    ev = checked.evaluation
    if ev is None or ev.data is None:
        return EvalData("example inputs", None, model, None)
    dataset = datasets[ev.data]
    if ev.metric and _needs_labels(ev.metric) and dataset.labels is None:
        raise ScheduleError(f"metric '{ev.metric}' needs labels but dataset '{ev.data}' has none", ev.loc,
                            hint="add a 'labels' array to the data set, or use metric = cosine",
                            source=checked.schedule.text)
    return EvalData(ev.data, dataset, model, ev.limit)


def _needs_labels(metric: str) -> bool:
    from aglmc.compiler.verify import METRICS

    return METRICS[metric].needs_labels


def run_pass(checked: CheckedSchedule, step, model: Model, datasets, log) -> PassRecord:
    cls = get_pass(step.name)
    ctx = PassContext(selects=make_selector(model.kind, step.selector.ops, step.selector.path), datasets=datasets,
                      example_inputs={s.name: a for s, a in zip(model.inputs, model.example_inputs)},
                      reference_module=model.original_module, log=log)
    start = time.perf_counter()
    try:
        result = cls(**dict(step.params)).run(model.kind, model.graph, ctx)
    except AglmcError as e:
        if e.location is None:
            e.location, e.source = step.loc, checked.schedule.text
        raise
    except Exception as e:
        raise PassError(f"pass '{step.name}' failed: {type(e).__name__}: {e}", step.loc,
                        source=checked.schedule.text,
                        hint="this is a bug in the pass; rerun with AGLMC_TRACEBACK=1 for the traceback") from e
    _check_graph(model, f"pass '{step.name}'", step.loc, checked.schedule.text)
    selector = " ".join(filter(None, [f"on {', '.join(step.selector.ops)}" if step.selector.ops else "",
                                      f'in "{step.selector.path}"' if step.selector.path else ""]))
    return PassRecord(step.name, selector, dict(step.params), result, time.perf_counter() - start)


def _baseline_relax(model: Model):
    """The model before the schedule's passes, legalized for TVM like the transformed one, as Relax."""
    if model.kind != "fx":
        return model.to_relax()
    baseline = model.clone()
    legalize_for_tvm(baseline)
    return baseline.to_relax()


def legalize_for_tvm(model: Model) -> None:
    """Run :data:`FX_LEGALIZATION` on ``model`` in place (nothing for ONNX models)."""
    if model.kind == "fx":
        for name in FX_LEGALIZATION:
            _run_legalization(name, model)


def _run_legalization(name: str, model: Model) -> PassResult:
    result = get_pass(name)().run("fx", model.graph, PassContext(selects=make_selector("fx")))
    _check_graph(model, f"legalization '{name}'", None, None)
    return result


def _check_graph(model: Model, who: str, loc, source) -> None:
    """A pass must leave a well-formed graph that still runs on the example inputs."""
    try:
        if model.kind == "fx":
            model.graph.graph.lint()
        else:
            import onnx

            onnx.checker.check_model(model.onnx_model())
        model.run(model.example_inputs)
    except Exception as e:
        raise PassError(f"{who} left a broken graph: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                        loc, source=source) from e


def _targets_with_host(checked: CheckedSchedule):
    """The schedule's targets; the host target is always built (verification and `aglmc run` use it)."""
    from aglmc.dsl import ResolvedTarget
    from aglmc.targets.base import get_target

    targets = list(checked.targets)
    if not any(t.kind == "host" for t in targets):
        defaults = {p.name: p.default for p in get_target("host").params if not p.required}
        targets.insert(0, ResolvedTarget(kind="host", params=defaults, loc=None))
    return targets


def _build_target(kind: str, settings: Dict[str, Any], relax_mod, stage: Path) -> TargetRecord:
    from aglmc.targets.base import get_target

    target = get_target(kind)
    path = stage / target.library_name
    info = target.build(relax_mod, settings, path, **database_options(kind, settings))  # aglmc issue 7: tuned kernels
    data = path.read_bytes()
    return TargetRecord(kind, path.name, info, len(data), hashlib.sha256(data).hexdigest())


def _run_library(path: Path, batches) -> Outputs:
    from aglmc.targets.run import HostRunner

    runner = HostRunner(path)
    return Outputs.collect(runner.run, batches)


def _verify_device(record: TargetRecord, stage: Path, evaluation: "EvalData", original: Outputs,
                   host: Outputs, checked: CheckedSchedule) -> Optional["DeviceCheck"]:
    """Run the evaluation on ``record``'s library where it can run: the board its block names, or this
    machine's device (targets with a ``runner``). None when it has neither."""
    from aglmc.targets.base import get_target

    path = stage / record.library
    batches = [arrays for arrays, _ in evaluation.batches()]
    board = record.info.settings.get("board")
    target = get_target(record.kind)
    if board:
        from aglmc.targets.board import run_batches_on_boards

        where = f"board {board}"
        outputs = Outputs.concat(run_batches_on_boards(path, batches, board,
                                                       jobs=record.info.settings.get("board_jobs", 1)))
    elif hasattr(target, "runner"):
        try:
            runner = target.runner(path)
        except TargetError as e:  # e.g. no Vulkan device on this machine: the library is built, not checked
            if "no Vulkan adapter" not in e.message:
                raise
            return DeviceCheck(record.kind, f"not run: {e.message}", None, None, None)
        where = str(getattr(runner, "adapter", record.kind))
        outputs = Outputs.concat([runner.run(b) for b in batches])
    else:
        return None
    metric = checked.evaluation.metric if checked.evaluation is not None else "none"
    check = DeviceCheck(record.kind, where, max_abs(outputs, original), max_abs(outputs, host),
                        metric_value(metric, outputs, evaluation.labels(), original))
    bound = _device_bound(record, host, checked)
    if check.error_vs_host > bound:
        raise VerifyError(f"the {record.kind} library on {where} differs from the host library by "
                          f"{check.error_vs_host:.3g} (max-abs), more than {bound:.3g}")
    return check


def lowering_rtol(checked: CheckedSchedule) -> float:
    """How far (relative to the output's magnitude) a library may be from the graph it compiles.

    aglmc issue 6: int8 kernels sum exactly where the float Q/DQ graph rounds, and dynamic quantization
    rounds ``x / scale`` in whatever precision each implementation has (the vulkan target: float32, see
    targets/vulkan/narrow_float64.py); now and then that moves a quantized value by one step, so quantized
    builds get a wider (still bug-catching) bound."""
    quantized = any("quantized" in get_pass(s.name).guarantees for s in checked.steps)
    return QUANTIZED_LOWERING_RTOL if quantized else LOWERING_RTOL


def _device_bound(record: TargetRecord, host: Outputs, checked: CheckedSchedule) -> float:
    """How far another target may be from the host library: the lowering bound, or fp16's rounding (2^-8
    relative to the output's magnitude) when the target computes in half precision."""
    rtol = max(2.0 ** -8 * 4, lowering_rtol(checked)) if record.info.settings.get("fp16") else lowering_rtol(checked)
    return rtol * max(1.0, scale(host))


def _latency(path: Path, host: TargetRecord, model: Model) -> float:
    from aglmc.targets.run import HostRunner

    runner = HostRunner(path, threads=host.info.settings.get("threads"))
    return measure_latency(runner.run, model.example_inputs)


def _baseline_latency(baseline_mod, host: TargetRecord, model: Model) -> Tuple[float, int]:
    """Median latency and size of the host library built from the model as it was before the passes."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="aglmc-baseline-") as tmp:
        record = _build_target("host", dict(host.info.settings), baseline_mod, Path(tmp))
        return _latency(Path(tmp) / record.library, record, model), record.size


def _verify(checked: CheckedSchedule, evaluation: EvalData, original: Outputs, transformed: Outputs,
            compiled: Outputs) -> Verification:
    ev = checked.evaluation
    metric = ev.metric if ev is not None else "none"
    labels = evaluation.labels()
    v = Verification(
        data=evaluation.name, samples=evaluation.samples(), dropped=evaluation.dropped(), metric=metric,
        tolerance=ev.tolerance if ev is not None else None, metric_drop=ev.metric_drop if ev is not None else None,
        error_vs_original=max_abs(compiled, original), error_vs_transformed=max_abs(compiled, transformed),
        output_scale=scale(original),
        metric_original=metric_value(metric, original, labels, original),
        metric_transformed=metric_value(metric, transformed, labels, original),
        metric_compiled=metric_value(metric, compiled, labels, original),
    )
    text = checked.schedule.text
    bound = lowering_rtol(checked) * max(1.0, scale(transformed))
    if v.error_vs_transformed > bound:
        raise VerifyError(f"the host library differs from the transformed model by {v.error_vs_transformed:.3g} "
                          f"(max-abs), more than the lowering bound {bound:.3g}: a compiler bug, please report it")
    if v.tolerance is not None and v.error_vs_original > v.tolerance:
        raise VerifyError(f"max-abs error against the original model is {v.error_vs_original:.3g} on "
                          f"{v.samples} samples of '{v.data}', above the schedule's tolerance {v.tolerance:g}",
                          ev.loc, source=text, hint="raise `tolerance` in the evaluate block or compress less")
    if (v.metric_drop is not None and v.metric_original is not None and v.metric_compiled is not None
            and v.metric_original - v.metric_compiled > v.metric_drop):
        raise VerifyError(f"{metric} dropped from {v.metric_original:.4f} to {v.metric_compiled:.4f}, more than "
                          f"the schedule's metric_drop {v.metric_drop:g}", ev.loc, source=text)
    return v


def _build_llm(checked: CheckedSchedule, model: Model, passes: List[PassRecord], datasets, targets, stage: Path,
               log):
    from aglmc.compiler import llm
    from aglmc.compiler.transplant import transplant

    settings = checked.generation.params
    original = model.original_module
    module, replaced = original, {}
    try:
        if any(p.result.changed for p in passes):
            carried = transplant(original, model.graph, model.example_inputs, model.run(model.example_inputs),
                                 run=llm.prefill_logits(settings))
            log(f"     LLM: {carried.summary()} (cached prefill vs the transformed graph: "
                f"{carried.max_error:.2g} relative)")
            module, replaced = carried.module, carried.replaced
        example = model.example_inputs[0] if model.example_inputs else None
        return llm.build_llm(targets, module, stage, settings, datasets=datasets,
                             original=original if replaced else None, transplanted=replaced,
                             example_tokens=example, log=log)
    except AglmcError as e:  # located at the generate block, like every other step's errors at their statement
        if e.location is None:
            e.location, e.source = checked.generation.loc, checked.schedule.text
        raise


def _package(result: BuildResult, stage: Path) -> None:
    checked = result.checked
    artifact.write_text_atomic(stage / artifact.SCHEDULE, format_schedule(checked))
    artifact.write_json_atomic(stage / artifact.MANIFEST, _manifest(result))
    artifact.write_text_atomic(stage / artifact.REPORT, report.render(result))
    # aglmc issue 6: a quantized ONNX model is also delivered as the QDQ model onnxruntime runs
    if result.model.kind == "onnx" and any("quantized" in get_pass(p.name).guarantees for p in result.passes):
        (stage / "model.qdq.onnx").write_bytes(result.model.onnx_bytes())


def _manifest(result: BuildResult) -> dict:
    checked = result.checked
    model = result.model
    return {
        "aglmc": aglmc.__version__,
        "schedule": {"path": str(checked.schedule.path),
                     "sha256": hashlib.sha256(checked.schedule.text.encode()).hexdigest()},
        "model": {"source": checked.model.source.text, "kind": model.kind, "sha256": model.source_sha256},
        "inputs": [s.to_json() for s in model.inputs],
        "outputs": [s.to_json() for s in model.outputs],
        "targets": [{"kind": t.kind, "library": t.library, "size": t.size, "sha256": t.sha256,
                     **_info_json(t.info)} for t in result.targets],
        "passes": [{"name": p.name, "selector": p.selector, "params": _jsonable(p.params), "changed": p.result.changed,
                    "summary": p.result.summary, "details": p.result.details} for p in result.passes],
        "stats": {"before": result.stats_before.to_json(), "after": result.stats_after.to_json()},
        "verification": _jsonable(vars(result.verification)),
        **({"llm": "llm.json"} if result.llm is not None else {}),
        "tools": tool_versions(),
    }


def _info_json(info) -> dict:
    if info is None:
        return {}
    if hasattr(info, "to_json"):  # the library's path is the artifact's; the staging path means nothing later
        return {k: v for k, v in info.to_json().items() if k not in ("path", "kind")}
    if hasattr(info, "__dataclass_fields__"):
        return {k: _jsonable(v) for k, v in vars(info).items() if k != "path"}
    return {}


def _jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(vars(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def tool_versions() -> Dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("torch", "apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "onnx-graphsurgeon", "numpy",
                 "ziglang"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


class _Dumper:
    """``--print-after-all`` / ``--dump-ir DIR``: the graph after each step, in numbered files."""

    def __init__(self, options: BuildOptions):
        self.options = options
        self.count = 0
        if options.dump_ir is not None:
            Path(options.dump_ir).mkdir(parents=True, exist_ok=True)

    def graph(self, name: str, model: Model) -> None:
        if not (self.options.print_after_all or self.options.dump_ir):
            return
        self.text(name, str(model.graph.graph) if model.kind == "fx" else str(model.graph))

    def text(self, name: str, text: str) -> None:
        if not (self.options.print_after_all or self.options.dump_ir):
            return
        self.count += 1
        if self.options.print_after_all:
            self.options.log(f"// ----- IR after {name} -----\n{text}")
        if self.options.dump_ir is not None:
            artifact.write_text_atomic(Path(self.options.dump_ir) / f"{self.count:02d}-{name}.txt", text)
