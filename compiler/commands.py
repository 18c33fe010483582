"""The sub-commands behind :mod:`aglmc.compiler.cli`; each returns an exit code."""

from __future__ import annotations


import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

from aglmc.compiler.llm import cmd_generate  # noqa: F401  (aglmc generate, dispatched by name)
from aglmc.errors import ArtifactError, ScheduleError


def cmd_build(args) -> int:
    from aglmc.compiler.pipeline import BuildOptions, build

    out = args.out or Path("build") / args.schedule.stem
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    result = build(args.schedule, BuildOptions(out_dir=out, plugins=args.plugin,
                                               print_after_all=args.print_after_all, dump_ir=args.dump_ir, log=log))
    for name in args.explain:
        records = [p for p in result.passes if p.name == name]
        if not records:
            print(f"--explain {name}: the schedule does not run that pass")
        for record in records:
            print(f"{record.name}{' ' + record.selector if record.selector else ''}: {record.result.summary}")
            for detail in record.result.details or ["(no candidate sites)"]:
                print(f"  {detail}")
    v = result.verification
    print(f"built {out}: " + ", ".join(f"{t.kind} ({t.library}, {t.size:,} B)" for t in result.targets))
    line = f"max-abs error vs original: {v.error_vs_original:.3g} on {v.samples} sample(s) of '{v.data}'"
    if v.metric != "none" and v.metric_compiled is not None:
        line += f"; {v.metric}: original {v.metric_original:.4f}, compiled {v.metric_compiled:.4f}"
    print(line)
    print(f"report: {out / 'report.md'}")
    return 0


def cmd_tune(args) -> int:  # aglmc issue 7
    from aglmc.compiler.pipeline import BuildOptions
    from aglmc.compiler.tune import tune_schedule

    if args.trials is not None and args.trials < 0:
        raise ArtifactError(f"--trials must be 0 or more, got {args.trials}")
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    options = BuildOptions(out_dir=Path("."), plugins=args.plugin, log=log)
    try:
        reports = tune_schedule(args.schedule, options, trials=args.trials, kinds=args.target, report=args.report)
    except KeyboardInterrupt:
        print("interrupted; the trials measured so far are in the tuning database: run again to resume",
              file=sys.stderr)
        return 130
    for report in reports:
        if args.report:
            print(report)
        else:
            tuned = sum(1 for t in report.tasks if t.applied)
            print(f"tuned {report.target}: {report.trials_run} trial(s) this run ({report.stopped}), {tuned} of "
                  f"{len(report.tasks)} kernel(s) faster than the rules; database {report.folder}")
    return 0


def cmd_check(args) -> int:
    from aglmc.compiler.pipeline import check_schedule
    from aglmc.dsl import format_schedule

    checked = check_schedule(args.schedule, args.plugin)
    if not args.quiet:
        print(f"{args.schedule}: ok ({len(checked.steps)} pass step(s), targets: "
              f"{', '.join(t.kind for t in checked.targets)})")
        print(format_schedule(checked), end="")
    return 0


