"""Relax-level pattern fusion: the profitable patterns TVM's automatic FuseOps leaves in separate kernels.

FuseOps groups an "anchor" op (conv2d, matmul, a reduction) with the elementwise ops after it, and injective
ops into their readers, but never two anchors, and it does not move an explicit ``pad`` into the convolution
that reads it. Exported PyTorch models are full of such pairs: transformers' MobileNetV2 pads every
convolution's input explicitly (TensorFlow "same" padding), and every classifier flattens before its dense
layer. :func:`fuse_patterns` rewrites or groups them with dataflow patterns (:mod:`tvm.relax.dpl`), so that
LegalizeOps / FuseOps / FuseTIR produce fewer, bigger kernels:

``fold_pad_conv2d`` (a rewrite)
    ``conv2d(pad(x, zeros on H/W), w)`` → ``conv2d(x, w)`` with the pad added to the convolution's own
    padding. The pad kernel (or the pad that FuseOps glued onto the *previous* kernel, which then writes a
    larger tensor) disappears; the convolution pads inside its input packing as it does anyway.
``flatten_dense`` (a fusion)
    ``add(matmul(reshape(x), W), b)`` and ``matmul(reshape(x), W)`` with a 2-D ``W``: the flatten joins the
    dense kernel, which reads ``x`` with the reshape's index map instead of a flattened copy.
``conv2d_pool`` (a fusion, off by default)
    ``max_pool2d | avg_pool2d`` of ``conv2d`` followed by up to 8 elementwise ops (bias, decomposed batch
    norm, activation): the pooling reads the convolution's output in the same kernel. Off by default because
    aglmc's CPU schedule rules take a kernel with one reduction (``targets/cpu/rules/conv2d.py``): a
    conv+pool kernel has two and falls back to the generic schedule, which is slower than the two kernels it
    replaces. Turn it on when a rule schedules the pooling epilogue.

Measured (``tests/test_fusion_relax.py``; kernels = PrimFuncs after FuseOps/FuseTIR): the digits CNN 6 → 5
(4 with ``conv2d_pool``), transformers' MobileNetV2 52 → 32, outputs equal within 1e-5.

Every candidate site is reported: ``applied at SITE`` or ``declined at SITE: reason`` (:class:`FusionReport`),
so a build can explain why a pattern near-missed.

Ordering: run after ``DecomposeOpsForInference`` (batch norms as elementwise ops) and before ``LegalizeOps``;
the fused functions carry ``Primitive`` and are turned into one PrimFunc each by ``FuseTIR``. Example::

    mod = relax.transform.DecomposeOpsForInference()(mod)
    mod, report = fuse_patterns(mod)
    print("\\n".join(report.lines()))
    mod = tvm.transform.Sequential(cpu_generic.legalize_passes(target))(mod)   # LegalizeOps ... FuseTIR
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, rewrite_call, wildcard
from tvm.relax.transform import FusionPattern

from aglmc.errors import TargetError

#: the rules :func:`fuse_patterns` applies unless told otherwise, in the order they run
DEFAULT_RULES: Tuple[str, ...] = ("fold_pad_conv2d", "flatten_dense")
#: every rule by name
RULES: Tuple[str, ...] = ("fold_pad_conv2d", "flatten_dense", "conv2d_pool")

_MAX_EPILOGUE = 8
_UNARY = ("relax.nn.relu", "relax.nn.silu", "relax.nn.gelu", "relax.sigmoid", "relax.tanh")
_BINARY = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")
_POOLS = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d")
_SPATIAL = {"NCHW": (2, 3), "NHWC": (1, 2)}


@dataclass(frozen=True)
class Site:
    """One candidate site of one rule: where it is and whether the rule applied there (and if not, why)."""

    rule: str
    where: str
    applied: bool
    reason: str = ""

    def line(self) -> str:
        return f"{self.rule}: " + (f"applied at {self.where}" if self.applied
                                   else f"declined at {self.where}: {self.reason}")


@dataclass
class FusionReport:
    """What :func:`fuse_patterns` did, per candidate site, in the order the rules ran."""

    sites: List[Site] = field(default_factory=list)

    def lines(self) -> List[str]:
        return [s.line() for s in self.sites]

    def applied(self, rule: Optional[str] = None) -> int:
        return sum(s.applied for s in self.sites if rule is None or s.rule == rule)

    def declined(self, rule: Optional[str] = None) -> int:
        return sum(not s.applied for s in self.sites if rule is None or s.rule == rule)

    def summary(self) -> str:
        rules = [r for r in RULES if any(s.rule == r for s in self.sites)]
        parts = [f"{r} {self.applied(r)} applied / {self.declined(r)} declined" for r in rules]
        return "; ".join(parts) or "no candidate sites"

    def __str__(self) -> str:
        return "\n".join([self.summary()] + self.lines())


def fuse_patterns(mod: tvm.IRModule, rules: Sequence[str] = DEFAULT_RULES) -> Tuple[tvm.IRModule, FusionReport]:
    """Apply the pattern ``rules`` (names from :data:`RULES`) to every Relax function of ``mod``.

    Returns the new module and the per-site report. The input module is not modified.
    """
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise TargetError(f"unknown fusion rule(s) {', '.join(unknown)}", hint=f"known rules: {', '.join(RULES)}")
    report = FusionReport()
    mod = tvm.transform.Sequential([relax.transform.CanonicalizeBindings(),
                                    relax.transform.DeadCodeElimination()])(mod)
    if "fold_pad_conv2d" in rules:
        mod = _fold_pad_conv2d(mod, report)
    fusions = [r for r in ("flatten_dense", "conv2d_pool") if r in rules]
    if fusions:
        mod = _fuse(mod, fusions, report)
    return mod, report


@tvm.transform.module_pass(opt_level=0, name="AglmcFusePatterns")
class FusePatterns:
    """:func:`fuse_patterns` as a module pass for a ``Sequential`` pipeline; ``report`` holds the last run's."""

    def __init__(self, rules: Sequence[str] = DEFAULT_RULES):
        self.rules = tuple(rules)
        self.report = FusionReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        mod, self.report = fuse_patterns(mod, self.rules)
        return mod


