"""Quantization specs: *what* to quantize, frozen and checked when made (policy apart from mechanism).

A :class:`QuantSpec` says how one tensor is mapped to integers: the integer type, symmetric or affine, one
scale per tensor or per channel (or per group of a channel), and how its range is found from data. A
:class:`QuantScheme` pairs a weight spec with an activation spec (or none: weight-only) and says whether the
activations are quantized ahead of time (static) or at run time (dynamic). The quantization passes
(``quantize_static``, ``quantize_dynamic``, ``quantize_weights``) build their scheme from their parameters and
insert Q/DQ from it; they never decide numerics themselves.

A target states which schemes it runs fast (:data:`TARGET_SCHEMES`), and :func:`check_scheme` holds a scheme
against it with a message that names the offending choice and what to write instead::

    >>> check_scheme(QuantScheme(weights=QuantSpec("uint8", axis=0), activations=QuantSpec("int8")), "arm")
    Traceback (most recent call last):
    ...
    aglmc.errors.PassError: target 'arm' has no fast kernel for this scheme: weights must be symmetric int8 ...

Mapping (ONNX QuantizeLinear / PyTorch quantize_per_tensor semantics)::

    q = clamp(round(x / scale) + zero_point, qmin, qmax)        x' = (q - zero_point) * scale
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import FrozenSet, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from aglmc.errors import PassError

#: integer types a spec may name, with their full range (int4 values are stored one per int8 byte in graphs)
DTYPE_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int4": (-8, 7), "uint4": (0, 15)}
#: the axis of an activation spec with one scale per row (per token: one per position of a sequence)
PER_TOKEN = -2
#: how an activation's range is found from calibration data
RANGE_METHODS = ("minmax", "percentile", "entropy", "mse")
#: how far (relative to the output's magnitude) a build's integer kernels may be from its float Q/DQ graph:
#: their int32 sums are exact where the float graph rounds, so a value next to a rounding boundary now and
#: then requantizes one step apart, and deep models carry such a step on (measured: digits 1.3e-3, MiniLM
#: dynamic 2e-2 of the output's magnitude); a real lowering bug (a wrong zero point or scale) is far larger
QUANTIZED_LOWERING_RTOL = 5e-2


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized. Frozen; every field is checked in ``__post_init__``.

    Parameters
    ----------
    dtype : "int8" | "uint8" | "int4" | "uint4"
    symmetric : zero point fixed at 0 (the range is ``[-t, t]``); required for signed weights on fast kernels.
    axis : the channel axis for one scale per channel (weights: 0 for conv/linear); None: one scale per tensor.
    group_size : with ``axis``: one scale per ``group_size`` consecutive elements along the *other* (reduction)
        axis of a 2-D weight — the group-wise int4 scheme of phone LLMs. None: whole channels.
    method : how the range is found from data: minmax | percentile | entropy (KL) | mse.
    percentile : for ``method = "percentile"``: the share of values (in %) kept inside the range.
    narrow_range : symmetric signed types drop the most negative value (int8: [-127, 127]) so that
        ``-q`` is always representable, as TFLite, XNNPACK and onnxruntime do for weights.
    """

    dtype: str = "int8"
    symmetric: bool = False
    axis: Optional[int] = None
    group_size: Optional[int] = None
    method: str = "minmax"
    percentile: float = 99.99
    narrow_range: bool = False

    def __post_init__(self):
        if self.dtype not in DTYPE_RANGES:
            raise PassError(f"quantization dtype '{self.dtype}' is not one of {', '.join(DTYPE_RANGES)}")
        if self.method not in RANGE_METHODS:
            raise PassError(f"range method '{self.method}' is not one of {', '.join(RANGE_METHODS)}")
        if self.symmetric and self.dtype.startswith("u"):
            raise PassError(f"a symmetric {self.dtype} spec wastes half its range (zero point in the middle)",
                            hint=f"use {self.dtype[1:]} for symmetric, or symmetric = false for {self.dtype}")
        if self.narrow_range and not self.symmetric:
            raise PassError("narrow_range applies to symmetric specs only")
        if self.axis is not None and (not isinstance(self.axis, int) or isinstance(self.axis, bool)):
            raise PassError(f"the channel axis must be an integer or None, got {self.axis!r}")
        if self.group_size is not None:
            if self.axis is None:
                raise PassError("group_size needs a channel axis (groups split each channel)")
            if not isinstance(self.group_size, int) or self.group_size < 2:
                raise PassError(f"group_size must be an integer >= 2, got {self.group_size!r}")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise PassError(f"percentile must be in (50, 100], got {self.percentile}")

    # ---- derived ----------------------------------------------------------------------------------------
    @property
    def qmin(self) -> int:
        lo = DTYPE_RANGES[self.dtype][0]
        return lo + 1 if self.narrow_range else lo

    @property
    def qmax(self) -> int:
        return DTYPE_RANGES[self.dtype][1]

    @property
    def bits(self) -> int:
        return 4 if self.dtype.endswith("4") else 8

    @property
    def storage_dtype(self) -> str:
        """The numpy/ONNX type the integers are stored in (int4 in int8 bytes)."""
        return {"int4": "int8", "uint4": "uint8"}.get(self.dtype, self.dtype)

    @property
    def granularity(self) -> str:
        if self.axis is None:
            return "per-tensor"
        if self.axis == PER_TOKEN and self.group_size is None:
            return "per-token"
        if self.group_size is not None:
            return f"per-group({self.group_size}, axis {self.axis})"
        return f"per-channel(axis {self.axis})"

    @property
    def method_name(self) -> str:
        return f"percentile {self.percentile:g}" if self.method == "percentile" else self.method

    def short(self) -> str:
        """``int8 sym per-channel`` — type, symmetry and granularity."""
        gran = self.granularity.split("(")[0] + (f" g{self.group_size}" if self.group_size else "")
        return f"{self.dtype} {'sym' if self.symmetric else 'asym'} {gran}"

    def describe(self) -> str:
        """``int8 sym per-channel(axis 0) minmax`` — one line for reports."""
        return f"{self.dtype} {'sym' if self.symmetric else 'asym'} {self.granularity} {self.method_name}"

    def qparams(self, lo, hi) -> Tuple[np.ndarray, np.ndarray]:
        """Scale (float32) and zero point (int64) for ranges ``[lo, hi]`` (scalars or arrays, one per channel).

        The range is widened to include 0 so that zero (padding, ReLU's floor) is exact.
        """
        lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
        hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
        if self.symmetric:
            t = np.maximum(np.abs(lo), np.abs(hi))
            scale = t / ((self.qmax - self.qmin) / 2.0)
            zp = np.zeros_like(scale, dtype=np.int64)
        else:
            scale = (hi - lo) / float(self.qmax - self.qmin)
            scale = np.where(scale > 0, scale, 1.0)
            zp = np.clip(np.round(self.qmin - lo / scale), self.qmin, self.qmax).astype(np.int64)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # an all-zero tensor: any scale is exact
        scale = np.maximum(scale, np.float32(np.finfo(np.float32).tiny * 2 ** 23))
        return scale, zp

    def quantize(self, x: np.ndarray, scale, zp) -> np.ndarray:
        """Integers (in :attr:`storage_dtype`) of ``x`` with parameters broadcast against ``x``."""
        q = np.round(np.asarray(x, np.float64) / np.asarray(scale, np.float64)) + np.asarray(zp)
        return np.clip(q, self.qmin, self.qmax).astype(self.storage_dtype)


