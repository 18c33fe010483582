"""Quantization specs: they check themselves when made, and a target refuses schemes it does not run fast."""

import numpy as np
import pytest

from aglmc.errors import PassError
from aglmc.passes.quant_spec import (TARGET_SCHEMES, QuantScheme, QuantSpec, check_scheme, check_targets,
                                     sqnr_db, target_support)

ARM_STATIC = QuantScheme(weights=QuantSpec("int8", symmetric=True, axis=0, narrow_range=True),
                         activations=QuantSpec("int8"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="int16"), "quantization dtype 'int16' is not one of int8, uint8, int4, uint4"),
    (dict(method="kl"), "range method 'kl' is not one of minmax, percentile, entropy, mse"),
    (dict(dtype="uint8", symmetric=True), "a symmetric uint8 spec wastes half its range"),
    (dict(narrow_range=True), "narrow_range applies to symmetric specs only"),
    (dict(group_size=32), "group_size needs a channel axis"),
    (dict(axis=0, group_size=1), "group_size must be an integer >= 2"),
    (dict(percentile=40.0), "percentile must be in (50, 100]"),
])
def test_spec_refuses_bad_fields(kwargs, message):
    with pytest.raises(PassError) as err:
        QuantSpec(**kwargs)
    assert message in err.value.message


def test_spec_is_frozen_and_derives_its_range():
    spec = QuantSpec("int8", symmetric=True, axis=0, narrow_range=True)
    with pytest.raises(Exception):
        spec.dtype = "uint8"  # frozen
    assert (spec.qmin, spec.qmax) == (-127, 127)
    assert (QuantSpec("uint8").qmin, QuantSpec("uint8").qmax) == (0, 255)
    assert (QuantSpec("int4", symmetric=True).qmin, QuantSpec("int4").qmax) == (-8, 7)
    assert spec.describe() == "int8 sym per-channel(axis 0) minmax"


def test_qparams_symmetric_and_affine():
    scale, zp = QuantSpec("int8", symmetric=True, narrow_range=True).qparams(-2.0, 1.0)
    assert zp == 0 and np.isclose(scale, 2.0 / 127)
    scale, zp = QuantSpec("int8").qparams(0.0, 2.55)  # after ReLU: all 256 levels on [0, 2.55]
    assert zp == -128 and np.isclose(scale, 0.01)
    x = np.array([0.0, 1.0, 2.55, 3.0], np.float32)
    assert QuantSpec("int8").quantize(x, scale, zp).tolist() == [-128, -28, 127, 127]
    # a range that excludes zero is widened to include it (zero stays exact)
    scale, zp = QuantSpec("uint8").qparams(1.0, 2.0)
    assert zp == 0 and np.isclose(scale, 2.0 / 255)
    # per channel: arrays in, arrays out
    scale, zp = QuantSpec("int8", symmetric=True, axis=0).qparams(np.array([-1.0, -4.0]), np.array([2.0, 1.0]))
    assert scale.shape == (2,) and np.allclose(scale * 127.5, [2.0, 4.0])


def test_scheme_validation():
    with pytest.raises(PassError, match="per tensor"):
        QuantScheme(weights=QuantSpec("int8", symmetric=True, axis=0), activations=QuantSpec("int8", axis=1))
    with pytest.raises(PassError, match="group-wise weights are for weight-only"):
        QuantScheme(weights=QuantSpec("int4", symmetric=True, axis=0, group_size=32), activations=QuantSpec())
    with pytest.raises(PassError, match="needs an activation spec"):
        QuantScheme(weights=QuantSpec("int8", symmetric=True, axis=0), dynamic=True)
    assert ARM_STATIC.kind == "static"
    assert ARM_STATIC.short() == "w int8 sym per-channel, a int8 asym per-tensor"


def test_arm_runs_symmetric_int8_fast_and_says_what_else_to_write():
    assert check_scheme(ARM_STATIC, "arm").target == "arm"
    assert "sdot" in check_scheme(ARM_STATIC, "arm", ["+neon", "+dotprod"]).instructions
    asym = QuantScheme(weights=QuantSpec("uint8", axis=0), activations=QuantSpec("int8"))
    with pytest.raises(PassError) as err:
        check_scheme(asym, "arm")
    assert err.value.message == ("target 'arm' has no fast kernel for this scheme: weights must be symmetric int8 "
                                 "(zero point 0), got uint8 asym per-channel(axis 0) minmax")
    assert "activations int8/uint8 per tensor, int32 accumulation" in err.value.hint
    int4_static = QuantScheme(weights=QuantSpec("int8", symmetric=True, axis=0), activations=QuantSpec("int4"))
    with pytest.raises(PassError, match="activations must be int8 or uint8, got int4"):
        check_scheme(int4_static, "arm")
    with pytest.raises(PassError, match="target 'vulkan' has no integer kernels"):
        check_scheme(ARM_STATIC, "vulkan")
    # weight-only int4 group-wise: the phone-LLM scheme runs on arm
    w4 = QuantScheme(weights=QuantSpec("int4", symmetric=True, axis=0, group_size=32))
    assert check_scheme(w4, "arm").target == "arm"
    check_targets(ARM_STATIC, [("host", ()), ("arm", ("+neon", "+dotprod")), ("vulkan", ())])  # vulkan skipped


def test_support_table_covers_cpu_targets():
    assert set(TARGET_SCHEMES) == {"arm", "arm+dotprod", "host"}
    assert target_support("arm", ["+dotprod"]).target == "arm+dotprod"
    assert target_support("vulkan") is None


def test_sqnr():
    x = np.linspace(-1, 1, 1000)
    assert sqnr_db(x, x) == float("inf")
    assert np.isclose(sqnr_db(x, x * 1.01), 40.0, atol=0.01)
