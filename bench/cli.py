"""The command line of ``python -m bench``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DEFAULT_OUT = REPO / "bench" / "results"


def default_work() -> Path:
    from bench.runtimes import peers_dir

    return peers_dir() / "work"


def parse_args(argv=None) -> argparse.Namespace:
    from bench import catalog, runtimes

    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="aglmc against its peers: latency, spread, accuracy, memory, size and compile time on this "
                    "machine (each runtime in its own process, interleaved rounds, same thread count), and "
                    "aarch64 instruction counts with --arm.")
    p.add_argument("--quick", action="store_true",
                   help=f"CI mode: models {','.join(catalog.QUICK_MODELS)}, runtimes "
                        f"{','.join(runtimes.QUICK_RUNTIMES)}, 3 short rounds")
    p.add_argument("--models", help=f"comma-separated (default {','.join(catalog.DEFAULT_MODELS)}); known: "
                                    f"{', '.join(catalog.MODELS)}")
    p.add_argument("--runtimes", help=f"comma-separated (default: all); known: {', '.join(runtimes.RUNTIMES)}")
    p.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: all cores)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 10; --quick 3)")
    p.add_argument("--round-seconds", type=float, default=None,
                   help="about how long one runtime's calls in one round last (default 0.3; --quick 0.05)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed calls per runtime and model after which rounds past the third are "
                        "skipped (default 60; --quick 5)")
    p.add_argument("--jobs", type=int, default=None,
                   help="prepare/build steps run this many at a time before any timing (default 1; --quick 2; "
                        "above 1, compile times are measured under contention)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    p.add_argument("--work", type=Path, default=None,
                   help=f"scratch folder for artifacts (default {default_work()})")
    p.add_argument("--arm", action="store_true",
                   help="aarch64 instruction counts under qemu (shared/tools/armcount) instead of host latency")
    p.add_argument("--arm-kernels", action="store_true",
                   help="with --arm: also aglmc's instructions kernel by kernel (one guest thread per kernel)")
    p.add_argument("--board", metavar="SPEC",
                   help="latency of the aarch64 libraries on an ARM board over TVM's RPC: KEY@HOST:PORT of a "
                        "tracker, or 'emulated' (a qemu board this run starts; its times are correctness-only)")
    p.add_argument("--arm-models", help=f"with --arm or --board: comma-separated (default {','.join(catalog.ARM_MODELS)})")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--setup-peers", action="store_true",
                   help="install the optional peers (LiteRT, ExecuTorch, ncnn/pnnx, MNN, IREE) and exit")
    p.add_argument("--plugin", type=Path, action="append", default=[],
                   help="a Python file that adds runtimes with bench.runtimes.register(...) (repeatable)")
    p.add_argument("--list", action="store_true", help="list models and runtimes (with availability) and exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from bench import catalog, report, runtimes

    if args.plugin:  # the workers inherit the variable and load the plugins too
        paths = [str(p.resolve()) for p in args.plugin]
        old = os.environ.get("AGLMC_BENCH_PLUGINS")
        os.environ["AGLMC_BENCH_PLUGINS"] = os.pathsep.join(paths)
        runtimes._load_plugins()
        if old:
            os.environ["AGLMC_BENCH_PLUGINS"] = os.pathsep.join(paths + [old])
    if args.setup_peers:
        runtimes.setup_peers()
        return 0
    if args.list:
        print("models:")
        for m in catalog.MODELS.values():
            print(f"  {m.name:<18} {m.title}")
        print("runtimes:")
        for rt in runtimes.RUNTIMES.values():
            print(f"  {rt.name:<18} {rt.unavailable() or 'available'}")
        return 0
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
                               os.cpu_count() or 1)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = (args.work or default_work()).resolve()
    work.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.arm or args.arm_kernels:
        from bench import arm

        models = _names(args.arm_models or args.models, catalog.ARM_MODELS, catalog.MODELS)
        data = arm.run_arm(models, work / "arm", log=log, kernels=args.arm_kernels)
        (out / "arm.json").write_text(json.dumps(data, indent=1))
        path = report.write_results(out)
        print(report.arm_section(data))
        log(f"wrote {path}")
        return 0

    if args.board:
        from aglmc.errors import AglmcError
        from aglmc.targets.board import parse_board

        from bench import board

        if args.board != board.EMULATED:
            try:
                parse_board(args.board)
            except AglmcError as e:
                print(f"--board: {e}", file=sys.stderr)
                return 2
        models = _names(args.arm_models or args.models, catalog.ARM_MODELS, catalog.MODELS)
        data = board.run_board(models, work / "board", args.board, log=log)
        (out / "board.json").write_text(json.dumps(data, indent=1))
        path = report.write_results(out)
        print(report.board_section(data))
        log(f"wrote {path}")
        return 0

    from bench.runner import Settings, run_host

    quick = args.quick
    models = _names(args.models, catalog.QUICK_MODELS if quick else catalog.DEFAULT_MODELS, catalog.MODELS)
    names = _names(args.runtimes, runtimes.QUICK_RUNTIMES if quick else tuple(runtimes.RUNTIMES),
                   runtimes.RUNTIMES)
    if runtimes.BASELINE not in names:
        log(f"note: {runtimes.BASELINE} is not among the runtimes: no × ORT ratios")
    settings = Settings(
        threads=threads,
        rounds=args.rounds or (3 if quick else 10),
        round_seconds=args.round_seconds or (0.05 if quick else 0.3),
        warmup_seconds=0.1 if quick else 0.5,
        budget_seconds=args.budget or (5.0 if quick else 60.0),
        work=work / "host",
        jobs=args.jobs or (2 if quick else 1),
        log=log,
    )
    settings.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = run_host(models, names, settings)
    data["quick"] = quick
    data["plots"] = [] if args.no_plots else report.plots(data, out)
    (out / "host.json").write_text(json.dumps(data, indent=1))
    path = report.write_results(out)
    print(report.host_section(data))
    log(f"wrote {path} ({time.perf_counter() - start:.0f} s)")
    return 0


def _names(text, default, known) -> list:
    names = [n.strip() for n in text.split(",") if n.strip()] if text else list(default)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown: {', '.join(unknown)}; known: {', '.join(known)}")
    return names