@dataclass(frozen=True)
class QuantScheme:
    """A weight spec with an activation spec (None: weight-only), static or dynamic, int32 accumulation."""

    weights: QuantSpec
    activations: Optional[QuantSpec] = None
    dynamic: bool = False
    accumulate: str = "int32"

    def __post_init__(self):
        if self.dynamic and self.activations is None:
            raise PassError("a dynamic scheme quantizes activations at run time: it needs an activation spec")
        acts = self.activations
        if acts is not None and acts.axis is not None and not (self.dynamic and acts.axis == PER_TOKEN):
            raise PassError("activations are quantized per tensor (axis None) or, at run time, per token (axis -2): "
                            "a per-channel activation scale cannot be factored out of a matrix product")
        if self.activations is not None and self.weights.group_size is not None:
            raise PassError("group-wise weights are for weight-only schemes (no activation spec): an integer "
                            "product would need one rescale per group")
        if self.accumulate not in ("int32", "float32"):
            raise PassError(f"accumulate must be int32 or float32, got '{self.accumulate}'")

    @property
    def kind(self) -> str:
        if self.activations is None:
            return "weight-only"
        return "dynamic" if self.dynamic else "static"

    def short(self) -> str:
        """``w int8 sym per-channel, a int8 asym per-tensor`` — the per-layer scheme in reports."""
        acts = "a float" if self.activations is None else \
            f"a {self.activations.short()}{' dynamic' if self.dynamic else ''}"
        return f"w {self.weights.short()}, {acts}"

    def describe(self) -> str:
        acts = "float activations" if self.activations is None else \
            f"activations {self.activations.describe()}{' (run time)' if self.dynamic else ''}"
        return f"{self.kind}: weights {self.weights.describe()}, {acts}, {self.accumulate} accumulation"


@dataclass(frozen=True)
class TargetQuantSupport:
    """Which schemes a target runs with fast integer kernels, and with which instructions."""

    target: str
    weight_dtypes: FrozenSet[str]
    activation_dtypes: FrozenSet[str]
    weight_only_dtypes: FrozenSet[str]
    instructions: str
    weights_symmetric: bool = True
    accumulate: str = "int32"
    notes: Tuple[str, ...] = field(default=())

    def problems(self, scheme: QuantScheme) -> List[str]:
        """Each reason ``scheme`` would not run fast here, phrased as what to change ([] when it would)."""
        out: List[str] = []
        w, a = scheme.weights, scheme.activations
        if a is None:
            if w.dtype not in self.weight_only_dtypes:
                out.append(f"weight-only weights must be {' or '.join(sorted(self.weight_only_dtypes))}, "
                           f"not {w.dtype}")
            if w.dtype.startswith("u") or not w.symmetric:
                out.append("weight-only weights must be symmetric signed integers (zero point 0)")
            return out
        if w.dtype not in self.weight_dtypes or (self.weights_symmetric and not w.symmetric):
            out.append(f"weights must be symmetric {' or '.join(sorted(self.weight_dtypes))} (zero point 0), "
                       f"got {w.describe()}")
        if a.dtype not in self.activation_dtypes:
            out.append(f"activations must be {' or '.join(sorted(self.activation_dtypes))}, got {a.dtype}")
        if scheme.accumulate != self.accumulate:
            out.append(f"accumulation must be {self.accumulate}, got {scheme.accumulate}")
        return out


