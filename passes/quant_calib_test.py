"""Calibration: the four range methods on seeded data with a heavy tail, and weight quantization."""

import numpy as np
import pytest

from aglmc.passes.quant_calib import RangeCollector, fake_quantize, weight_qparams
from aglmc.passes.quant_spec import QuantSpec, sqnr_db


def _collect(batches, spec):
    c = RangeCollector()
    for b in batches:
        c.observe_minmax("t", b)
    if spec.method != "minmax":
        for b in batches:
            c.observe_histogram("t", b, spec)
    return c.range("t", spec)


@pytest.fixture(scope="module")
def heavy_tail():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((16, 4096)).astype(np.float32)
    data[3, 7] = 40.0  # one outlier 10x beyond the rest
    return list(data)


def test_minmax_keeps_the_outlier_the_others_clip_it(heavy_tail):
    spec = QuantSpec("int8", symmetric=True)
    ranges = {m: _collect(heavy_tail, QuantSpec("int8", symmetric=True, method=m))
              for m in ("minmax", "percentile", "entropy", "mse")}
    assert ranges["minmax"][1] == pytest.approx(40.0)
    for m in ("percentile", "entropy"):
        lo, hi = ranges[m]
        assert lo == -hi and 2.0 < hi < 10.0, (m, hi)
    data = np.concatenate(heavy_tail)

    def mse(m, values=data):
        scale, zp = spec.qparams(*ranges[m])
        return float(np.mean((fake_quantize(values, spec, scale, zp) - values) ** 2))

    # mse trades the one outlier's clipping error against everyone's rounding error: it clips some, and no
    # other method has a lower mean squared error
    assert ranges["mse"][1] < 40.0
    assert all(mse("mse") <= mse(m) * 1.01 for m in ("minmax", "percentile", "entropy"))
    # clipping buys resolution where the data is: far less error on the bulk of the values
    bulk = data[np.abs(data) < 4]
    assert mse("entropy", bulk) < mse("minmax", bulk) / 10 and mse("percentile", bulk) < mse("minmax", bulk) / 10


def test_one_sided_affine_range_after_relu():
    rng = np.random.default_rng(1)
    batches = [np.maximum(rng.standard_normal(2048), 0).astype(np.float32) for _ in range(4)]
    for method in ("minmax", "percentile", "entropy", "mse"):
        lo, hi = _collect(batches, QuantSpec("int8", method=method))
        assert lo == 0.0 and 1.5 < hi <= max(b.max() for b in batches), (method, hi)


def test_weight_qparams_per_channel_and_group():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 64)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)[:, None]
    spec = QuantSpec("int8", symmetric=True, axis=0, narrow_range=True)
    q, scale, zp = weight_qparams(w, spec)
    assert q.dtype == np.int8 and scale.shape == (8,) and not zp.any()
    assert np.abs(q).max(axis=1).tolist() == [127] * 8  # every channel uses its full range
    approx = q * scale[:, None]
    assert sqnr_db(w, approx) > 38
    g4 = QuantSpec("int4", symmetric=True, axis=0, group_size=16)
    q4, s4, _ = weight_qparams(w, g4)
    assert q4.dtype == np.int8 and q4.min() >= -8 and q4.max() <= 7 and s4.shape == (8, 4)
    approx4 = (q4.reshape(8, 4, 16) * s4[..., None]).reshape(8, 64)
    assert 14 < sqnr_db(w, approx4) < 30
    # per tensor
    q1, s1, _ = weight_qparams(w, QuantSpec("int8", symmetric=True))
    assert np.ndim(s1) == 0 and sqnr_db(w, q1 * s1) < sqnr_db(w, approx)
