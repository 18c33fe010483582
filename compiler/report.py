"""``report.md``: what the build did and how far each compiled output is from the original model."""

from __future__ import annotations

from typing import Optional


def _num(x: Optional[float], fmt: str = ".4g") -> str:
    return "—" if x is None else format(x, fmt)


def _metric(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.4f}"


def render(result) -> str:
    checked = result.checked
    v = result.verification
    model = result.model
    lines = [f"# aglmc build report: {checked.schedule.path.name}", ""]
    lines += [f"Model: `{checked.model.source.text}` ({'PyTorch via torch.export' if model.kind == 'fx' else 'ONNX'})",
              "", "| input | shape | dtype |", "|---|---|---|"]
    lines += [f"| {s.name} | {list(s.shape)} | {s.dtype} |" for s in model.inputs]
    lines += ["", "| output | shape | dtype |", "|---|---|---|"]
    lines += [f"| {s.name} | {list(s.shape)} | {s.dtype} |" for s in model.outputs]

    lines += ["", "## Verification", "",
              f"Evaluated on {v.samples} sample(s) of `{v.data}`"
              + (f" ({v.dropped} left out: not a full batch)" if v.dropped else "") + ".", "",
              "| compared | max-abs error | bound |", "|---|---:|---:|",
              f"| host library vs original model | {_num(v.error_vs_original)} | "
              f"{_num(v.tolerance) if v.tolerance is not None else 'none set'} |",
              f"| host library vs transformed model | {_num(v.error_vs_transformed)} | lowering check |",
              "", f"Largest original output magnitude: {_num(v.output_scale)}."]
    if v.latency_ms is not None:
        threads = next((t.info.settings.get("threads") for t in result.targets if t.kind == "host"), None)
        lines += ["", f"Host latency (median, batch as declared, {threads} thread(s)): {v.latency_ms:.3f} ms"
                  + (f"; built without the schedule's passes {v.baseline_latency_ms:.3f} ms (the passes make it "
                     f"{v.baseline_latency_ms / v.latency_ms:.2f}x as fast)" if v.baseline_latency_ms else "") + "."]
    if v.baseline_size:
        host_size = next(t.size for t in result.targets if t.kind == "host")
        lines += ["", f"Host library size: {host_size:,} B; built without the schedule's passes "
                      f"{v.baseline_size:,} B."]
    if v.devices:
        lines += ["", "| target | ran on | max-abs error vs original | vs host library | "
                      f"{v.metric if v.metric != 'none' else 'metric'} |", "|---|---|---:|---:|---:|"]
        lines += [f"| {d.target} | `{d.where}` | {_num(d.error_vs_original)} | {_num(d.error_vs_host)} | "
                  f"{_metric(d.metric)} |" for d in v.devices]
    if v.metric != "none":
        lines += ["", f"| model | {v.metric} |", "|---|---:|",
                  f"| original | {_metric(v.metric_original)} |",
                  f"| after passes | {_metric(v.metric_transformed)} |",
                  f"| host library | {_metric(v.metric_compiled)} |"]

    before, after = result.stats_before, result.stats_after
    lines += ["", "## Model", "", "| | before passes | after passes |", "|---|---:|---:|",
              f"| parameters | {before.params:,} | {after.params:,} |",
              f"| MACs | {before.macs:,} | {after.macs:,} |",
              f"| graph nodes | {sum(before.ops.values()):,} | {sum(after.ops.values()):,} |"]
    changed_ops = sorted(set(before.ops) | set(after.ops))
    diff = [(op, before.ops.get(op, 0), after.ops.get(op, 0)) for op in changed_ops
            if before.ops.get(op, 0) != after.ops.get(op, 0)]
    if diff:
        lines += ["", "| op | before | after |", "|---|---:|---:|"]
        lines += [f"| {op} | {b} | {a} |" for op, b, a in diff]

    lines += ["", "## Passes", ""]
    if not result.passes:
        lines.append("The schedule runs no passes.")
    else:
        lines += ["| # | pass | selector | changed | summary | seconds |", "|---:|---|---|---|---|---:|"]
        for i, p in enumerate(result.passes, 1):
            lines.append(f"| {i} | `{p.name}` | {p.selector or 'all'} | {'yes' if p.result.changed else 'no'} | "
                         f"{p.result.summary} | {p.seconds:.2f} |")
        for p in result.passes:
            if p.result.details:
                lines += ["", f"`{p.name}`:", ""] + [f"- {d}" for d in p.result.details]

    lines += ["", "## Targets", "", "| target | library | size | build seconds | TVM target |",
              "|---|---|---:|---:|---|"]
    for t in result.targets:
        info = t.info
        seconds = getattr(info, "seconds", None)
        tvm_target = getattr(info, "target", "")
        lines.append(f"| {t.kind} | {t.library} | {t.size:,} B | {_num(seconds, '.1f')} | `{tvm_target}` |")

    host = next((t for t in result.targets if t.kind == "host"), None)
    schedule = getattr(host.info, "schedule", None) if host is not None else None
    if schedule is not None:
        from aglmc.targets.cpu.report import time_shares

        total = sum((f.macs or 0) * f.calls for f in schedule.functions) or 1
        shares = time_shares(schedule)
        kernel_ms = sum(f.ms * f.calls for f in schedule.functions if f.ms is not None)
        lines += ["", "## Kernels (host)", "",
                  f"{len(schedule.functions)} fused kernels; the schedule rule that scheduled each "
                  "('fallback': no specialised rule matched; 'database': a tuning record), its work, and its "
                  "time: each kernel timed alone in the built library on random inputs (time per call x calls "
                  "per inference; kernels with symbolic shapes are not timed)."
                  + (f" The kernels sum to {kernel_ms:.3f} ms"
                     + (f" of the {v.latency_ms:.3f} ms latency (the rest: the VM, allocation, the call)"
                        if v.latency_ms else "") + "." if kernel_ms else ""), "",
                  "| kernel | rule | calls | MACs per call | share of MACs | ms per call | share of time |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        order = sorted(schedule.functions, key=lambda f: (-shares.get(f.name, -1.0), -(f.macs or 0) * f.calls))
        for f in order:
            time_text = "—" if f.ms is None else f"{f.ms:.4f}"
            share = f"{100 * shares[f.name]:.1f}%" if f.name in shares else "—"
            lines.append(f"| {f.name} | {f.rule} | {f.calls} | {'?' if f.macs is None else f'{f.macs:,}'} | "
                         f"{100 * (f.macs or 0) * f.calls / total:.1f}% | {time_text} | {share} |")

    if getattr(result, "llm", None) is not None:  # aglmc issue 10
        from aglmc.compiler.llm import render_report

        lines += ["", "## Language model (prefill + decode)", "", render_report(result.llm).rstrip()]

    lines += ["", "## Steps", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {s.name} | {s.seconds:.2f} |" for s in result.steps]
    lines += ["", "## Layers (after passes)", "", after.table(limit=40), ""]
    return "\n".join(lines)