_ARM_NEON = TargetQuantSupport(
    target="arm", weight_dtypes=frozenset({"int8"}), activation_dtypes=frozenset({"int8", "uint8"}),
    weight_only_dtypes=frozenset({"int8", "int4"}),
    instructions="NEON smull/smlal/sadalp int8 multiply-accumulate into int32",
    notes=("uint8 activations are shifted to int8 (x - 128) so the product stays int8 x int8",))
_ARM_DOTPROD = TargetQuantSupport(
    target="arm+dotprod", weight_dtypes=frozenset({"int8"}), activation_dtypes=frozenset({"int8", "uint8"}),
    weight_only_dtypes=frozenset({"int8", "int4"}),
    instructions="sdot (4 int8 x int8 products summed into each int32 lane, ARMv8.2 +dotprod)",
    notes=_ARM_NEON.notes)
_HOST = TargetQuantSupport(
    target="host", weight_dtypes=frozenset({"int8"}), activation_dtypes=frozenset({"int8", "uint8"}),
    weight_only_dtypes=frozenset({"int8", "int4"}),
    instructions="x86 SIMD integer multiply-add (pmaddwd; vpdpbusd where the CPU has VNNI)")

#: the int8 schemes each target runs fast; keys are target kinds, ``arm+dotprod`` an arm block with +dotprod
TARGET_SCHEMES = {s.target: s for s in (_ARM_NEON, _ARM_DOTPROD, _HOST)}


def target_support(kind: str, features: Sequence[str] = ()) -> Optional[TargetQuantSupport]:
    """The support table entry for a target block (``arm`` with ``+dotprod`` in ``features``: arm+dotprod)."""
    if kind == "arm" and "+dotprod" in features:
        return TARGET_SCHEMES["arm+dotprod"]
    return TARGET_SCHEMES.get(kind)


def check_scheme(scheme: QuantScheme, kind: str, features: Sequence[str] = ()) -> TargetQuantSupport:
    """Raise a :class:`PassError` naming every choice of ``scheme`` that target ``kind`` does not run fast.

    Returns the target's support entry (its ``instructions`` say what the kernels will use). A target with no
    entry (e.g. vulkan) is refused: it has no integer kernels at all.
    """
    support = target_support(kind, features)
    if support is None:
        raise PassError(f"target '{kind}' has no integer kernels; quantized layers would run as float there",
                        hint=f"targets with int8 kernels: {', '.join(sorted(TARGET_SCHEMES))}")
    problems = support.problems(scheme)
    if problems:
        raise PassError(f"target '{support.target}' has no fast kernel for this scheme: {'; '.join(problems)}",
                        hint=f"{support.target} runs: weights symmetric "
                             f"{'/'.join(sorted(support.weight_dtypes))} per channel, activations "
                             f"{'/'.join(sorted(support.activation_dtypes))} per tensor, {support.accumulate} "
                             f"accumulation ({support.instructions})")
    return support


def check_targets(scheme: QuantScheme, targets: Iterable[Tuple[str, Sequence[str]]]) -> None:
    """:func:`check_scheme` for every ``(kind, features)`` of a schedule's CPU target blocks (others skipped)."""
    for kind, features in targets:
        if kind in ("host", "arm"):
            check_scheme(scheme, kind, features)


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(|ref|^2 / |ref - approx|^2)`` (inf when exact)."""
    ref = np.asarray(reference, np.float64)
    noise = float(np.sum((ref - np.asarray(approx, np.float64)) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(max(signal, 1e-30) / noise))


def check_schedule_schemes(checked) -> None:
    """Hold every quantizing step of a checked schedule against the schedule's own CPU targets.

    For each step whose pass has a ``scheme()`` (quantize_static, quantize_dynamic, quantize_weights) and each
    ``host`` / ``arm`` target block, :func:`check_scheme`; the error points at the step in the ``.sched`` file.
    Runs before any work, right after the schedule is checked.
    """
    from aglmc.passes.base import get_pass

    targets = [(t.kind, tuple(t.params.get("features", ()) or ())) for t in checked.targets]
    for step in checked.steps:
        cls = get_pass(step.name)
        if "quantized" not in cls.guarantees or not hasattr(cls, "scheme"):
            continue
        kind = "fx" if checked.model.source.is_python else "onnx"
        try:
            check_targets(cls(**dict(step.params)).scheme(kind), targets)
        except PassError as e:
            e.location, e.source = step.loc, checked.schedule.text
            raise
