"""targets/run.py's HostRunner: inputs staged in aligned buffers it keeps, outputs returned without a copy, and
neither aliases what the caller holds or what a later call writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aglmc.targets import frontend
from aglmc.targets.host import HostTarget
from aglmc.targets.llvm import build_library
from aglmc.targets.run import HostRunner, host_array, host_tensor
from aglmc.targets.toolchain import host_linker


class _TwoOutputs(torch.nn.Module):
    def forward(self, x):
        return x.reshape(4, 16), torch.relu(x) * 2.0  # the first may be a view of the input in the library


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    x = torch.randn(1, 64)
    mod = frontend.relax_from_torch(_TwoOutputs().eval(), (x,))
    path = tmp_path_factory.mktemp("runner") / "two.so"
    settings = HostTarget.resolve({"threads": 1})
    build_library("host", mod, HostTarget.tvm_target(settings), settings, path, host_linker())
    return path


def test_outputs_are_the_callers_and_do_not_change_with_later_calls(library):
    runner = HostRunner(library, threads=1)
    rng = np.random.default_rng(0)
    a_in = rng.standard_normal((1, 64)).astype(np.float32)
    b_in = rng.standard_normal((1, 64)).astype(np.float32)
    a = runner.run([a_in])
    a_copy = [o.copy() for o in a]
    b = runner.run([b_in])
    for got, want in zip(a, a_copy):  # the second call did not write into the first call's outputs
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(a[0], a_in.reshape(4, 16))
    np.testing.assert_array_equal(b[1], np.maximum(b_in, 0) * 2.0)
    a_in[...] = 0  # nor does changing the caller's input afterwards
    np.testing.assert_array_equal(a[0], a_copy[0])


def test_misaligned_and_strided_inputs_are_accepted(library):
    runner = HostRunner(library, threads=1)
    raw = np.arange(2 * 64 + 1, dtype=np.float32)
    misaligned = raw[1:65].reshape(1, 64)  # 4 bytes past an allocation
    strided = raw[: 2 * 64: 2].reshape(1, 64)
    for x in (misaligned, strided):
        np.testing.assert_array_equal(runner.run([x])[1], np.maximum(x, 0) * 2.0)


def test_zero_copy_helpers():
    x = np.arange(16, dtype=np.float32)[1:].copy()
    t = host_tensor(x)
    np.testing.assert_array_equal(t.numpy(), x)
    back = host_array(t)
    np.testing.assert_array_equal(back, x)
