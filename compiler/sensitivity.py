"""``aglmc analyze sensitivity SCHED``: how much each channel group can lose before the metric suffers.

The analysis loads the schedule's model and data, runs the schedule's passes that come before its first
``prune_channels`` step (so group names match what that step will see), builds the channel dependency graph
once, ranks channels once (with that step's ``importance``, ``data``, selector, ``min_channels`` and
``round_to``, or the defaults), and then, for every prunable group alone and every ratio, prunes a copy of the
model and evaluates the schedule's metric on its evaluation data (torch or onnxruntime; no TVM build).

It writes, into ``out_dir``:

- ``sensitivity.json``: ``ratios`` (per group, the largest tested ratio whose metric drop — and every smaller
  ratio's — stays within ``max_drop``; 0 when none does), the baseline, and the full table. A schedule uses it
  with ``pass prune_channels { ratios_from = "…/sensitivity.json" }``.
- ``sensitivity.md``: the table, one row per group, one column per ratio.
- ``sensitivity.png``: metric against ratio, one line per group, with the baseline and the allowed drop.

``max_drop`` defaults to the evaluate block's ``metric_drop``, else 0.01. With ``metric = none`` the metric is
the cosine similarity of the outputs to the original's.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from aglmc.compiler.verify import Outputs, metric_value
from aglmc.errors import ScheduleError

DEFAULT_RATIOS = (0.1, 0.3, 0.5, 0.7)
JSON_NAME, MD_NAME, PNG_NAME = "sensitivity.json", "sensitivity.md", "sensitivity.png"


@dataclass
class SensitivityRow:
    group: str
    channels: int
    ratio: float
    kept: int
    metric: float
    drop: float


@dataclass
class SensitivityTable:
    """The result of :func:`analyze_sensitivity` (also written as JSON, Markdown and a PNG plot)."""

    schedule: str
    metric: str
    baseline: float
    max_drop: float
    importance: str
    ratios_tested: List[float]
    rows: List[SensitivityRow]
    ratios: Dict[str, float]
    seconds: float = 0.0
    files: List[Path] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"schedule": self.schedule, "metric": self.metric, "baseline": self.baseline,
                "max_drop": self.max_drop, "importance": self.importance, "ratios_tested": self.ratios_tested,
                "ratios": self.ratios, "table": [dataclasses.asdict(r) for r in self.rows],
                "seconds": round(self.seconds, 2)}

    def markdown(self, json_path: str = JSON_NAME) -> str:
        head = (f"# Pruning sensitivity: {Path(self.schedule).name}\n\n"
                f"{self.metric} of the unpruned model: {self.baseline:.4f}; allowed drop {self.max_drop:g}; "
                f"channels ranked by {self.importance}. Each cell prunes that group alone: "
                f"metric (drop).\n\n")
        cols = " | ".join(f"{r:g}" for r in self.ratios_tested)
        lines = [f"| group | channels | {cols} | chosen ratio |",
                 "|---|---:|" + "---:|" * len(self.ratios_tested) + "---:|"]
        for group in self.ratios:
            cells = []
            channels = 0
            for r in self.ratios_tested:
                row = next((x for x in self.rows if x.group == group and x.ratio == r), None)
                if row is None:
                    cells.append("")
                    continue
                channels = row.channels
                cells.append(f"{row.metric:.4f} ({row.drop:+.4f})" if row.kept < row.channels
                             else f"{row.metric:.4f} (kept all)")
            lines.append(f"| {group} | {channels} | {' | '.join(cells)} | {self.ratios[group]:g} |")
        tail = (f"\n\nUse the chosen ratios with `pass prune_channels {{ ratios_from = \"{json_path}\" }}` "
                f"(path relative to the working directory).\n")
        return head + "\n".join(lines) + tail


def analyze_sensitivity(sched_path, ratios: Sequence[float] = DEFAULT_RATIOS, out_dir=".", *,
                        max_drop: Optional[float] = None, plugins: Sequence[Path] = (),
                        log: Callable[[str], None] = print) -> SensitivityTable:
    """Prune each channel group alone at each of ``ratios``, evaluate, and write the table and plot."""
    from aglmc.compiler.model import load_model
    from aglmc.compiler.pipeline import evaluation_batches, load_datasets, run_pass, check_schedule
    from aglmc.passes.base import get_pass
    from aglmc.passes.channel_graph import build_channel_graph
    from aglmc.passes.prune_channels import apply_plan, clone_graph
    from aglmc.passes.prune_importance import plan_pruning, unit_importance
    from aglmc.passes.select import make_selector

    start = time.perf_counter()
    ratios = sorted(float(r) for r in ratios)
    bad = [r for r in ratios if not 0.0 < r < 1.0]
    if bad or not ratios:
        raise ScheduleError(f"sensitivity ratios must lie in (0, 1), got {bad or list(ratios)}")
    checked = check_schedule(Path(sched_path), plugins)
    model = load_model(checked)
    datasets = load_datasets(checked, model)
    evaluation = evaluation_batches(checked, model, datasets)
    ev = checked.evaluation
    metric = ev.metric if ev is not None and ev.metric and ev.metric != "none" else "cosine"
    if max_drop is None:
        max_drop = ev.metric_drop if ev is not None and ev.metric_drop is not None else 0.01
    labels = evaluation.labels()
    original = Outputs.collect(model.reference, evaluation.batches())
    baseline = metric_value(metric, original, labels, original)

    steps = list(checked.steps)
    prune_at = next((i for i, s in enumerate(steps) if s.name == "prune_channels"), None)
    for step in steps[:prune_at if prune_at is not None else 0]:
        log(f"sensitivity: running pass {step.name} first")
        run_pass(checked, step, model, datasets, log)
    options = {p.name: p.default for p in get_pass("prune_channels").params}
    if prune_at is not None:
        step = steps[prune_at]
        options.update(step.params)
        selects = make_selector(model.kind, step.selector.ops, step.selector.path)
    else:
        selects = make_selector(model.kind)
    example = {s.name: a for s, a in zip(model.inputs, model.example_inputs)}
    cg = build_channel_graph(model.kind, model.graph, selects, list(example.values()))
    dataset = datasets.get(options["data"]) if options["data"] else None
    scores = unit_importance(cg, options["importance"], dataset, names=[s.name for s in model.inputs],
                             samples=options["samples"])
    groups = cg.prunable_groups
    log(f"sensitivity: {len(groups)} prunable group(s) × {len(ratios)} ratio(s), {metric} on "
        f"{evaluation.samples()} sample(s) of '{evaluation.name}' (baseline {baseline:.4f})")
    run_many = _evaluator(model, evaluation)
    rows: List[SensitivityRow] = []
    chosen: Dict[str, float] = {}
    for g in groups:
        best, ok = 0.0, True
        for r in ratios:
            plan = plan_pruning(cg, scores, ratio=0.0, ratios={g.name: r}, min_channels=options["min_channels"],
                                round_to=options["round_to"], groups=[g])
            kept = g.kept_channels(plan.removed.get(g.name, ()))
            if plan.empty:
                value = baseline
            else:
                graph = clone_graph(model.kind, model.graph)
                apply_plan(model.kind, graph, cg, plan)
                value = metric_value(metric, run_many(graph), labels, original)
            drop = baseline - value
            rows.append(SensitivityRow(g.name, g.channels, r, kept, round(float(value), 6), round(float(drop), 6)))
            ok = ok and drop <= max_drop + 1e-12
            if ok:
                best = r
        chosen[g.name] = best
        log(f"sensitivity: {g.name}: " + ", ".join(f"{x.ratio:g} → {x.metric:.4f}" for x in rows
                                                    if x.group == g.name) + f"; chosen {best:g}")
    table = SensitivityTable(str(sched_path), metric, float(baseline), float(max_drop), options["importance"],
                             ratios, rows, chosen, time.perf_counter() - start)
    table.files = write_report(table, Path(out_dir))
    return table


def _evaluator(model, evaluation) -> Callable:
    """Outputs of a transformed copy of the model's graph over the evaluation data (big batches where the
    graph allows, one session per graph for ONNX)."""
    batches = list(evaluation.batches())

    if model.kind == "fx":
        from aglmc.compiler.model import _flatten_outputs
        from aglmc.passes.prune_runtime import batch_free, traced_batch, workable_batch

        arrays = [np.concatenate([b[0][i] for b in batches]) for i in range(len(model.inputs))] if batches else []

        def run_fx(gm) -> Outputs:
            import torch

            free = batch_free(gm)
            size = workable_batch(free, arrays, 128, traced_batch(gm))
            chunks = []
            with torch.no_grad():  # a last, smaller chunk only when the graph runs at any batch size
                for start in range(0, len(arrays[0]), size):
                    chunk = [torch.from_numpy(np.ascontiguousarray(a[start:start + size])) for a in arrays]
                    chunks.append(_flatten_outputs(free(*chunk)))
            return Outputs([np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))])
        return run_fx

    def run_onnx(graph) -> Outputs:
        import onnx_graphsurgeon as gs
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(gs.export_onnx(graph).SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        names = [s.name for s in model.inputs]
        return Outputs.collect(lambda arrays: sess.run(None, dict(zip(names, arrays))), iter(batches))
    return run_onnx


def write_report(table: SensitivityTable, out_dir: Path) -> List[Path]:
    """Write ``sensitivity.json``, ``sensitivity.md`` and ``sensitivity.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / JSON_NAME, out_dir / MD_NAME, out_dir / PNG_NAME]
    paths[0].write_text(json.dumps(table.to_json(), indent=2) + "\n")
    paths[1].write_text(table.markdown(_relative(paths[0])))
    plot(table, paths[2])
    return paths


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def plot(table: SensitivityTable, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    xs = [0.0] + table.ratios_tested
    for group in table.ratios:
        ys = [table.baseline] + [next(r.metric for r in table.rows if r.group == group and r.ratio == x)
                                 for x in table.ratios_tested]
        ax.plot(xs, ys, marker="o", linewidth=1.2, label=group)
    ax.axhline(table.baseline, color="black", linestyle="--", linewidth=1, label="unpruned")
    ax.axhline(table.baseline - table.max_drop, color="red", linestyle=":", linewidth=1,
               label=f"allowed drop {table.max_drop:g}")
    ax.set_xlabel("fraction of the group's channels removed")
    ax.set_ylabel(table.metric)
    ax.set_title(f"Pruning sensitivity per channel group ({Path(table.schedule).name})")
    ax.grid(True, alpha=0.3)
    n = len(table.ratios) + 2
    ax.legend(fontsize=7 if n <= 12 else 5, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1 if n <= 24 else 2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