def load_inputs(path: Path, specs: List[dict]) -> List[np.ndarray]:
    """Read ``.npy``/``.npz`` inputs and check them against the manifest's input descriptions."""
    if not path.is_file():
        raise ArtifactError(f"input file not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                given: Dict[str, np.ndarray] = {k: npz[k] for k in npz.files}
        elif path.suffix == ".npy":
            if len(specs) != 1:
                raise ArtifactError(f"{path.name}: a .npy file holds one array but the model takes "
                                    f"{len(specs)} inputs ({', '.join(s['name'] for s in specs)})",
                                    hint="pass an .npz file with one array per input name")
            given = {specs[0]["name"]: np.load(path, allow_pickle=False)}
        else:
            raise ArtifactError(f"{path.name}: inputs must be a .npy or .npz file")
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot read {path}: {e}") from e
    arrays = []
    for spec in specs:
        name, shape, dtype = spec["name"], tuple(spec["shape"]), spec["dtype"]
        if name not in given:
            raise ArtifactError(f"{path.name} has no array '{name}' (it has: {', '.join(given) or 'none'})")
        arr = given[name]
        if arr.shape != shape:
            raise ArtifactError(f"{path.name}: input '{name}' has shape {list(arr.shape)}, the model needs "
                                f"{list(shape)}")
        if arr.dtype != np.dtype(dtype):
            if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                raise ArtifactError(f"{path.name}: input '{name}' is {arr.dtype}, the model needs {dtype}")
            arr = arr.astype(dtype)
        arrays.append(arr)
    extra = sorted(set(given) - {s["name"] for s in specs})
    if extra:
        raise ArtifactError(f"{path.name} has arrays the model does not take: {', '.join(extra)}")
    return arrays


def _library(artifact: Path, manifest: dict, kind: str) -> Path:
    lib = next((t["library"] for t in manifest.get("targets", []) if t["kind"] == kind), None)
    if lib is None:
        raise ArtifactError(f"{artifact} has no {kind} library (it has: "
                            f"{', '.join(t['kind'] for t in manifest.get('targets', []))})",
                            hint=f"add `target {kind}` to the schedule and build again")
    return artifact / lib


def load_dataset_file(path: Path, specs: List[dict]) -> List[List[np.ndarray]]:
    """The batches of an .npz data set (samples first), checked against the manifest's inputs."""
    from aglmc.compiler.data import dataset_from_arrays
    from aglmc.compiler.tensors import TensorSpec

    if not path.is_file() or path.suffix != ".npz":
        raise ArtifactError(f"--dataset needs an .npz file: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise ArtifactError(f"cannot read {path}: {e}") from e
    tensor_specs = [TensorSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in specs]
    dataset = dataset_from_arrays(path.name, arrays, tensor_specs,
                                  lambda message, hint=None: ArtifactError(f"{path.name}: {message}", hint=hint))
    return [batch for batch, _ in dataset.batches(tensor_specs)]


def _local_runner(kind: str, lib: Path):
    """Something with ``run(inputs) -> outputs`` for a library that runs on this machine."""
    from aglmc.targets.base import get_target

    if kind == "host":
        from aglmc.targets.run import HostRunner

        return HostRunner(lib)
    target = get_target(kind)
    if not hasattr(target, "runner"):
        raise ArtifactError(f"the {kind} library does not run on this machine",
                            hint="run ARM libraries on a board: --board KEY|HOST:PORT")
    return target.runner(lib)


def cmd_run(args) -> int:
    from aglmc.compiler.artifact import read_manifest
    from aglmc.compiler.verify import Outputs, max_abs

    manifest = read_manifest(args.artifact)
    batches = ([load_inputs(args.input, manifest["inputs"])] if args.input is not None
               else load_dataset_file(args.dataset, manifest["inputs"]))
    host_lib = _library(args.artifact, manifest, "host")
    if args.board:
        from aglmc.targets.board import run_batches_on_boards

        served: Dict[str, int] = {}
        chunks = run_batches_on_boards(_library(args.artifact, manifest, "arm"), batches, args.board,
                                       jobs=args.jobs, timeout=args.timeout, served=served)
        print(f"ran {len(batches)} input(s) on {len(served)} board(s) of {args.board}: "
              + ", ".join(f"{n} on {Path(b).parent.name or b}" for b, n in sorted(served.items())))
    else:
        runner = _local_runner(args.target, _library(args.artifact, manifest, args.target))
        if args.target != "host":
            print(f"running the {args.target} library on {getattr(runner, 'adapter', args.target)}")
        chunks = [runner.run(b) for b in batches]
    outputs = Outputs.concat(chunks).arrays
    if args.compare and (args.board or args.target != "host"):
        runner = _local_runner("host", host_lib)
        host = Outputs.concat([runner.run(b) for b in batches])
        print(f"max-abs difference {'board' if args.board else args.target} vs host: "
              f"{max_abs(Outputs(outputs), host):.3g}")
    names = [o["name"] for o in manifest["outputs"]]
    for name, out in zip(names, outputs):
        flat = out.reshape(-1)
        head = np.array2string(flat[:8], precision=4, separator=", ")
        line = f"{name}: {out.dtype}{list(out.shape)} {head}{' ...' if flat.size > 8 else ''}"
        if out.ndim == 2 and out.shape[0] >= 1 and np.issubdtype(out.dtype, np.floating):
            line += f"  argmax: {out.argmax(axis=-1).tolist()}"
        print(line)
    if args.output:
        np.savez(args.output, **dict(zip(names, outputs)))
        print(f"saved {args.output}")
    return 0


def cmd_analyze(args) -> int:
    from aglmc.compiler.sensitivity import analyze_sensitivity

    try:
        ratios = tuple(float(r) for r in args.ratios.split(","))
    except ValueError as e:
        raise ArtifactError(f"--ratios must be numbers separated by commas, got '{args.ratios}'") from e
    if not all(0 < r < 1 for r in ratios):
        raise ArtifactError(f"--ratios must lie in (0, 1), got {args.ratios}")
    args.out.mkdir(parents=True, exist_ok=True)
    table = analyze_sensitivity(args.schedule, ratios, args.out, max_drop=args.max_drop, plugins=args.plugin)
    print(table.markdown())
    print("wrote " + ", ".join(str(f) for f in table.files))
    return 0


def cmd_board(args) -> int:
    from aglmc.targets import board

    if args.board_command == "start":
        info = board.start_emulated(args.key, tracker_port=args.tracker_port, cpu=args.cpu)
        print(f"board '{info.key}' is up: tracker 127.0.0.1:{args.tracker_port}; use --board {info.key} "
              f"or board = \"{info.key}@127.0.0.1:{args.tracker_port}\" in a target arm block")
        return 0
    if args.board_command == "stop":
        stopped = board.stop(args.key)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    statuses = board.list_boards(args.tracker)
    if not statuses:
        print(f"the tracker at {args.tracker} knows no boards")
    for st in statuses:
        print(f"{st.key}: {st.boards} board(s), {st.free} free")
    return 0


def cmd_inspect(args) -> int:
    from aglmc.compiler.stats import onnx_stats

    target = args.target
    path = Path(target.split(":", 1)[0]) if ".py:" in target else Path(target)
    if path.is_dir():
        return _inspect_artifact(path)
    if target.endswith(".onnx"):
        import onnx

        if not path.is_file():
            raise ArtifactError(f"model file not found: {path}")
        stats = onnx_stats(onnx.load(str(path)))
        title = path.name
    elif target.endswith(".sched") or ".py:" in target:
        from aglmc.compiler.model import load_model
        from aglmc.compiler.pipeline import check_schedule
        from aglmc.compiler.stats import model_stats

        if target.endswith(".sched"):
            checked = check_schedule(path)
        else:
            checked = _adhoc_schedule(target)
        model = load_model(checked)
        stats = model_stats(model)
        title = checked.model.source.text
    else:
        raise ArtifactError(f"cannot inspect '{target}': give an .onnx file, a file.py:factory, a .sched file or an "
                            "artifact folder")
    _print_stats(title, stats, args.layers)
    return 0


def _adhoc_schedule(target: str):
    """A minimal schedule around ``file.py:factory`` so the normal model loader (and its errors) serve inspect."""
    from aglmc.compiler.catalog import build_catalog
    from aglmc.dsl import check, parse_text

    path = Path(target.split(":", 1)[0]).resolve()
    text = f'model "{path.name}:{target.split(":", 1)[1]}"\ntarget host\n'
    try:
        return check(parse_text(text, path.parent / "<inspect>.sched"), build_catalog())
    except ScheduleError as e:
        raise ArtifactError(e.message, hint=e.hint) from e


def _print_stats(title: str, stats, layers: int) -> None:
    print(f"{title}")
    print(f"  parameters: {stats.params:,}   MACs: {stats.macs:,}   nodes: {sum(stats.ops.values()):,}")
    print("  ops: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.ops.items(), key=lambda kv: -kv[1])))
    print()
    print(stats.table(limit=layers))


def _inspect_artifact(path: Path) -> int:
    from aglmc.compiler.artifact import read_manifest

    m = read_manifest(path)
    print(f"{path}: aglmc {m['aglmc']} artifact of {m['model']['source']} ({m['model']['kind']})")
    for kind in ("inputs", "outputs"):
        for s in m[kind]:
            print(f"  {kind[:-1]} {s['name']}: {s['dtype']}{s['shape']}")
    for t in m["targets"]:
        print(f"  target {t['kind']}: {t['library']} ({t['size']:,} B)")
    for p in m["passes"]:
        print(f"  pass {p['name']}: {p['summary']}")
    before, after = m["stats"]["before"], m["stats"]["after"]
    print(f"  parameters: {before['params']:,} -> {after['params']:,}   MACs: {before['macs']:,} -> "
          f"{after['macs']:,}   nodes: {before['nodes']:,} -> {after['nodes']:,}")
    v = m["verification"]
    print(f"  max-abs error vs original: {v['error_vs_original']:.3g} ({v['samples']} samples of '{v['data']}')")
    if v["metric"] != "none":
        print(f"  {v['metric']}: original {v['metric_original']}, compiled {v['metric_compiled']}")
    return 0


def cmd_passes(args) -> int:
    from aglmc.compiler.catalog import build_catalog

    catalog = build_catalog(args.plugin)
    for name, sig in catalog.passes.items():
        print(f"{name}  [{', '.join(sig.graph_kinds)}]  {sig.doc}")
        for p in sig.params:
            default = "required" if p.required else f"default {p.default!r}"
            rng = p.describe_range()
            print(f"    {p.name}: {p.type}{' ' + rng if rng else ''}{' one of ' + '|'.join(p.choices) if p.choices else ''}"
                  f" ({default}) {p.doc}")
        if sig.requires:
            print(f"    requires: {', '.join(sig.requires)}")
        if sig.guarantees:
            print(f"    guarantees: {', '.join(sig.guarantees)}")
    print("\nop kinds for `on`: " + ", ".join(catalog.op_kinds))
    print("metrics: " + ", ".join(catalog.metrics))
    return 0



