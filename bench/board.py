"""``python -m bench --board SPEC``: latency of aglmc's aarch64 library on an ARM board, over TVM's RPC.

The board is any TVM RPC server behind a tracker (``KEY@HOST:PORT``, see ``aglmc board``), or ``emulated``: an
emulated board (qemu-user running the aarch64 TVM runtime) that this run starts and stops. A board that
``aglmc board start --emulated`` started on this machine is recognised as emulated too. For each model the
runner builds aglmc's ``arm.so`` and plain TVM's build (as ``--arm`` does), runs both on the board, checks the
output against torch's, and times ``main`` with TVM's remote time evaluator (the RPC transfer is not timed).

On the emulated board every time is labelled **correctness-only**: qemu runs NEON through helper functions,
so its time says nothing about an ARM core (shared/ARM.md; use ``--arm`` instruction counts for speed). On a
real board the times are the board's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from bench.arm import build_arm_libraries, prepare_model
from bench.catalog import MODELS

EMULATED = "emulated"
RUNTIMES = ("aglmc", "tvm (plain)")


def run_board(models: Sequence[str], work: Path, board: str, log=print, *, seconds: float = 1.0) -> Dict:
    """Rows of latency (median ms over ``seconds`` of calls, at least 3), error and status per model and runtime."""
    from aglmc.targets import board as boards

    started = time.time()
    info = None
    if board == EMULATED:
        info = boards.start_emulated(key="aglmc-bench", tracker_port=None, log=log)
        board = info.spec
    emulated = boards.is_emulated(board)
    rows: List[Dict] = []
    try:
        for model in models:
            spec = MODELS[model]
            folder = work / model
            prepared = prepare_model(model, folder, log)
            if "failure" in prepared:
                rows += [_failed(model, rt, prepared["failure"]) for rt in RUNTIMES]
                continue
            bound = spec.rtol * max(1.0, prepared["meta"]["output_scale"])
            for kind, built in build_arm_libraries(model, folder, RUNTIMES, log).items():
                if not built.get("ok"):
                    rows.append(_failed(model, kind, f"build: {built.get('error')}"))
                    continue
                log(f"[board {model}] run {kind} on {board}")
                try:
                    rows.append(_measure(model, kind, built["artifact"], prepared, bound, board, emulated, seconds))
                except Exception as e:  # noqa: BLE001 - the row carries the reason
                    rows.append(_failed(model, kind, str(e)[-400:]))
    finally:
        if info is not None:
            boards.stop(info.key, pgid=info.pgid)
    return {"kind": "board", "board": board, "emulated": emulated,
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "seconds": time.time() - started, "rows": rows,
            "aglmc_tree": __import__("bench.runner", fromlist=["git_state"]).git_state()}


def _measure(model: str, kind: str, artifact: str, prepared: Dict, bound: float, board: str, emulated: bool,
             seconds: float) -> Dict:
    from aglmc.targets.board import BoardRunner

    with BoardRunner(artifact, board, timeout=1800) as runner:
        out = runner.run(prepared["inputs"])[0]
        err = float(np.abs(out.astype(np.float64).reshape(prepared["reference"].shape)
                           - prepared["reference"]).max())
        times = runner.time(prepared["inputs"], seconds=seconds)
        where = runner.board_id()
    median = float(np.median(times)) * 1e3
    row = {"model": model, "title": MODELS[model].title, "runtime": kind, "status": "ok" if err <= bound else "wrong",
           "median_ms": median, "runs": len(times), "max_abs_error": err, "size": Path(artifact).stat().st_size,
           "board": where, "correctness_only": emulated}
    row["notes"] = (f"max-abs err {err:.2g}" if err <= bound else f"WRONG: max-abs err {err:.3g} > {bound:.3g}")
    if emulated:
        row["notes"] += "; emulated board (qemu-user): correctness only, the time means nothing"
    return row


def _failed(model: str, runtime: str, reason: str) -> Dict:
    return {"model": model, "title": MODELS[model].title, "runtime": runtime, "status": "failed", "reason": reason}
