"""Boards: naming them, bounded failures, and arm libraries run on the emulated aarch64 board vs the host.

The emulated board needs Debian's qemu-user and arm64 packages (see targets/board.py). Without them the board
tests skip, unless AGLMC_REQUIRE_BOARD=1 (CI), where a missing board is a failure.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from aglmc.errors import TargetError  # noqa: E402
from aglmc.targets import board  # noqa: E402
from aglmc.targets.base import get_target  # noqa: E402
from aglmc.targets.frontend import relax_from_onnx, relax_from_torch  # noqa: E402
from aglmc.targets.run import HostRunner  # noqa: E402

TOL = 1e-5


# ------------------------------------------------------------------------------------------ models
class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def onnx_model() -> onnx.ModelProto:
    """MatMul -> Add -> Sigmoid and a second output, so the board returns a tuple."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 4)).astype("float32"), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype("float32"), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["logits"], name="bias"),
             helper.make_node("Sigmoid", ["logits"], ["prob"], name="sigmoid")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 4]),
                               helper.make_tensor_value_info("prob", TensorProto.FLOAT, [2, 4])],
                              initializer=[w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def build_both(mod, tmp_path):
    """(host library, arm library) of one Relax module."""
    host = get_target("host").build(mod, {}, tmp_path / "host.so").path
    arm = get_target("arm").build(mod, {}, tmp_path / "arm.so").path
    return host, arm


# ------------------------------------------------------------------------------------------ the board
def live_members(pgid: int) -> list:
    """Processes of process group ``pgid`` that are still running (zombies excluded)."""
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(pid))
    return pids


@pytest.mark.slow
def test_torch_model_on_board_matches_host(emulated_board, tmp_path):
    torch.manual_seed(0)
    model = ConvNet().eval()
    x = torch.randn(1, 3, 8, 8)
    host, arm = build_both(relax_from_torch(model, (x,)), tmp_path)
    expected = HostRunner(host).run([x.numpy()])
    start = time.monotonic()
    got = board.run_on_board(arm, [x.numpy()], emulated_board.spec, timeout=120)
    error = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
    print(f"torch ConvNet: board vs host max-abs error {error:.3g} ({time.monotonic() - start:.1f} s on the board)")
    assert [g.shape for g in got] == [e.shape for e in expected] and error <= TOL


@pytest.mark.slow
def test_onnx_model_with_two_outputs_on_board(emulated_board, tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 16)).astype("float32")
    host, arm = build_both(relax_from_onnx(onnx_model(), {"x": x.shape}), tmp_path)
    expected = HostRunner(host).run([x])
    session = board.connect(emulated_board.spec, timeout=60, session_timeout=120)
    got = board.run_on_board(arm, [x], session, timeout=120)
    assert len(got) == 2 == len(expected)
    error = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
    print(f"ONNX MLP: board vs host max-abs error {error:.3g}")
    assert error <= TOL


@pytest.mark.slow
def test_busy_board_is_a_bounded_error(emulated_board, tmp_path):
    arm = get_target("arm").build(relax_from_onnx(onnx_model(), {"x": (2, 16)}), {}, tmp_path / "arm.so").path
    held = board.connect(emulated_board.spec, timeout=60, session_timeout=60)  # the board serves one session
    start = time.monotonic()
    with pytest.raises(TargetError, match=f"no board under key '{emulated_board.key}' .* became free within 3 s"):
        board.run_on_board(arm, [np.zeros((2, 16), "float32")], emulated_board.spec, timeout=3)
    assert time.monotonic() - start < 10
    del held


@pytest.mark.slow
def test_two_boards_under_one_key_and_stop_leaves_nothing(emulated_board, tmp_path):
    """A farm of two: a second board joins the same key; stopping it ends its whole process group."""
    second = board.start_emulated(emulated_board.key, tracker_port=emulated_board.tracker_port, timeout=300)
    try:
        assert second.tracker_pgid is None  # the tracker was reused
        (status,) = [s for s in board.list_boards(f"127.0.0.1:{emulated_board.tracker_port}")
                     if s.key == emulated_board.key]
        assert status.boards == 2
    finally:
        stopped = board.stop(pgid=second.pgid)
    assert stopped == [f"board {second.spec} (pgid {second.pgid})"]  # the first board keeps the tracker
    assert live_members(second.pgid) == []
    (status,) = [s for s in board.list_boards(f"127.0.0.1:{emulated_board.tracker_port}")
                 if s.key == emulated_board.key]
    assert status.boards == 1


