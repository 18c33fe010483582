"""lowrank_svd: replace a weight W (m×n) by two thinner layers from its truncated SVD, W ≈ B·A.

A linear layer ``y = x Wᵀ + b`` becomes ``y = (x Aᵀ) Bᵀ + b`` with A (r×n) and B (m×r), so a layer costs
r(m+n) multiply-accumulates per position instead of mn. Convolutions factor the same way on the flattened
weight ``W (m × c·kh·kw)``: a k×k convolution with r output channels (same stride, padding, dilation) followed
by a 1×1 convolution with the bias; a 1×1 convolution becomes two 1×1 convolutions. With ``W = U Σ Vᵀ``,
``A = Σᵣ^½ Vᵣᵀ`` and ``B = Uᵣ Σᵣ^½`` (the singular values are split evenly, so neither factor's range blows up
in low precision later).

The rank per layer is set by exactly one of ``rank`` (clamped to the layer's full rank), ``rank_ratio`` (a
fraction of the full rank ``min(m, n)``, rounded up) or ``energy`` (the smallest rank that keeps that fraction
of ``Σσ²``), then rounded up to a multiple of ``round_to``. A layer is declined, with the reason in the
details, when the factors would not save MACs (``r(m+n) ≥ mn``), when it is grouped (depthwise) or when its
weight is not a constant.

**Data-aware SVD** (``data = calib``): plain SVD minimises ``‖W − W'‖``, which treats every input feature as
equally loud. Real activations are not (a few LayerNorm output channels of a transformer are 10-100× larger
than the rest). With calibration data the pass collects each layer's input Gram matrix ``C = E[x xᵀ]`` by
running the graph, and minimises the output error ``E‖(W − W')x‖²`` instead:

- ``weighting = whiten`` (default, as SVD-LLM): ``W' = [W S]ᵣ S⁻¹`` with ``S = C^½``, the optimal rank-r
  approximation of the layer's outputs on the calibration data;
- ``weighting = diag`` (as ASVD): the same with ``S = diag(√C_jj)``, a per-input-feature scale.

``C`` is damped by ``1e-3 · mean(diag C)`` so directions the data never excites stay well conditioned. The
statistics are gathered once, on the graph as it was before this pass. Kept energy is then reported for the
weighted spectrum (the share of the layer's output energy on the calibration data).

Example::

    pass lowrank_svd on linear in "encoder.layer.*.intermediate.dense" { rank_ratio = 0.5 }
    pass lowrank_svd on conv2d { energy = 0.95  round_to = 8  data = calib }

Requires: nothing. Guarantees: nothing (the graph is still FX / ONNX of the same ops).
FX sites: ``aten.linear`` and ``aten.conv2d`` nodes in the selector. ONNX sites: ``Gemm``, ``MatMul`` with a
constant 2-D right operand (its bias ``Add`` stays where it is), ``Conv``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from aglmc.dsl.params import Param
from aglmc.errors import PassError
from aglmc.passes.base import Pass, PassContext, PassResult, register_pass
from aglmc.passes.fx_utils import add_constant, finish, get_constant
from aglmc.passes.onnx_utils import constant_value
from aglmc.passes.select import fx_op_kind, fx_op_name, fx_path

_RANK_PARAMS = ("rank", "rank_ratio", "energy")
_DAMPING = 1e-3
_FX_LINEAR = torch.ops.aten.linear.default
_FX_CONV = torch.ops.aten.conv2d.default


@register_pass
class LowRankSVD(Pass):
    """Factor linear / conv weights into two thinner layers by truncated (optionally data-aware) SVD."""

    name = "lowrank_svd"
    graph_kinds = ("fx", "onnx")
    params = (
        Param("rank", "int", default=None, min=1, doc="the rank of every factored layer (clamped to its full rank)"),
        Param("rank_ratio", "float", default=None, min=0, max=1, min_open=True,
              doc="rank as a fraction of each layer's full rank min(m, n)"),
        Param("energy", "float", default=None, min=0, max=1, min_open=True,
              doc="keep the smallest rank whose singular values hold this fraction of the spectral energy"),
        Param("round_to", "int", default=1, min=1, doc="round each rank up to a multiple of this (8 suits SIMD)"),
        Param("data", "dataset", default=None,
              doc="calibration data: weigh the SVD by each layer's input activations (data-aware SVD)"),
        Param("weighting", "enum", default="whiten", choices=("whiten", "diag"),
              doc="with data: whiten by E[x xᵀ]^½ (SVD-LLM) or scale input features by √E[x²] (ASVD)"),
        Param("samples", "int", default=128, min=1, doc="at most this many calibration samples are used"),
        Param("token_mask", "str", default=None,
              doc="a model input [batch, seq] (e.g. attention_mask) whose zeros mark padding tokens: their "
                  "activations are left out of the statistics"),
        Param("require_saving", "bool", default=True,
              doc="decline layers whose factors cost at least as many MACs as W (false: factor anyway)"),
    )

    @classmethod
    def validate(cls, params) -> Optional[str]:
        given = [k for k in _RANK_PARAMS if params.get(k) is not None]
        if len(given) != 1:
            got = f"got {' and '.join(given)}" if given else "got none"
            return (f"needs exactly one of rank, rank_ratio, energy ({got}), e.g. `{{ rank_ratio = 0.5 }}`, "
                    "`{ energy = 0.95 }` or `{ rank = 64 }`")
        return None

    # ---- FX ---------------------------------------------------------------------------------------------
    def run_fx(self, gm, ctx: PassContext) -> PassResult:
        report = _Report()
        sites = []
        for node in list(gm.graph.nodes):
            if node.op != "call_function" or fx_op_kind(node) not in ("linear", "conv2d", "depthwise_conv2d"):
                continue
            if not ctx.selects(node):
                continue
            site = fx_path(node) or node.name
            report.visit(site)
            reason, weight = self._fx_site(gm, node)
            if reason:
                report.declined(site, reason)
            else:
                sites.append((node, site, weight))
        grams = self._fx_statistics(gm, [n for n, _, _ in sites], ctx) if self.options["data"] else {}
        for node, site, weight in sites:
            layer = _Layer.of_fx(node, weight)
            factors = _factorize(layer.matrix(), grams.get(node), self.options)
            reason = self._unprofitable(layer, factors)
            if reason:
                report.declined(site, reason)
                continue
            _rewrite_fx(gm, node, layer, factors)
            report.applied(site, layer, factors, bool(grams))
        if report.any_applied:
            finish(gm)
        return report.result()

    def _fx_site(self, gm, node) -> Tuple[Optional[str], Optional[torch.Tensor]]:
        op = fx_op_name(node)
        if node.target not in (_FX_LINEAR, _FX_CONV):
            return f"{op} is not handled (only aten.linear and aten.conv2d)", None
        weight = get_constant(gm, node.args[1])
        if weight is None:
            return "weight is not a constant", None
        if not weight.is_floating_point():
            return f"weight is {weight.dtype}, not floating point", None
        if node.target is _FX_CONV:
            groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
            if groups != 1:
                return f"grouped convolution (groups={groups}) has no single weight matrix to factor", None
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        if bias is not None and get_constant(gm, bias) is None:
            return "bias is not a constant", None
        return None, weight

    def _fx_statistics(self, gm, nodes, ctx: PassContext) -> Dict[object, "_Gram"]:
        """Run the graph on the calibration data and accumulate each site's input Gram matrix."""
        grams = {node: _Gram(_Layer.of_fx(node, get_constant(gm, node.args[1]))) for node in nodes}
        by_input: Dict[object, List[object]] = {}
        for node in nodes:
            by_input.setdefault(node.args[0], []).append(node)

        class Recorder(torch.fx.Interpreter):
            def run_node(self, n):
                value = super().run_node(n)
                for site in by_input.get(n, ()):
                    grams[site].add(value)
                return value

        recorder = Recorder(gm)
        with torch.no_grad():
            for batch in _calibration_batches(ctx, self.options["data"], self.options["samples"]):
                for gram in grams.values():
                    gram.rows = self._token_rows(ctx, batch)
                recorder.run(*[torch.from_numpy(np.ascontiguousarray(a)) for a in batch])
        return grams

    # ---- ONNX -------------------------------------------------------------------------------------------
    def run_onnx(self, graph, ctx: PassContext) -> PassResult:
        report = _Report()
        sites = []
        for node in [n for n in graph.nodes if n.op in ("Gemm", "MatMul", "Conv")]:
            if not ctx.selects(node):
                continue
            site = node.name or node.outputs[0].name
            report.visit(site)
            reason, layer = _onnx_layer(node)
            if not reason and self.options["data"] and layer.kind == "conv" and layer.weight.ndim != 4:
                reason = "data-aware weighting handles 2-D convolutions only"
            if reason:
                report.declined(site, reason)
            else:
                sites.append((node, site, layer))
        grams = self._onnx_statistics(graph, sites, ctx) if self.options["data"] else {}
        for node, site, layer in sites:
            factors = _factorize(layer.matrix(), grams.get(id(node)), self.options)
            reason = self._unprofitable(layer, factors)
            if reason:
                report.declined(site, reason)
                continue
            graph.nodes.extend(_rewrite_onnx(node, layer, factors))
            report.applied(site, layer, factors, bool(grams))
        if report.any_applied:
            graph.cleanup().toposort()
        return report.result()

    def _onnx_statistics(self, graph, sites, ctx: PassContext) -> Dict[int, "_Gram"]:
        import onnx_graphsurgeon as gs
        import onnxruntime as ort

        probe = graph.copy()
        tensors = probe.tensors()
        names = sorted({node.inputs[0].name for node, _, _ in sites})
        for name in names:
            if tensors[name].dtype is None:
                tensors[name].dtype = np.float32
        probe.outputs = [tensors[name] for name in names]
        probe.cleanup()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(gs.export_onnx(probe).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        inputs = [t.name for t in probe.inputs]
        grams = {id(node): _Gram(layer) for node, _, layer in sites}
        for batch in _calibration_batches(ctx, self.options["data"], self.options["samples"]):
            feed = dict(zip(ctx.example_inputs, batch))
            values = dict(zip(names, session.run(names, {k: feed[k] for k in inputs})))
            for node, _, _ in sites:
                grams[id(node)].rows = self._token_rows(ctx, batch)
                grams[id(node)].add(torch.from_numpy(values[node.inputs[0].name]))
        return grams

    # ---- shared -----------------------------------------------------------------------------------------
    def _token_rows(self, ctx: PassContext, batch) -> Optional[np.ndarray]:
        """The ``token_mask`` input of this batch as booleans [batch, seq], or None."""
        name = self.options.get("token_mask")
        if name is None:
            return None
        names = list(ctx.example_inputs)
        if name not in names:
            raise PassError(f"pass 'lowrank_svd': token_mask '{name}' is not a model input (inputs: "
                            f"{', '.join(names)})")
        mask = np.asarray(batch[names.index(name)])
        if mask.ndim != 2:
            raise PassError(f"pass 'lowrank_svd': token_mask '{name}' has shape {mask.shape}, not [batch, seq]")
        return mask != 0

    def _unprofitable(self, layer: "_Layer", factors: "_Factors") -> Optional[str]:
        r, m, n = factors.rank, layer.m, layer.n
        if self.options["require_saving"] and r * (m + n) >= m * n:
            return (f"rank {r} of {factors.full_rank} costs r(m+n) = {r * (m + n):,} MACs per position, not less "
                    f"than mn = {m * n:,}: no saving")
        return None


# ---- the factorization ----------------------------------------------------------------------------------
@dataclass
class _Layer:
    """A weight seen as a matrix: ``m`` outputs, ``n = c·kh·kw`` inputs; conv layers keep their kernel shape."""

    weight: np.ndarray  # as stored: FX [m, n] / [m, c, kh, kw]; ONNX Gemm/MatMul already turned into [m, n]
    kind: str  # "linear" or "conv"
    conv: Optional[dict] = None  # stride, padding, dilation (for the statistics)

    @property
    def m(self) -> int:
        return self.weight.shape[0]

    @property
    def n(self) -> int:
        return int(np.prod(self.weight.shape[1:]))

    def matrix(self) -> np.ndarray:
        return self.weight.reshape(self.m, self.n).astype(np.float64)

    @staticmethod
    def of_fx(node, weight: torch.Tensor) -> "_Layer":
        if node.target is _FX_LINEAR:
            return _Layer(weight.detach().cpu().numpy(), "linear")
        args = list(node.args) + [None] * (7 - len(node.args))
        conv = {"stride": args[3] or [1, 1], "padding": args[4] if args[4] is not None else [0, 0],
                "dilation": args[5] or [1, 1]}
        return _Layer(weight.detach().cpu().numpy(), "conv", conv)


@dataclass
class _Factors:
    a: np.ndarray  # r × n: the first (input-side) layer
    b: np.ndarray  # m × r: the second layer, which keeps the bias
    rank: int
    full_rank: int
    energy: float


def _choose_rank(sigma: np.ndarray, options) -> int:
    full = len(sigma)
    if options.get("rank") is not None:
        r = min(int(options["rank"]), full)
    elif options.get("rank_ratio") is not None:
        r = math.ceil(options["rank_ratio"] * full - 1e-9)
    else:
        power = sigma.astype(np.float64) ** 2
        total = power.sum()
        if total <= 0:
            r = 1
        else:
            cumulative = np.cumsum(power) / total
            r = int(np.searchsorted(cumulative, options["energy"] - 1e-12)) + 1
    step = int(options.get("round_to") or 1)
    r = -(-max(r, 1) // step) * step
    return min(r, full)


def _factorize(w: np.ndarray, gram: Optional["_Gram"], options) -> _Factors:
    """A, B with ``B @ A ≈ w`` (float64), weighted by the input statistics in ``gram`` when given."""
    if gram is None or gram.count == 0:
        s, s_inv = None, None
    else:
        s, s_inv = gram.weighting(options.get("weighting", "whiten"))
    target = w if s is None else w @ s
    u, sigma, vt = np.linalg.svd(target, full_matrices=False)
    r = _choose_rank(sigma, options)
    root = np.sqrt(sigma[:r])
    a = root[:, None] * vt[:r]
    if s_inv is not None:
        a = a @ s_inv
    b = u[:, :r] * root[None, :]
    power = sigma ** 2
    energy = float(power[:r].sum() / power.sum()) if power.sum() > 0 else 1.0
    return _Factors(a, b, r, len(sigma), energy)


class _Gram:
    """Accumulates ``E[x xᵀ]`` of a layer's input rows (conv: its im2col patches)."""

    def __init__(self, layer: _Layer):
        self.layer = layer
        self.sum = np.zeros((layer.n, layer.n), np.float64)
        self.count = 0
        #: [batch, seq] booleans of the current batch: rows of a [batch, seq, n] input to keep (token_mask)
        self.rows: Optional[np.ndarray] = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        if self.layer.kind == "linear":
            if self.rows is not None and x.dim() == 3 and tuple(x.shape[:2]) == self.rows.shape:
                x = x[torch.from_numpy(self.rows)]
            rows = x.reshape(-1, x.shape[-1])
        else:
            rows = _patches(x, self.layer)
        self.sum += (rows.T @ rows).numpy()
        self.count += rows.shape[0]

    def weighting(self, how: str) -> Tuple[np.ndarray, np.ndarray]:
        """``S`` and ``S⁻¹`` of the chosen weighting (see the module docstring)."""
        c = self.sum / self.count
        damp = _DAMPING * max(float(np.mean(np.diag(c))), 1e-12)
        if how == "diag":
            d = np.sqrt(np.diag(c) + damp)
            return np.diag(d), np.diag(1.0 / d)
        lam, q = np.linalg.eigh(c + damp * np.eye(len(c)))
        lam = np.maximum(lam, damp)
        return (q * np.sqrt(lam)) @ q.T, (q / np.sqrt(lam)) @ q.T


def _patches(x: torch.Tensor, layer: _Layer) -> torch.Tensor:
    """The im2col rows ``(N·L, c·kh·kw)`` a convolution multiplies its flattened weight with."""
    conv = layer.conv
    kernel = tuple(layer.weight.shape[2:])
    padding = conv["padding"]
    if len(padding) == 4:  # ONNX pads [top, left, bottom, right]
        top, left, bottom, right = padding
        x = torch.nn.functional.pad(x, (left, right, top, bottom))
        padding = [0, 0]
    cols = torch.nn.functional.unfold(x, kernel, dilation=tuple(conv["dilation"]), padding=tuple(padding),
                                      stride=tuple(conv["stride"]))
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _calibration_batches(ctx: PassContext, name: str, samples: int) -> Iterator[List[np.ndarray]]:
    """The data set's samples in batches of the model's batch size, in model input order."""
    if name not in ctx.datasets:
        raise PassError(f"pass 'lowrank_svd': no data set '{name}' was loaded")
    data = ctx.datasets[name]
    names = list(ctx.example_inputs)
    missing = [k for k in names if k not in data.inputs]
    if missing:
        raise PassError(f"pass 'lowrank_svd': data set '{name}' has no array for input(s) {', '.join(missing)}")
    first = ctx.example_inputs[names[0]]
    batch = first.shape[0] if np.ndim(first) else 1
    count = min(samples, len(data.inputs[names[0]]))
    if count < batch:
        raise PassError(f"pass 'lowrank_svd': data set '{name}' has {count} sample(s), fewer than one batch of "
                        f"{batch}")
    for start in range(0, count - batch + 1, batch):
        yield [np.asarray(data.inputs[k][start:start + batch]).astype(ctx.example_inputs[k].dtype, copy=False)
               for k in names]


# ---- rewriting ------------------------------------------------------------------------------------------
_KEPT_META = ("nn_module_stack", "stack_trace", "source_fn_stack", "torch_fn")


def _rewrite_fx(gm, node, layer: _Layer, f: _Factors) -> None:
    graph = gm.graph
    dtype = get_constant(gm, node.args[1]).dtype
    hint = str(node.args[1].target)
    a = torch.from_numpy(f.a).to(dtype)
    b = torch.from_numpy(f.b).to(dtype)
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    if layer.kind == "linear":
        a_node = add_constant(gm, a, f"{hint}_lowrank_a", before=node)
        b_node = add_constant(gm, b, f"{hint}_lowrank_b", before=node)
        with graph.inserting_before(node):
            first = graph.call_function(_FX_LINEAR, (node.args[0], a_node))
            second = graph.call_function(_FX_LINEAR, (first, b_node, bias))
    else:
        kernel = tuple(layer.weight.shape[2:])
        a_node = add_constant(gm, a.reshape((f.rank, -1) + kernel), f"{hint}_lowrank_a", before=node)
        b_node = add_constant(gm, b.reshape(layer.m, f.rank, 1, 1), f"{hint}_lowrank_b", before=node)
        args = list(node.args) + [None] * (7 - len(node.args))
        stride, padding, dilation = args[3] or [1, 1], args[4] if args[4] is not None else [0, 0], args[5] or [1, 1]
        with graph.inserting_before(node):
            first = graph.call_function(node.target, (node.args[0], a_node, None, stride, padding, dilation, 1))
            second = graph.call_function(_FX_CONV, (first, b_node, bias))
    for new in (first, second):
        new.meta.update({k: node.meta[k] for k in _KEPT_META if k in node.meta})
    _propagate_val(first)
    _propagate_val(second)
    node.replace_all_uses_with(second)
    graph.erase_node(node)


def _propagate_val(node) -> None:
    """Give a new node the fake ``meta['val']`` later FX passes read shapes from (best effort)."""
    from torch._guards import detect_fake_mode

    def val(a):
        if isinstance(a, torch.fx.Node):
            if "val" in a.meta:
                return a.meta["val"]
            if a.op == "get_attr":
                return get_constant(a.graph.owning_module, a)
            raise KeyError(a.name)
        return a

    try:
        args = [val(a) for a in node.args]
        fake = detect_fake_mode([a for a in args if isinstance(a, torch.Tensor)])
        if fake is None:
            return
        with fake:
            args = [fake.from_tensor(a, static_shapes=True) if isinstance(a, torch.Tensor) and not isinstance(
                a, torch._subclasses.FakeTensor) else a for a in args]
            node.meta["val"] = node.target(*args)
    except Exception:  # shapes are a convenience for later passes; the graph itself is right without them
        node.meta.pop("val", None)


def _onnx_layer(node) -> Tuple[Optional[str], Optional[_Layer]]:
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            return "Gemm with transA=1", None
        w = constant_value(node.inputs[1])
        if w is None:
            return "weight is not a constant", None
        w = w if node.attrs.get("transB", 0) else w.T
        return None, _Layer(np.ascontiguousarray(w * node.attrs.get("alpha", 1.0)), "linear")
    if node.op == "MatMul":
        if constant_value(node.inputs[0]) is not None:
            return "the constant is the left operand (W·x), not x·W", None
        w = constant_value(node.inputs[1])
        if w is None:
            return "right operand is not a constant (an activation product, e.g. attention)", None
        if w.ndim != 2:
            return f"weight has {w.ndim} dimensions, not 2", None
        return None, _Layer(np.ascontiguousarray(w.T), "linear")
    w = constant_value(node.inputs[1])
    if w is None:
        return "weight is not a constant", None
    if node.attrs.get("group", 1) != 1:
        return f"grouped convolution (group={node.attrs['group']}) has no single weight matrix to factor", None
    if len(node.inputs) > 2 and constant_value(node.inputs[2]) is None:
        return "bias is not a constant", None
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return f"auto_pad={node.attrs['auto_pad']} (give explicit pads)", None
    nd = w.ndim - 2
    pads = list(node.attrs.get("pads", [0] * (2 * nd)))
    conv = {"stride": list(node.attrs.get("strides", [1] * nd)),
            "dilation": list(node.attrs.get("dilations", [1] * nd)),
            "padding": pads if nd == 2 else [0] * nd}
    return None, _Layer(w, "conv", conv)


def _rewrite_onnx(node, layer: _Layer, f: _Factors) -> list:
    """The two nodes that replace ``node`` (which is disconnected; the caller adds them to the graph)."""
    import onnx_graphsurgeon as gs

    base = node.name or node.outputs[0].name
    out = node.outputs[0]
    dtype = layer.weight.dtype
    mid = gs.Variable(f"{base}_lowrank", dtype=out.dtype)
    x = node.inputs[0]
    if node.op == "Gemm":
        first = gs.Node("Gemm", f"{base}/lowrank_a", attrs={"transB": 1},
                        inputs=[x, gs.Constant(f"{base}_lowrank_A", f.a.astype(dtype))], outputs=[mid])
        rest = [gs.Constant(f"{base}_lowrank_B", f.b.astype(dtype))] + list(node.inputs[2:3])
        attrs = {"transB": 1, "beta": node.attrs.get("beta", 1.0)}
        second = gs.Node("Gemm", f"{base}/lowrank_b", attrs=attrs, inputs=[mid] + rest, outputs=[out])
    elif node.op == "MatMul":
        first = gs.Node("MatMul", f"{base}/lowrank_a",
                        inputs=[x, gs.Constant(f"{base}_lowrank_A", np.ascontiguousarray(f.a.T).astype(dtype))],
                        outputs=[mid])
        second = gs.Node("MatMul", f"{base}/lowrank_b",
                         inputs=[mid, gs.Constant(f"{base}_lowrank_B", np.ascontiguousarray(f.b.T).astype(dtype))],
                         outputs=[out])
    else:
        kernel = tuple(layer.weight.shape[2:])
        attrs = {k: v for k, v in node.attrs.items() if k != "group"}
        attrs["kernel_shape"] = list(kernel)
        first = gs.Node("Conv", f"{base}/lowrank_a", attrs=attrs,
                        inputs=[x, gs.Constant(f"{base}_lowrank_A", f.a.reshape((f.rank, -1) + kernel).astype(dtype))],
                        outputs=[mid])
        ones = [1] * len(kernel)
        rest = [gs.Constant(f"{base}_lowrank_B", f.b.reshape((layer.m, f.rank) + tuple(ones)).astype(dtype))]
        second = gs.Node("Conv", f"{base}/lowrank_b", attrs={"kernel_shape": ones},
                         inputs=[mid] + rest + list(node.inputs[2:3]), outputs=[out])
    node.outputs.clear()
    node.inputs.clear()
    return [first, second]


# ---- the report -----------------------------------------------------------------------------------------
class _Report:
    def __init__(self):
        self.lines: List[str] = []
        self.order: Dict[str, int] = {}
        self.params_before = 0
        self.params_after = 0
        self.count_applied = 0
        self.count_declined = 0

    @property
    def any_applied(self) -> bool:
        return self.count_applied > 0

    def declined(self, site: str, reason: str) -> None:
        self.count_declined += 1
        self._add(site, f"declined at {site}: {reason}")

    def _add(self, site: str, line: str) -> None:
        self.order.setdefault(site, len(self.order))
        self.lines.append(line)

    def visit(self, site: str) -> None:
        """Note ``site`` in graph order, so the details list sites as they appear in the graph."""
        self.order.setdefault(site, len(self.order))

    def applied(self, site: str, layer: _Layer, f: _Factors, weighted: bool) -> None:
        before, after = layer.m * layer.n, f.rank * (layer.m + layer.n)
        self.params_before += before
        self.params_after += after
        self.count_applied += 1
        shape = "x".join(str(d) for d in layer.weight.shape)
        self._add(site,
            f"applied at {site}: {layer.kind} {shape} -> rank {f.rank} of {f.full_rank}, kept energy "
            f"{f.energy:.4f}{' (activation-weighted)' if weighted else ''}, weights {before:,} -> {after:,} "
            f"({100.0 * (after - before) / before:+.1f}%)")

    def result(self) -> PassResult:
        summary = f"factored {self.count_applied} layer(s)"
        if self.count_applied:
            summary += (f": weights {self.params_before:,} -> {self.params_after:,} "
                        f"({100.0 * (self.params_after - self.params_before) / self.params_before:+.1f}%)")
        if self.count_declined:
            summary += f", declined {self.count_declined}"
        site_of = lambda line: line.split(" at ", 1)[1].split(": ", 1)[0]  # noqa: E731
        details = sorted(self.lines, key=lambda line: self.order.get(site_of(line), len(self.order)))
        return PassResult(changed=self.count_applied > 0, summary=summary, details=details)
