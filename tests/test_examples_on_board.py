"""Issue 3 end to end: every example built for arm runs on the emulated board and agrees with the host; a
target block can ask the build itself to verify on a board; a farm of two boards shares a data set."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import EXAMPLES, schedule_copy

pytestmark = pytest.mark.slow

TOL = 1e-5


def _board_arg(board) -> str:
    return f"{board.key}@127.0.0.1:{board.tracker_port}"


def _build(cli, sched, out):
    result = cli("build", sched, "--out", out, "--quiet")
    assert result.code == 0, result.err
    return out


def _run_compare(cli, artifact, dataset, board):
    result = cli("run", artifact, "--dataset", dataset, "--board", _board_arg(board), "--compare")
    assert result.code == 0, result.err
    error = float(re.search(r"max-abs difference board vs host: (\S+)", result.out).group(1))
    print(f"{artifact.name}: board vs host max-abs {error:.3g}")
    return error


def test_digits_on_board(cli, emulated_board, digits_artifact, tmp_path):
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("digits_data", EXAMPLES / "01_digits_cnn" / "data.py")
    data = module_from_spec(spec)
    spec.loader.exec_module(data)
    inputs, _ = data.heldout()
    np.savez(tmp_path / "d.npz", x=inputs["x"][:8])
    assert _run_compare(cli, digits_artifact, tmp_path / "d.npz", emulated_board) <= TOL


SCHEDULES = sorted(s for s in EXAMPLES.glob("*/*.sched") if "target arm" in s.read_text())


def _with_board(text: str, board: str) -> dict:
    """The replacements that make a schedule's arm block name ``board`` and evaluate only a few samples."""
    line = text[text.index("target arm"):].split("\n", 1)[0]
    setting = f'board = "{board}"'
    if line.rstrip().endswith("{"):
        arm = f"{line}\n    {setting}"
    elif "}" in line:
        arm = line.replace("}", f" {setting} }}")
    else:
        arm = f"{line} {{ {setting} }}"
    replace = {line: arm}
    if "evaluate {" in text:
        replace["evaluate {"] = "evaluate {\n    limit = 3"
    if "generate {" in text:  # a language model: greedy generation on the board, one prompt
        replace["generate {"] = "generate {\n    verify_prompts = 1\n    new_tokens = 6"
    return replace


@pytest.mark.parametrize("sched", SCHEDULES, ids=[f"{s.parent.name}/{s.stem}" for s in SCHEDULES])
def test_every_example_is_verified_on_the_board_by_its_build(cli, emulated_board, sched, tmp_path):
    """Each example schedule, with its arm block naming the board: the build runs the arm library there on
    (a few samples of) its evaluation data and checks it against the host library."""
    copy = schedule_copy(sched, tmp_path / sched.name, replace=_with_board(sched.read_text(),
                                                                            _board_arg(emulated_board)))
    out = _build(cli, copy, tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    [check] = [d for d in manifest["verification"]["devices"] if d["target"] == "arm"]
    assert check["where"] == f"board {_board_arg(emulated_board)}"
    assert check["error_vs_host"] <= TOL * max(1.0, manifest["verification"]["output_scale"]), check
    assert f"`board {_board_arg(emulated_board)}`" in (out / "report.md").read_text()
    print(f"{sched.name}: board vs host max-abs {check['error_vs_host']:.3g}")
    if manifest.get("llm"):  # prefill + decode generated PyTorch's greedy tokens on the board too
        checks = {c["target"]: c for c in json.loads((out / manifest["llm"]).read_text())["checks"]}
        assert checks["arm"]["where"].startswith("board"), checks
        assert checks["arm"]["sequences_equal"] == checks["arm"]["prompts"] == 1, checks["arm"]
        print(f"{sched.name}: board generates PyTorch's greedy tokens (agreement {checks['arm']['agreement']:.4f})")


def test_a_farm_of_two_boards_shares_a_data_set(cli, emulated_board, digits_artifact, tmp_path):
    from aglmc.targets import board

    second = board.start_emulated(emulated_board.key, tracker_port=emulated_board.tracker_port, timeout=300)
    try:
        sample = np.load(EXAMPLES / "01_digits_cnn" / "sample.npy")
        np.savez(tmp_path / "d.npz", x=np.repeat(sample, 12, axis=0))
        result = cli("run", digits_artifact, "--dataset", tmp_path / "d.npz", "--board",
                     _board_arg(emulated_board), "--jobs", "2", "--output", tmp_path / "out.npz")
        assert result.code == 0, result.err
        assert re.search(r"ran 12 input\(s\) on 2 board\(s\)", result.out), result.out
        logits = np.load(tmp_path / "out.npz")["output0"]
        assert logits.shape == (12, 10) and np.all(logits == logits[:1])
    finally:
        board.stop(pgid=second.pgid)


def test_dead_board_and_wrong_library_are_one_line_errors(cli, digits_artifact, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = cli("run", digits_artifact, "--input", EXAMPLES / "01_digits_cnn" / "sample.npy",
                 "--board", f"127.0.0.1:{port}", "--timeout", "10")
    assert result.code == 1 and "unreachable: connection refused" in result.err
    assert len(result.err.strip().splitlines()) <= 2 and "Traceback" not in result.err
