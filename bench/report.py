"""results.md and the PNG plots, from the JSON the runs write (``host.json``, ``arm.json``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional

NOISE_NOTE = ("This machine is shared with other work and noisy (2 cores, other engineers' builds and tests ran "
              "beside the benchmark): compare ratios within one run, not absolute milliseconds across runs.")


def _fmt(value: Optional[float], spec: str = ".3g", none: str = "—") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def _ms(value: Optional[float]) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _size(n: Optional[int]) -> str:
    if not n:
        return "—"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MB"
    return f"{n / 1024:.0f} kB"


def _cell_reason(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def host_tables(data: Dict) -> str:
    rows = data["rows"]
    models = list(data["models"])
    runtimes: List[str] = []
    for r in rows:
        if r["runtime"] not in runtimes:
            runtimes.append(r["runtime"])
    by = {(r["model"], r["runtime"]): r for r in rows}
    out: List[str] = []
    # summary: median ms (× onnxruntime) per model and runtime
    out.append(f"### Summary: median latency, ms (× {data['baseline']})\n")
    out.append("| model | " + " | ".join(runtimes) + " |")
    out.append("|---|" + "---:|" * len(runtimes))
    for m in models:
        cells = []
        for rt in runtimes:
            r = by.get((m, rt))
            if r is None:
                cells.append("n/a")
            elif r["status"] == "failed":
                cells.append("FAILED")
            elif r["status"] == "skipped":
                cells.append("skipped")
            else:
                ratio = f" ({r['ratio_vs_baseline']:.2f}×)" if r.get("ratio_vs_baseline") else ""
                cells.append(_ms(r["median_ms"]) + ratio + (" WRONG" if r["status"] == "wrong" else ""))
        out.append(f"| {data['models'][m].get('title', m)} | " + " | ".join(cells) + " |")
    out.append("")
    # per model detail
    for m in models:
        meta = data["models"][m]
        macs = meta.get("macs")
        head = f"### {meta.get('title', m)}"
        facts = []
        if macs:
            facts.append(f"{macs / 1e6:,.1f} M MACs")
        if meta.get("params"):
            facts.append(f"{meta['params'] / 1e6:,.2f} M parameters")
        if meta.get("metric"):
            facts.append(f"metric: {meta['metric']} on {meta.get('eval_samples')} samples "
                         f"(torch {meta.get('metric_torch', 0):.4f})")
        if meta.get("stats_error"):
            facts.append(f"MACs unknown: {meta['stats_error']}")
        if meta.get("bench_seconds"):
            facts.append(f"benchmarked in {meta['bench_seconds']:.0f} s")
        out.append(head + ("\n\n" + "; ".join(facts) if facts else "") + "\n")
        out.append("| runtime | median ms | IQR ms | × ORT | GFLOP/s | % peak | max-abs err | metric | peak RSS MB "
                   "(Δ load) | size | compile s | n (rounds) | status / notes |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for rt in runtimes:
            r = by.get((m, rt))
            if r is None:
                continue
            if r["status"] in ("failed", "skipped"):
                label = "FAILED" if r["status"] == "failed" else "skipped"
                out.append(f"| {rt} | {label} | | | | | {_fmt(r.get('max_abs_error'), '.2g', '')} | | | "
                           f"{_size(r.get('size_bytes')) if r.get('size_bytes') else ''} | "
                           f"{_fmt(r.get('compile_s'), '.1f', '')} | | {_cell_reason(r['reason'])} |")
                continue
            rss = "—"
            if r.get("rss_peak_mb"):
                rss = f"{r['rss_peak_mb']:.0f}"
                if r.get("rss_base_mb"):
                    rss += f" (+{r['rss_peak_mb'] - r['rss_base_mb']:.0f})"
            status = "ok" if r["status"] == "ok" else f"WRONG: {r['reason']}"
            notes = "; ".join(x for x in (status, r.get("notes", "")) if x)
            out.append(
                f"| {rt} | {_ms(r['median_ms'])} | {_ms(r.get('iqr_ms'))} | {_fmt(r.get('ratio_vs_baseline'), '.2f')} "
                f"| {_fmt(r.get('gflops'), '.1f')} | {_fmt(r.get('pct_peak'), '.1f')} | "
                f"{_fmt(r.get('max_abs_error'), '.2g')} | {_fmt(r.get('metric'), '.4f')} | {rss} | "
                f"{_size(r.get('size_bytes'))} | {_fmt(r.get('compile_s'), '.2f')} | {r['samples']} ({r['rounds']}) "
                f"| {_cell_reason(notes)} |")
        out.append("")
    return "\n".join(out)


def host_section(data: Dict) -> str:
    la = data.get("load_average_before")
    lb = data.get("load_average_after")
    lines = [
        "## Host (x86) latency",
        "",
        f"Run {data['started']}, {data['seconds'] / 60:.1f} min; {data['threads']} thread(s) for every runtime; "
        f"{data['rounds']} interleaved rounds of ~{data['round_seconds']} s per runtime (at most "
        f"{data['budget_seconds']:.0f} s of calls per runtime after the third round); batch 1, fp32."
        + (f" Prepare/build steps ran {data['build_jobs']} at a time (compile times under contention)."
           if data.get("build_jobs", 1) > 1 else ""),
        "",
        f"CPU: {data['cpu_description']}.",
        "",
        f"Load average before / after: {_load(la)} / {_load(lb)}. **{NOISE_NOTE}**",
        "",
        "Every runtime runs in its own process (one at a time; torch's and TVM's thread pools slow each other "
        "10–20× in one process). Latency is the wall time of one call from numpy inputs to numpy outputs; "
        "median and IQR over all timed calls of all rounds. × ORT: median / onnxruntime fp32's median. GFLOP/s: "
        "2 × MACs (aglmc's `inspect` statistics: conv, linear and matmul MACs) / median, % peak of the fp32 peak "
        "above. max-abs err: against torch eager's output on the same input (WRONG when above 1e-3 × "
        "max(1, |output|)). peak RSS: the worker's VmHWM, in brackets what it grew by after importing the "
        "runtime. size: the artifact (ONNX file, .so, .tflite ...; torch: fp32 parameters). compile s: torch "
        "module → runnable artifact, loading included (torch.compile: its first call minus a warm call).",
        "",
        host_tables(data),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in data.get("versions", {}).items()),
        "",
    ]
    plots = [p for p in ("latency.png", "size.png", "accuracy.png") if p in data.get("plots", [])]
    if plots:
        lines += ["Plots: " + ", ".join(f"[{p}]({p})" for p in plots), ""]
    return "\n".join(lines)


def _load(la) -> str:
    return "—" if not la else " ".join(f"{x:.2f}" for x in la)


def arm_section(data: Dict) -> str:
    lines = [
        "## ARM (aarch64) instruction counts — not time",
        "",
        f"Run {data['started']}. Executed aarch64 instructions per inference, counted by "
        "shared/tools/armcount (a qemu-user TCG plugin) with `-cpu cortex-a76`, 1 thread, fp32: "
        "(count of 1+K inferences − count of 1) / K, so start-up and loading cancel out. These are instruction "
        "counts, not time (caches, memory bandwidth and issue width are ignored; a NEON `fmla v.4s` counts "
        "as one instruction). NEON share = (vector data-processing + 128-bit/structure SIMD loads and stores) "
        "/ all; vfma lanes = fp32 MACs done by vector FMA; scalar fmadd = MACs done one at a time.",
        "",
        f"Guest: {data.get('guest', '')}",
        "",
        "| workload | runtime | instructions / inference | × ORT | NEON-vector share | vfma lanes | "
        "scalar fmadd | model MACs | lanes / MACs | spread | status / notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in data["rows"]:
        if r.get("status") not in ("ok", "wrong"):
            lines.append(f"| {r['title']} | {r['runtime']} | FAILED | | | | | | | | {_cell_reason(r.get('reason', ''))} |")
            continue
        macs = r.get("macs")
        lanes = r.get("vfma_lanes")
        lines.append(
            f"| {r['title']} | {r['runtime']} | {r['instructions'] / 1e6:.2f} M | {_fmt(r.get('ratio_vs_ort'), '.2f')} "
            f"| {r['neon_share']:.3f} | {lanes / 1e6:.2f} M | {r.get('sfma', 0) / 1e6:.2f} M | "
            f"{_fmt(macs / 1e6 if macs else None, '.2f')} M | {_fmt(lanes / macs if macs else None, '.2f')} | "
            f"{_fmt(r.get('spread_pct'), '.2f')} % | {_cell_reason(r.get('notes', ''))} |")
    lines += ["", f"ARM run took {data['seconds'] / 60:.1f} min. aglmc tree: {data.get('aglmc_tree', 'unknown')}.", ""]
    from bench.arm_kernels import table

    titles = {r["model"]: r["title"] for r in data["rows"]}
    for model, rows in (data.get("kernels") or {}).items():
        lines.append(table(rows, titles.get(model, model)) if isinstance(rows, list)
                     else f"#### {titles.get(model, model)}: per-kernel counts {rows}\n")
    return "\n".join(lines)


def board_section(data: Dict) -> str:
    emulated = data.get("emulated")
    lines = [
        "## ARM board over RPC" + (" — emulated: correctness only" if emulated else ""),
        "",
        f"Run {data['started']} on board {data['board']}: each aarch64 library run once and checked against torch, "
        "then timed by the board (TVM's remote time evaluator, 1 thread per the build, RPC transfer not timed).",
        "",
    ]
    if emulated:
        lines += ["**The board is emulated (qemu-user): these times mean nothing about an ARM core**; qemu runs NEON "
                  "through helper functions. Use `python -m bench --arm` (executed instructions) for speed.", ""]
    lines += ["| workload | runtime | median ms | runs | max-abs error | artifact | status / notes |",
              "|---|---|---:|---:|---:|---:|---|"]
    for r in data["rows"]:
        if r.get("status") not in ("ok", "wrong"):
            lines.append(f"| {r['title']} | {r['runtime']} | FAILED | | | | {_cell_reason(r.get('reason', ''))} |")
            continue
        ms = f"{r['median_ms']:.3f}" + (" (emulated)" if r.get("correctness_only") else "")
        lines.append(f"| {r['title']} | {r['runtime']} | {ms} | {r['runs']} | {r['max_abs_error']:.2g} | "
                     f"{r['size'] / 1e3:.0f} kB | {_cell_reason(r.get('notes', ''))} |")
    lines += ["", f"Board run took {data['seconds'] / 60:.1f} min. aglmc tree: {data.get('aglmc_tree', 'unknown')}.", ""]
    return "\n".join(lines)


def write_results(out: Path) -> Path:
    """results.md from whatever of host.json / arm.json is in ``out``."""
    parts = ["# aglmc benchmark results", "",
             "Produced by `python -m bench` (host), `python -m bench --arm` (ARM instruction counts) and "
             "`python -m bench --board` (latency on an ARM board over RPC). "
             "Numbers are measured, never estimated; a runtime that failed or was skipped stays in the table "
             "with its reason.", ""]
    host = out / "host.json"
    arm = out / "arm.json"
    if host.is_file():
        parts.append(host_section(json.loads(host.read_text())))
    if arm.is_file():
        parts.append(arm_section(json.loads(arm.read_text())))
    if (out / "board.json").is_file():
        parts.append(board_section(json.loads((out / "board.json").read_text())))
    path = out / "results.md"
    path.write_text("\n".join(parts))
    return path


# ---------------------------------------------------------------------------------------------- plots
def plots(data: Dict, out: Path) -> List[str]:
    """latency.png, size.png and (when a model has rows of several techniques) accuracy.png; [] without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    rows = [r for r in data["rows"]]
    models = list(data["models"])
    runtimes: List[str] = []
    for r in rows:
        if r["runtime"] not in runtimes:
            runtimes.append(r["runtime"])
    by = {(r["model"], r["runtime"]): r for r in rows}
    colors = plt.get_cmap("tab20").colors
    written = []

    def bars(key, ylabel, title, fname, scale=1.0):
        fig, ax = plt.subplots(figsize=(min(15, max(8, 1.2 * len(models) + 0.12 * len(models) * len(runtimes))), 6))
        width = 0.8 / max(1, len(runtimes))
        for j, rt in enumerate(runtimes):
            xs, ys = [], []
            for i, m in enumerate(models):
                r = by.get((m, rt))
                if r and r["status"] in ("ok", "wrong") and r.get(key):
                    xs.append(i + (j - (len(runtimes) - 1) / 2) * width)
                    ys.append(r[key] * scale)
            ax.bar(xs, ys, width, label=rt, color=colors[j % len(colors)])
            for i, m in enumerate(models):  # failures are marked, not dropped
                r = by.get((m, rt))
                if r and r["status"] == "failed":
                    ax.annotate("✗", (i + (j - (len(runtimes) - 1) / 2) * width, 0), xycoords=("data", "axes fraction"),
                                ha="center", va="bottom", color="red", fontsize=9)
        ax.set_yscale("log")
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels([data["models"][m].get("title", m).replace(" (", "\n(") for m in models], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, ncol=2)
        ax.grid(axis="y", which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        written.append(fname)

    bars("median_ms", "median latency, ms (log)",
         f"Latency per model and runtime, {data['threads']} thread(s), batch 1 (shared, noisy machine; ✗ = failed)",
         "latency.png")
    bars("size_bytes", "artifact size, MB (log)", "Artifact size per model and runtime", "size.png", 1 / (1 << 20))

    # latency vs accuracy per technique: aglmc's variants and onnxruntime's (fp32, int8) on models where more
    # than one technique ran; the metric where the model has one, else the max-abs error against torch
    def technique_rows(m):
        return [by[(m, rt)] for rt in runtimes if (m, rt) in by and by[(m, rt)]["status"] in ("ok", "wrong")
                and by[(m, rt)].get("median_ms") and (rt.startswith("aglmc") or rt.startswith("onnxruntime"))]

    multi = [m for m in models if len({r["technique"] for r in technique_rows(m)}) > 1]
    if multi:
        cols = min(3, len(multi))
        rows_n = math.ceil(len(multi) / cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(5.5 * cols, 4.2 * rows_n), squeeze=False)
        markers = "osD^v<>PX*"
        for ax, m in zip(axes.flat, multi):
            meta = data["models"][m]
            metric = meta.get("metric")
            for j, r in enumerate(technique_rows(m)):
                y = r.get("metric") if metric else r.get("max_abs_error")
                if y is None:
                    continue
                y = y if metric else max(y, 1e-9)
                ax.scatter(r["median_ms"], y, s=55, marker=markers[j % len(markers)],
                           color=colors[runtimes.index(r["runtime"]) % len(colors)],
                           label=f"{r['runtime']} ({r['technique']})")
            ax.set_xscale("log")
            if not metric:
                ax.set_yscale("log")
            ax.set_xlabel("median latency, ms (log)")
            ax.set_ylabel(f"{metric} on {meta.get('eval_samples')} samples" if metric
                          else "max-abs error vs torch (log)")
            ax.set_title(meta.get("title", m), fontsize=9)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(multi):]:
            ax.axis("off")
        fig.suptitle("Latency vs accuracy per technique (aglmc variants, onnxruntime fp32/int8)", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "accuracy.png", dpi=110)
        plt.close(fig)
        written.append("accuracy.png")
    return written