# ------------------------------------------------------------------------------------------ failures, no board
def test_board_specs():
    assert board.parse_board("rpi4@10.0.0.2:9190") == board.BoardSpec("10.0.0.2", 9190, "rpi4")
    assert board.parse_board("10.0.0.7:9090") == board.BoardSpec("10.0.0.7", 9090)
    assert board.parse_board("aglmc-emulated") == board.BoardSpec("127.0.0.1", 9190, "aglmc-emulated")
    for bad in ("rpi4@10.0.0.2", "host:port", "@h:1", "a b"):
        with pytest.raises(TargetError, match="cannot read|empty key"):
            board.parse_board(bad)


def test_wrong_architecture_library_is_refused(tmp_path):
    mod = relax_from_onnx(onnx_model(), {"x": (2, 16)})
    host = get_target("host").build(mod, {}, tmp_path / "host.so").path
    with pytest.raises(TargetError, match="is built for x86_64; boards run aarch64 libraries"):
        board.run_on_board(host, [np.zeros((2, 16), "float32")], "127.0.0.1:9")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def arm_lib(tmp_path_factory):
    out = tmp_path_factory.mktemp("arm") / "arm.so"
    return get_target("arm").build(relax_from_onnx(onnx_model(), {"x": (2, 16)}), {}, out).path


def test_dead_board_fails_fast(arm_lib):
    start = time.monotonic()
    with pytest.raises(TargetError, match=r"board 127\.0\.0\.1:\d+ is unreachable: connection refused"):
        board.run_on_board(arm_lib, [np.zeros((2, 16), "float32")], f"127.0.0.1:{free_port()}", timeout=30)
    assert time.monotonic() - start < 5


def test_missing_tracker_fails_fast(arm_lib):
    start = time.monotonic()
    with pytest.raises(TargetError, match=r"no tracker answers at 127\.0\.0\.1:\d+: connection refused"):
        board.run_on_board(arm_lib, [np.zeros((2, 16), "float32")], f"key@127.0.0.1:{free_port()}", timeout=30)
    assert time.monotonic() - start < 5


def test_board_that_never_answers_times_out(arm_lib):
    """A server that accepts and then says nothing: the RPC handshake would wait forever."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    start = time.monotonic()
    try:
        with pytest.raises(TargetError, match=r"did not answer within 2 s \(while connecting\)"):
            board.run_on_board(arm_lib, [np.zeros((2, 16), "float32")],
                               f"127.0.0.1:{listener.getsockname()[1]}", timeout=2)
        assert time.monotonic() - start < 6  # the timeout, plus the grace for inner errors
    finally:
        for conn in accepted:
            conn.close()
        listener.close()


def test_unknown_key_at_a_tracker():
    from tvm.rpc.tracker import Tracker

    tracker = Tracker("127.0.0.1", port=free_port(), port_end=65000, silent=True)
    try:
        with pytest.raises(TargetError, match="no board is registered under key 'nope' .*keys there: none"):
            board.connect(f"nope@127.0.0.1:{tracker.port}", timeout=10)
        assert board.list_boards(f"127.0.0.1:{tracker.port}") == []
    finally:
        tracker.terminate()


def test_missing_qemu_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(board.shutil, "which", lambda name, *a: None)
    with pytest.raises(TargetError, match="needs 'qemu-aarch64'") as e:
        board.prepare_emulated(tmp_path)
    assert "apt-get install qemu-user" in e.value.render()


def test_missing_arm64_architecture_says_how_to_add_it(monkeypatch, tmp_path):
    monkeypatch.setattr(board.shutil, "which", lambda name, *a: "/usr/bin/qemu-aarch64")
    monkeypatch.setattr(board, "_run", lambda cmd, what, **kw: "i386\n")  # dpkg --print-foreign-architectures
    with pytest.raises(TargetError, match="no arm64 architecture") as e:
        board.prepare_emulated(tmp_path)
    assert "dpkg --add-architecture arm64 && apt-get update" in e.value.render()
