"""The vulkan artifact: one zip file holding a launch plan, WGSL kernels and the model's constants.

Needs nothing but the standard library and numpy, so the runtime can load it on a machine without TVM.

Layout of the zip (``vulkan.wgpu``)::

    plan.json              the launch plan (format below), plain JSON
    shaders/NAME.wgsl      one WGSL compute shader per kernel, entry point NAME
    constants/cN.npy       one array per constant (weights), numpy .npy, loaded with allow_pickle=False

``plan.json`` (``version`` 1)::

    inputs      [{name, shape, dtype, device_dtype}]   shape entries are ints or shape-variable names
    shape_vars  {name: {input, dim, min, max}}         where each symbolic dimension is read from
    constants   [{file, shape, dtype}]
    storages    [{bytes, first, last, slot}]           device allocations; first/last: step indices of use
    slots       int                                    physical buffers; storages with disjoint lives share one
    tensors     [{kind, ref, offset, shape, dtype}]    kind input|constant|storage; a view of ``ref``
    kernels     {name: {shader, workgroup_size, buffers: [{name, access}], pods: [{name, type}], f16}}
    steps       [{kernel, call, grid: [x, y, z], buffers: [tensor], pods: [expr]}]
    outputs     [{tensor, dtype, host_dtype}]
    requires    {features, limits}                     what the adapter must offer
    weights     {packed, left_as_float, packed_bytes, float32_bytes}   quantized models only: PackWeights' report

Expressions (sizes, shapes, grids, scalar arguments) are JSON: an int, a float, a shape-variable name, or a list
``[op, arg, ...]`` with ``op`` one of :data:`OPS`; :func:`evaluate` computes them for bound shape variables.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

import numpy as np

FORMAT = "aglmc-vulkan-plan"
VERSION = 1
PLAN_FILE = "plan.json"

Expr = Union[int, float, str, list]

# Bytes per element of the dtypes a plan may name.
DTYPE_BYTES = {"float32": 4, "float16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint8": 1, "int8": 1,
               "bool": 1, "float64": 8, "int16": 2}


def _trunc_div(a, b):
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


# The operators of plan expressions (TIR's integer arithmetic; floordiv/floormod round toward -inf like Python).
OPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "floordiv": lambda a, b: a // b,
    "floormod": lambda a, b: a % b,
    "div": lambda a, b: _trunc_div(a, b) if isinstance(a, int) and isinstance(b, int) else a / b,
    "mod": lambda a, b: a - b * _trunc_div(a, b),
    "min": min,
    "max": max,
    "lt": lambda a, b: int(a < b),
    "le": lambda a, b: int(a <= b),
    "gt": lambda a, b: int(a > b),
    "ge": lambda a, b: int(a >= b),
    "eq": lambda a, b: int(a == b),
    "ne": lambda a, b: int(a != b),
    "and": lambda a, b: int(bool(a) and bool(b)),
    "or": lambda a, b: int(bool(a) or bool(b)),
    "not": lambda a: int(not a),
    "select": lambda c, a, b: a if c else b,
    "int": lambda a: int(math.trunc(a)),
    "float": float,
}


def evaluate(expr: Expr, env: Mapping[str, int]) -> Union[int, float]:
    """The value of a plan expression with shape variables bound by ``env``.

    >>> evaluate(["floordiv", ["add", "n", 31], 32], {"n": 40})
    2
    """
    if isinstance(expr, bool):
        return int(expr)
    if isinstance(expr, (int, float)):
        return expr
    if isinstance(expr, str):
        if expr not in env:
            raise KeyError(f"shape variable '{expr}' is not bound")
        return env[expr]
    op, *args = expr
    return OPS[op](*(evaluate(a, env) for a in args))


def free_vars(expr: Expr) -> set:
    """The shape-variable names ``expr`` reads."""
    if isinstance(expr, str):
        return {expr}
    if isinstance(expr, list):
        return set().union(*(free_vars(a) for a in expr[1:])) if len(expr) > 1 else set()
    return set()


def write_artifact(path: Union[str, Path], plan: Dict[str, Any], shaders: Mapping[str, str],
                   constants: List[np.ndarray]) -> Path:
    """Write the zip at ``path``; ``plan['constants'][i]['file']`` names where ``constants[i]`` goes."""
    path = Path(path)
    plan = dict(plan, format=FORMAT, version=VERSION)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(PLAN_FILE, json.dumps(plan, indent=1))
        for name, kernel in plan["kernels"].items():
            z.writestr(kernel["shader"], shaders[name])
        for entry, array in zip(plan["constants"], constants):
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
            z.writestr(entry["file"], buf.getvalue())
    return path


class Artifact:
    """A loaded vulkan artifact: ``plan`` (dict), ``shaders`` (name -> WGSL) and ``constants`` (arrays)."""

    def __init__(self, plan: Dict[str, Any], shaders: Dict[str, str], constants: List[np.ndarray]):
        self.plan = plan
        self.shaders = shaders
        self.constants = constants

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Artifact":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no vulkan artifact at {path}")
        with zipfile.ZipFile(path) as z:
            plan = json.loads(z.read(PLAN_FILE))
            if plan.get("format") != FORMAT or plan.get("version") != VERSION:
                raise ValueError(f"{path} is not a version-{VERSION} {FORMAT} "
                                 f"(format {plan.get('format')!r}, version {plan.get('version')!r})")
            shaders = {name: z.read(k["shader"]).decode() for name, k in plan["kernels"].items()}
            constants = [np.load(io.BytesIO(z.read(c["file"])), allow_pickle=False) for c in plan["constants"]]
        return cls(plan, shaders, constants)