def count_kernels(mod: tvm.IRModule) -> int:
    """The number of PrimFuncs ``mod`` becomes after TVM's CPU legalization and fusion (``LegalizeOps``,
    ``AnnotateTIROpPattern``, ``FoldConstant``, ``FuseOps``, ``FuseTIR``), run on a copy."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    seq = [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()]
    seq += cpu_generic.legalize_passes(tvm.target.Target("llvm"))
    lowered = tvm.transform.Sequential(seq)(mod)
    return sum(isinstance(f, tvm.tirx.PrimFunc) for _, f in lowered.functions_items())


# ---- fold_pad_conv2d --------------------------------------------------------------------------------------
def _fold_pad_conv2d(mod: tvm.IRModule, report: FusionReport) -> tvm.IRModule:
    mod = mod.clone() if hasattr(mod, "clone") else tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    x, w = wildcard(), wildcard()
    pad = is_op("relax.nn.pad")(x)
    conv = is_op("relax.nn.conv2d")(pad, w)

    for gvar, func in list(mod.functions_items()):
        if not isinstance(func, relax.Function):
            continue
        names = _bound_names(func)

        def rewriter(expr, matches):
            site = _describe(names, matches[pad])
            reason = _pad_check(matches[pad], matches[conv])
            if reason:
                report.sites.append(Site("fold_pad_conv2d", site, False, reason))
                return expr
            report.sites.append(Site("fold_pad_conv2d", site, True))
            a, c = matches[pad].attrs, matches[conv].attrs
            widths = [int(v) for v in a.pad_width]
            h, wd = _SPATIAL[str(c.data_layout)]
            top, left, bottom, right = (int(v) for v in c.padding)
            padding = [top + widths[2 * h], left + widths[2 * wd], bottom + widths[2 * h + 1],
                       right + widths[2 * wd + 1]]
            return relax.op.nn.conv2d(matches[x], matches[w], c.strides, padding, c.dilation, c.groups,
                                      c.data_layout, c.kernel_layout, c.out_layout, c.out_dtype)

        new = rewrite_call(conv, rewriter, func)
        for call, name in _calls(func, "relax.nn.pad"):  # pads no convolution reads: say why they stay
            if not any(s.rule == "fold_pad_conv2d" and s.where == _describe(names, call) for s in report.sites):
                readers = sorted({_op_name(u) for u in _readers(func, name)}) or ["nothing"]
                report.sites.append(Site("fold_pad_conv2d", _describe(names, call), False,
                                         f"read by {', '.join(readers)}, not a conv2d"))
        mod[gvar] = new
    return relax.transform.DeadCodeElimination()(mod)


def _pad_check(pad_call, conv_call) -> Optional[str]:
    a, c = pad_call.attrs, conv_call.attrs
    if str(a.pad_mode) != "constant":
        return f"pad mode is {a.pad_mode}, not constant"
    if float(a.pad_value) != 0.0:
        return f"pads with {float(a.pad_value)}, not 0 (a convolution pads with zeros)"
    layout = str(c.data_layout)
    if layout not in _SPATIAL:
        return f"convolution layout {layout}"
    widths = [int(v) for v in a.pad_width]
    spatial = {2 * i for i in _SPATIAL[layout]} | {2 * i + 1 for i in _SPATIAL[layout]}
    if any(wv for i, wv in enumerate(widths) if i not in spatial):
        return f"pads the batch or channel axis (pad_width {widths})"
    if any(wv < 0 for wv in widths):
        return f"negative padding (a crop): {widths}"
    return None


# ---- fusions ------------------------------------------------------------------------------------------
def _fuse(mod: tvm.IRModule, rules: Sequence[str], report: FusionReport) -> tvm.IRModule:
    outcomes: Dict[Tuple[str, str], Optional[str]] = {}  # (rule, site) -> None (applied) or the reason

    def checker(rule: str, anchor_ops: Tuple[str, ...], check: Callable) -> Callable:
        def run(ctx) -> bool:
            anchor = next((v for v, e in ctx.matched_bindings.items() if _op_name(e) in anchor_ops), None)
            site = _var_site(anchor, ctx.matched_bindings.get(anchor)) if anchor is not None else "?"
            reason = check(ctx)
            if outcomes.get((rule, site), "unset") is not None:  # an applied site stays applied
                outcomes[(rule, site)] = reason
            return reason is None

        return run

    patterns: List[FusionPattern] = []
    if "conv2d_pool" in rules:
        for k in range(_MAX_EPILOGUE, -1, -1):  # longest epilogue first
            patterns.append(FusionPattern(f"aglmc.conv2d_pool{k}", _conv_pool_pattern(k), {},
                                          checker("conv2d_pool", _POOLS, _single_use_chain)))
    if "flatten_dense" in rules:
        dense_bias, dense = _flatten_dense_patterns()
        check = checker("flatten_dense", ("relax.matmul",), _dense_check)
        patterns += [FusionPattern("aglmc.flatten_dense_bias", dense_bias, {}, check),
                     FusionPattern("aglmc.flatten_dense", dense, {}, check)]

    candidates = _candidates(mod, rules)
    fused = relax.transform.FuseOpsByPattern(patterns, bind_constants=False, annotate_codegen=False)(mod)
    for rule, site, near_miss in candidates:
        outcome = outcomes.get((rule, site), near_miss)
        report.sites.append(Site(rule, site, outcome is None, outcome or ""))
    return fused


def _conv_pool_pattern(epilogue: int):
    x = is_op("relax.nn.conv2d")(wildcard(), wildcard())
    for _ in range(epilogue):
        step = None
        for op in _UNARY:
            step = is_op(op)(x) if step is None else step | is_op(op)(x)
        step = step | is_op("relax.clip")(x, wildcard(), wildcard())
        for op in _BINARY:
            step = step | is_op(op)(x, wildcard()) | is_op(op)(wildcard(), x)
        x = step
    pool = None
    for op in _POOLS:
        pool = is_op(op)(x) if pool is None else pool | is_op(op)(x)
    return pool


def _flatten_dense_patterns():
    x, w, b = wildcard(), wildcard(), wildcard()
    matmul = is_op("relax.matmul")(is_op("relax.reshape")(x, wildcard()), w)
    return is_op("relax.add")(matmul, b) | is_op("relax.add")(b, matmul), matmul


def _single_use_chain(ctx) -> Optional[str]:
    """Every value inside the match is read once, by the next op of the match (nothing else needs it)."""
    root = ctx.value_to_bound_var.get(ctx.matched_expr) if hasattr(ctx, "value_to_bound_var") else None
    for var in ctx.matched_bindings:
        if root is not None and var.same_as(root):
            continue
        if _op_name(ctx.matched_bindings[var]) in _POOLS:
            continue
        users = ctx.var_usages.get(var, [])
        if len(users) != 1 or not isinstance(var, relax.DataflowVar):
            return f"{var.name} ({_op_name(ctx.matched_bindings[var])}) is also read outside the pattern"
    return None


def _dense_check(ctx) -> Optional[str]:
    matmul = next(e for e in ctx.matched_bindings.values() if _op_name(e) == "relax.matmul")
    weight = matmul.args[1]
    ndim = getattr(getattr(weight, "ty", None), "ndim", -1)
    if ndim != 2:
        return f"right operand is {ndim}-D, not a 2-D weight (an activation product)"
    for var, expr in ctx.matched_bindings.items():
        if _op_name(expr) != "relax.reshape":
            continue
        if len(ctx.var_usages.get(var, [])) != 1:
            return f"the flattened tensor {var.name} is also read elsewhere"
        # FuseOpsByPattern would lift a symbolic target shape (R.shape([1, n, 64])) into a parameter of the
        # fused function, which LegalizeOps cannot lower (a prefill of dynamic length has one per layer)
        dims = getattr(expr.args[1], "values", None) if len(expr.args) > 1 else None
        if dims is None or any(not isinstance(d, tvm.tirx.IntImm) for d in dims):
            return "the flatten's target shape is symbolic"
    return None


def _candidates(mod: tvm.IRModule, rules: Sequence[str]) -> List[Tuple[str, str, Optional[str]]]:
    """(rule, site, reason it cannot match) of every anchor a rule looks at, in program order; the reason is
    None where the pattern's structure is there (the check then decides)."""
    found = []
    for _, func in mod.functions_items():
        if not isinstance(func, relax.Function) or (func.attrs and "Primitive" in func.attrs):
            continue
        values = _bound_values(func)
        for var, value in values.items():
            op = _op_name(value)
            if "flatten_dense" in rules and op == "relax.matmul":
                source = values.get(value.args[0]) if isinstance(value.args[0], relax.Var) else None
                if _op_name(source) == "relax.reshape":
                    found.append(("flatten_dense", _var_site(var, value), None))
            if "conv2d_pool" in rules and op in _POOLS:
                found.append(("conv2d_pool", _var_site(var, value), _walk_to_conv(values, value)))
    return found


