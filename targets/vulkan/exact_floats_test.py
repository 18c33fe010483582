"""ExactFloatLiterals: a float32 constant TVM would print inexactly reaches WGSL as the bitcast of its bits."""

import numpy as np
import tvm
from tvm import s_tir, te

from aglmc.targets.vulkan.exact_floats import exact_float_literals, prints_exactly
from aglmc.targets.vulkan.lower import build_kernels
from aglmc.targets.vulkan.target import VulkanTarget

# one ulp above 255: a requantization multiplier of the kind the digits int8 model has
MULTIPLIER = float(np.nextafter(np.float32(255.0), np.float32(256.0)))
FLT_MAX = float(np.finfo(np.float32).max)


def _kernel(constant: float):
    """``B[i] = max(A[i] * constant + 0.5, -FLT_MAX)``, one thread per element."""
    a = te.placeholder((64,), "float32", name="A")
    b = te.compute((64,), lambda i: tvm.tirx.max(a[i] * tvm.tirx.const(constant, "float32")
                                                 + tvm.tirx.const(0.5, "float32"),
                                                 tvm.tirx.const(-FLT_MAX, "float32")), name="B")
    sch = s_tir.Schedule(te.create_prim_func([a, b]))
    (i,) = sch.get_loops(sch.get_sblock("B"))
    bx, tx = sch.split(i, [None, 64])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    return sch.mod["main"].with_attr("global_symbol", "scale")


def test_seven_digits_lose_the_ulp():
    assert MULTIPLIER == 255.00001525878906 and "%.6e" % MULTIPLIER == "2.550000e+02"
    assert not prints_exactly(MULTIPLIER)
    assert prints_exactly(255.0) and prints_exactly(0.5) and prints_exactly(float("inf"))


def test_only_inexact_literals_become_bitcasts():
    before = _kernel(MULTIPLIER)
    after = exact_float_literals(before)
    text = after.script()
    bits = int(np.float32(MULTIPLIER).view(np.uint32))
    assert bits == 0x437F0001 and f'T.reinterpret("float32", T.uint32({bits}))' in text
    assert "T.float32(0.5)" in text and "T.float32(-340282346638528859811704183484516925440.0)" in text  # exact / a reducer identity
    assert exact_float_literals(_kernel(255.0)).script() == _kernel(255.0).script()
    wgsl = build_kernels({"scale": after}, VulkanTarget.tvm_target({})).wgsl["scale_kernel"]
    assert f"bitcast<f32>({bits}u)" in wgsl and "2.550000e+02f" not in wgsl
    before_wgsl = build_kernels({"scale": before}, VulkanTarget.tvm_target({})).wgsl["scale_kernel"]
    assert "2.550000e+02f" in before_wgsl  # what TVM prints without the pass
