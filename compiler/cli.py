"""The ``aglmc`` command line. Exit codes: 0 ok, 1 user error (a located message, no traceback), 2 internal
error, 130 interrupted."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import List, Optional

from aglmc.errors import AglmcError

EPILOG = """examples:
  aglmc check examples/01_digits_cnn/digits.sched
  aglmc build examples/01_digits_cnn/digits.sched --out build/digits
  aglmc run build/digits --input examples/01_digits_cnn/sample.npy
  aglmc inspect build/digits
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aglmc", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Compile a trained model for ARM NEON boards (and the host) from a .sched schedule: "
                    "import it, run the schedule's compression passes, verify it against the original on real "
                    "inputs, and lower it through Apache TVM.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    b = sub.add_parser("build", help="build a schedule into an artifact folder",
                       description="Run the whole schedule and write one artifact folder: a library per target, "
                                   "manifest.json, the resolved schedule and report.md. The folder is replaced "
                                   "atomically; a failed build leaves the previous one as it was.")
    b.add_argument("schedule", type=Path, help="the .sched file")
    b.add_argument("--out", "-o", type=Path, help="artifact folder (default: build/<schedule name>)")
    b.add_argument("--plugin", action="append", type=Path, default=[], metavar="FILE.py",
                   help="a Python file that registers extra passes (repeatable)")
    b.add_argument("--print-after-all", action="store_true", help="print the graph after every step")
    b.add_argument("--dump-ir", type=Path, metavar="DIR", help="write the graph after every step into DIR")
    b.add_argument("--explain", action="append", default=[], metavar="PASS",
                   help="print, per candidate site, why PASS did or did not apply (repeatable)")
    b.add_argument("--quiet", "-q", action="store_true", help="print only the result")

    # aglmc issue 7: autotuning
    t = sub.add_parser("tune", help="tune the kernels of a schedule's targets into their tuning databases",
                       description="Import the schedule's model and run its passes as a build does, then tune the "
                                   "kernels of each target whose block sets a budget (tune_trials, tune_seconds) "
                                   "with MetaSchedule, measured on this machine or on the arm block's board. "
                                   "Every measured candidate lands in "
                                   "the target's tuning database at once, so an interrupted run resumes where it "
                                   "stopped; a later `aglmc build` applies the best kernels.")
    t.add_argument("schedule", type=Path, help="the .sched file")
    t.add_argument("--trials", type=int, metavar="N",
                   help="trial budget per tuned target (overrides tune_trials; tunes the host when no block sets "
                        "tune_trials)")
    t.add_argument("--target", action="append", default=[], metavar="KIND", help="tune only this target (repeatable)")
    t.add_argument("--report", action="store_true",
                   help="print per kernel: trials, the untuned (rules) latency, the best tuned latency")
    t.add_argument("--plugin", action="append", type=Path, default=[], metavar="FILE.py")
    t.add_argument("--quiet", "-q", action="store_true", help="print only the result")

    c = sub.add_parser("check", help="check a schedule without building",
                       description="Parse and check a .sched file: syntax, pass and target names, parameters, "
                                   "files it names. Prints the resolved schedule with every default filled in.")
    c.add_argument("schedule", type=Path)
    c.add_argument("--plugin", action="append", type=Path, default=[], metavar="FILE.py")
    c.add_argument("--quiet", "-q", action="store_true", help="print nothing when the schedule is fine")

    r = sub.add_parser("run", help="run an artifact on inputs, on the host or on ARM boards",
                       description="Run an artifact's host library, or its arm library on a board, on one input "
                                   "(--input: .npy for one-input models, .npz with arrays named like the "
                                   "inputs) or on a data set (--dataset: .npz, samples first), and print or "
                                   "save the outputs.")
    r.add_argument("artifact", type=Path, help="the folder `aglmc build` wrote")
    what = r.add_mutually_exclusive_group(required=True)
    what.add_argument("--input", "-i", type=Path, metavar="FILE.npy|FILE.npz", help="one input")
    what.add_argument("--dataset", type=Path, metavar="FILE.npz",
                      help="many inputs: one array per model input, samples first (as a schedule's data set)")
    r.add_argument("--target", default="host", metavar="KIND",
                   help="which library runs here: host (default) or vulkan (on this machine's Vulkan device)")
    r.add_argument("--board", metavar="KEY|KEY@HOST:PORT|HOST:PORT",
                   help="run the arm library on this board (a key at a tracker, or a server's address)")
    r.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="with --board KEY and --dataset: use N boards of the key in parallel (a farm)")
    r.add_argument("--compare", action="store_true",
                   help="also run the host library and print the max-abs difference from it")
    r.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="give up on a board after this long (default 300)")
    r.add_argument("--output", type=Path, metavar="FILE.npz", help="save the outputs here")

    i = sub.add_parser("inspect", help="op counts, parameters, MACs and a per-layer table",
                       description="Describe a model (.onnx file, file.py:factory, or a .sched file's model) or "
                                   "an artifact folder.")
    i.add_argument("target", help="MODEL.onnx | model.py:factory | SCHEDULE.sched | ARTIFACT_DIR")
    i.add_argument("--layers", type=int, default=40, help="rows of the per-layer table (default 40)")

    bd = sub.add_parser("board", help="start, stop and list ARM boards (an emulated one, or real ones at a tracker)",
                        description="Boards are reached through TVM's RPC tracker. `board start --emulated` sets up "
                                    "(once, in ~/.cache/aglmc/board) an aarch64 Python with TVM's runtime under "
                                    "qemu-user, starts a tracker on 127.0.0.1 and TVM's RPC server under it, "
                                    "registered under KEY. Real boards run TVM's own server: "
                                    "`python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`.")
    bsub = bd.add_subparsers(dest="board_command", metavar="ACTION", required=True)
    bs = bsub.add_parser("start", help="start an emulated board (again for a second board under the same key)")
    bs.add_argument("--emulated", action="store_true", required=True,
                    help="an aarch64 board emulated by qemu-user on this machine")
    bs.add_argument("--key", default="aglmc-emulated", help="the tracker key (default aglmc-emulated)")
    bs.add_argument("--tracker-port", type=int, default=9190, help="the local tracker's port (default 9190)")
    bs.add_argument("--cpu", default="cortex-a76", help="the emulated core (default cortex-a76)")
    bst = bsub.add_parser("stop", help="stop the boards this machine started (and their tracker)")
    bst.add_argument("--key", help="only the boards under this key")
    bl = bsub.add_parser("list", help="what the tracker knows: keys, boards, free boards")
    bl.add_argument("--tracker", default="127.0.0.1:9190", metavar="HOST:PORT")

    an = sub.add_parser("analyze", help="analyses that guide a schedule (sensitivity of each layer to pruning)")
    asub = an.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    se = asub.add_parser("sensitivity", help="prune each channel group alone at several ratios and evaluate",
                         description="Prune each channel group of the schedule's model alone, at each ratio, and "
                                     "evaluate the schedule's metric on its evaluation data (in PyTorch or "
                                     "onnxruntime, no TVM). Writes sensitivity.json (per-group ratios whose metric "
                                     "drop stays within --max-drop, for `prune_channels { ratios_from = ... }`), "
                                     "sensitivity.md and sensitivity.png.")
    se.add_argument("schedule", type=Path)
    se.add_argument("--ratios", default="0.1,0.3,0.5,0.7", help="comma-separated ratios (default 0.1,0.3,0.5,0.7)")
    se.add_argument("--max-drop", type=float, metavar="X",
                    help="largest metric drop a chosen ratio may cost (default: the evaluate block's metric_drop, "
                         "else 0.01)")
    se.add_argument("--out", type=Path, default=Path("."), metavar="DIR", help="where to write (default: here)")
    se.add_argument("--plugin", action="append", type=Path, default=[], metavar="FILE.py")

    from aglmc.compiler.llm import add_generate_parser

    add_generate_parser(sub)  # aglmc generate: greedy decoding with an LLM artifact (prefill + decode)

    ps = sub.add_parser("passes", help="list the passes a schedule can use, with their parameters")
    ps.add_argument("--plugin", action="append", type=Path, default=[], metavar="FILE.py")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    # torch and transformers warn about their own internals (deprecations); users cannot act on those.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        return _dispatch(args)
    except AglmcError as e:
        print(e.render(), file=sys.stderr)
        if os.environ.get("AGLMC_TRACEBACK"):
            traceback.print_exc()
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:  # a bug in aglmc: say so, keep the traceback short unless asked
        print(f"internal error: {type(e).__name__}: {e}", file=sys.stderr)
        if os.environ.get("AGLMC_TRACEBACK"):
            traceback.print_exc()
        else:
            print("this is a bug in aglmc; rerun with AGLMC_TRACEBACK=1 for the traceback", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    from aglmc.compiler import commands

    return getattr(commands, f"cmd_{args.command}")(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
