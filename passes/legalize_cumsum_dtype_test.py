"""legalize_cumsum_dtype: the graph before and after, torch numerics, and the TVM build it unblocks."""

import numpy as np
import pytest
import torch

from aglmc.passes.base import PassContext, get_pass
from aglmc.passes.select import make_selector

_CUMSUM = torch.ops.aten.cumsum.default
_CUMPROD = torch.ops.aten.cumprod.default


class _Scans(torch.nn.Module):
    """The scans a model meets: transformers' packed-sequence check, an int32 count, a float running sum."""

    def forward(self, position_ids, counts, x):
        # transformers 5.x find_packed_sequence_indices: a new sequence starts wherever positions do not step by 1
        first = position_ids[:, :1] - 1
        starts = position_ids.diff(dim=-1, prepend=first) != 1
        seq_index = starts.cumsum(-1)                           # bool -> int64 in torch
        running = torch.cumsum(counts, dim=1)                   # int32 -> int64 in torch
        alive = torch.cumprod(counts > 0, dim=1)                # bool -> int64 in torch
        smooth = torch.cumsum(x, dim=1)                         # float: already right
        return seq_index, running, alive, smooth


def _inputs():
    gen = torch.Generator().manual_seed(0)
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4]], dtype=torch.int64)
    counts = torch.randint(0, 5, (1, 12), generator=gen, dtype=torch.int32)
    x = torch.randn(1, 12, generator=gen)
    return position_ids, counts, x


def _scans(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (_CUMSUM, _CUMPROD)]


def _run(gm):
    return get_pass("legalize_cumsum_dtype")().run("fx", gm, PassContext(selects=make_selector("fx")))


def _tvm_outputs(gm, args):
    import tvm
    from tvm.relax.frontend.torch import from_exported_program

    mod = from_exported_program(torch.export.export(gm, args))
    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    out = tvm.relax.VirtualMachine(ex, tvm.cpu())["main"](*[tvm.runtime.tensor(a.numpy()) for a in args])
    return [o.numpy() for o in out]


def test_before_after_and_torch_numerics():
    args = _inputs()
    module = _Scans().eval()
    reference = module(*args)
    gm = torch.export.export(module, args).module()
    assert [n.kwargs.get("dtype") for n in _scans(gm)] == [None, None, None, None]

    result = _run(gm)

    assert result.changed and result.summary == "made 3 integer scan(s) int64"
    dtypes = [(n.target, n.kwargs.get("dtype")) for n in _scans(gm)]
    assert dtypes == [(_CUMSUM, torch.int64), (_CUMSUM, torch.int64), (_CUMPROD, torch.int64), (_CUMSUM, None)]
    after = gm(*args)
    for got, want in zip(after, reference):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert reference[0].tolist() == [[0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]]  # three packed sequences

    # a second run finds nothing left to do
    again = _run(gm)
    assert not again.changed and again.summary == "made 0 integer scan(s) int64"


def test_tvm_builds_and_matches_only_after_legalization():
    args = _inputs()
    module = _Scans().eval()
    reference = [r.numpy() for r in module(*args)]

    before = torch.export.export(module, args).module()
    # TVM 0.27 keeps the bool type through its cumsum and LLVM codegen cannot add bools. If this starts to
    # pass, TVM learned torch's promotion rule and the pass may no longer be needed.
    with pytest.raises(Exception, match="MatchesCode"):
        _tvm_outputs(before, args)

    after = torch.export.export(module, args).module()
    _run(after)
    outputs = _tvm_outputs(after, args)
    for got, want in zip(outputs, reference):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