def _walk_to_conv(values, pool_call) -> Optional[str]:
    expr = pool_call.args[0]
    for _ in range(_MAX_EPILOGUE + 1):
        value = values.get(expr) if isinstance(expr, relax.Var) else None
        op = _op_name(value)
        if op == "relax.nn.conv2d":
            return None
        if op not in _UNARY + _BINARY + ("relax.clip",):
            return f"its input comes from {op or 'outside the function'}, not from a conv2d and its epilogue"
        expr = next((a for a in value.args if isinstance(a, relax.Var) and _op_name(values.get(a)) is not None
                     and _op_name(values.get(a)) not in ("relax.expand_dims", "relax.reshape")), value.args[0])
    return f"more than {_MAX_EPILOGUE} elementwise ops between the conv2d and the pooling"


# ---- helpers ------------------------------------------------------------------------------------------
def _op_name(expr) -> Optional[str]:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None


def _bindings(func: relax.Function) -> Iterable:
    body = func.body
    if isinstance(body, relax.SeqExpr):
        for block in body.blocks:
            yield from block.bindings


def _bound_values(func: relax.Function) -> Dict[relax.Var, relax.Expr]:
    return {b.var: b.value for b in _bindings(func) if isinstance(b, relax.VarBinding)}


def _bound_names(func: relax.Function) -> Dict[relax.Expr, str]:
    return {b.value: b.var.name for b in _bindings(func) if isinstance(b, relax.VarBinding)}


def _calls(func: relax.Function, op: str):
    for b in _bindings(func):
        if isinstance(b, relax.VarBinding) and _op_name(b.value) == op:
            yield b.value, b.var


def _readers(func: relax.Function, var: relax.Var):
    for b in _bindings(func):
        if isinstance(b, relax.VarBinding) and isinstance(b.value, relax.Call):
            if any(isinstance(a, relax.Var) and a.same_as(var) for a in b.value.args):
                yield b.value


def _shape(expr) -> str:
    shape = getattr(getattr(expr, "ty", None), "shape", None)  # TVM 0.27 calls struct_info `ty`
    try:
        return "x".join(str(int(d)) for d in getattr(shape, "values", shape))
    except (AttributeError, TypeError, ValueError):
        return "?"


def _describe(names: Dict[relax.Expr, str], call) -> str:
    name = names.get(call, "?")
    return f"{name} = {_op_name(call).removeprefix('relax.')} -> {_shape(call)}"


def _var_site(var, value) -> str:
    return f"{var.name} = {(_op_name(value) or '?').removeprefix('relax.')} -> {_shape(value)}"
