"""The launch plan: what the runtime does, step by step, read from the lowered Relax ``main`` and the host
PrimFuncs TVM generated around each kernel.

The Relax ``main`` (after ``KillAfterLastUse``, see :mod:`.lower`) is a flat list of bindings::

    storage = R.memory.alloc_storage(R.shape([256]), 0, "global", "float32")
    alloc = R.memory.alloc_tensor(storage, 0, R.shape([2, 32]), "float32", 0)
    fused_matmul_add_relu(x, metadata["ir.GenericConst"][0], ..., alloc)   # destination passing
    lv = R.reshape(alloc, R.shape([64]))                                    # a view, no kernel
    R.memory.kill_tensor(alloc)

and each called PrimFunc became a host function that launches kernels::

    T.call_ffi_kernel("fused_matmul_add_relu_kernel", out.data, w.data, b.data, x.data, n,   # kernel arguments
                      T.int64(1), (n + 31) // 32, 8, 8,                                       # launch extents
                      launch_params=["blockIdx.y", "blockIdx.x", "threadIdx.y", "threadIdx.x"])

:class:`PlanBuilder` walks both: each kernel launch becomes a step whose buffers are tensor ids, whose scalar
arguments and grid are expressions over the model's shape variables (the host function's variables substituted
by the Relax-level shapes of the call's arguments), and the storages get lifetimes and pooled buffer slots.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tvm
from tvm import relax

from aglmc.errors import TargetError
from aglmc.targets.vulkan.artifact import OPS, evaluate, free_vars
from aglmc.targets.vulkan.lower import KernelInterface, Kernels, parse_interface

_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "FloorDiv": "floordiv", "FloorMod": "floormod",
           "Div": "div", "Mod": "mod", "Min": "min", "Max": "max", "LT": "lt", "LE": "le", "GT": "gt",
           "GE": "ge", "EQ": "eq", "NE": "ne", "And": "and", "Or": "or"}


class ExprWriter:
    """TIR integer expressions as plan expressions (JSON), with variables replaced through ``env``.

    ``env`` maps a TIR Var to an already-written plan expression; a Var missing from it is an error unless
    ``free`` allows it (the model's own shape variables, written by name). Constant subexpressions fold.
    """

    def __init__(self, env: Dict[Any, Any], free: Optional[Dict[Any, str]] = None, where: str = ""):
        self.env = env
        self.free = free or {}
        self.where = where

    def __call__(self, e) -> Any:
        if isinstance(e, (int, float)):
            return e
        kind = type(e).__name__
        if kind == "IntImm":
            return int(e.value)
        if kind == "FloatImm":
            return float(e.value)
        if isinstance(e, tvm.ir.Var):
            if e in self.env:
                return self.env[e]
            if e in self.free:
                return self.free[e]
            raise TargetError(f"vulkan: {self.where}: '{e.name}' is not known to the launch plan")
        if kind in _BINARY:
            return _fold([_BINARY[kind], self(e.a), self(e.b)])
        if kind == "Not":
            return _fold(["not", self(e.a)])
        if kind == "Select":
            return _fold(["select", self(e.condition), self(e.true_value), self(e.false_value)])
        if kind == "Cast":
            return _fold(["float" if str(e.dtype).startswith("float") else "int", self(e.value)])
        raise TargetError(f"vulkan: {self.where}: cannot evaluate a {kind} ({e}) on the host")


def _fold(expr: list) -> Any:
    """``expr`` computed when its arguments are constants; simple identities applied otherwise."""
    op, *args = expr
    if not any(free_vars(a) for a in args):
        return OPS[op](*args)
    if op == "mul" and 1 in args:
        return args[1] if args[0] == 1 else args[0]
    if op == "add" and 0 in args:
        return args[1] if args[0] == 0 else args[0]
    if op in ("floordiv", "div") and args[1] == 1:
        return args[0]
    if op == "int":
        return args[0]
    return expr


class _Tensor:
    __slots__ = ("id", "shape", "dtype")

    def __init__(self, tid: int, shape: List[Any], dtype: str):
        self.id, self.shape, self.dtype = tid, shape, dtype


class _Storage:
    __slots__ = ("id",)

    def __init__(self, sid: int):
        self.id = sid


class PlanBuilder:
    """Builds the plan dict (see :mod:`.artifact`) for ``main`` of a module lowered by :mod:`.lower`."""

    def __init__(self, mod: tvm.IRModule, kernels: Kernels, entry: str = "main"):
        self.mod = mod
        self.kernels = kernels
        self.func: relax.Function = mod[entry] if entry is not None else None
        self.shape_vars: Dict[Any, str] = {}  # Relax-level TIR Var -> name in the plan
        self.shape_var_info: Dict[str, dict] = {}
        self.inputs: List[dict] = []
        self.tensors: List[dict] = []
        self.storages: List[dict] = []
        self.constants: List[np.ndarray] = []
        self.constant_ids: Dict[int, int] = {}
        self.kernel_info: Dict[str, dict] = {}
        self.interfaces: Dict[str, KernelInterface] = {}
        self.steps: List[dict] = []
        self.values: Dict[Any, Any] = {}  # Relax Var -> _Tensor / _Storage / tuple / list of exprs

    # ------------------------------------------------------------------------------------------------ main
    def build(self) -> Tuple[Dict[str, Any], Dict[str, str], List[np.ndarray]]:
        self._bind_inputs()
        body = self.func.body
        if not isinstance(body, relax.SeqExpr):
            raise TargetError("vulkan: main is not in binding-block form")
        for block in body.blocks:
            for binding in block.bindings:
                if isinstance(binding, relax.MatchCast):
                    raise TargetError(f"vulkan: main has a match_cast on '{binding.var.name}' (a data-dependent "
                                      f"shape), which the launch plan cannot express")
                self.values[binding.var] = self._eval(binding.value, binding.var)
        outputs = self._flatten(self._value(body.body))
        for t in outputs:
            self._touch_tensor(t.id, len(self.steps))
        plan = {
            "entry": "main",
            "inputs": self.inputs,
            "shape_vars": self.shape_var_info,
            "constants": [{"file": f"constants/c{i}.npy", "shape": list(c.shape), "dtype": str(c.dtype)}
                          for i, c in enumerate(self.constants)],
            "tensors": self.tensors,
            "storages": self.storages,
            "kernels": self.kernel_info,
            "steps": self.steps,
            "outputs": [{"tensor": t.id, "dtype": t.dtype} for t in outputs],
        }
        plan["slots"] = assign_slots(self.storages, len(self.steps))
        shaders = {name: self.kernels.wgsl[name] for name in self.kernel_info}
        return plan, shaders, self.constants

    @classmethod
    def for_prim_func(cls, kernels: Kernels, name: str) -> Tuple[Dict[str, Any], Dict[str, str], List[np.ndarray]]:
        """The plan of one PrimFunc ``name`` (built into ``kernels``) run alone: every buffer parameter is a plan
        input, the buffers its kernels write are the outputs. Static shapes only (a tuning candidate)."""
        self = cls.__new__(cls)
        cls.__init__(self, tvm.IRModule(), kernels, entry=None)
        host = kernels.host_func(name)
        flat = []
        for p in host.params:
            if not isinstance(p.ty, tvm.tirx.BufferType):
                raise TargetError(f"vulkan: '{name}' takes the scalar '{p.name}'; a kernel run alone takes buffers")
            shape = []
            for d in p.ty.shape:
                if type(d).__name__ != "IntImm":
                    raise TargetError(f"vulkan: '{name}': parameter '{p.name}' has the symbolic shape {p.ty.shape}")
                shape.append(int(d))
            flat.append(self._new_tensor("input", len(self.inputs), 0, shape, str(p.ty.dtype)))
            self.inputs.append({"name": p.name, "shape": shape, "dtype": str(p.ty.dtype)})
        self._launch_host(name, host, flat)
        written = sorted({tid for step in self.steps
                          for tid, b in zip(step["buffers"], self.kernel_info[step["kernel"]]["buffers"])
                          if b["access"] == "read_write"})
        plan = {"entry": name, "inputs": self.inputs, "shape_vars": {}, "constants": [], "tensors": self.tensors,
                "storages": [], "kernels": self.kernel_info, "steps": self.steps, "slots": 0,
                "outputs": [{"tensor": t, "dtype": self.tensors[t]["dtype"]} for t in written]}
        return plan, {k: kernels.wgsl[k] for k in self.kernel_info}, []

    def _bind_inputs(self) -> None:
        lower = dict(self.func.attrs.get("tir_var_lower_bound", {})) if self.func.attrs else {}
        upper = dict(self.func.attrs.get("tir_var_upper_bound", {})) if self.func.attrs else {}
        for i, p in enumerate(self.func.params):
            ty = p.ty
            if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
                raise TargetError(f"vulkan: input '{p.name}' is not a tensor of known rank ({ty})")
            shape = []
            for d, dim in enumerate(ty.shape.values):
                if isinstance(dim, tvm.ir.Var) and dim not in self.shape_vars:
                    name = self._unique_var_name(dim.name)
                    self.shape_vars[dim] = name
                    info = {"input": i, "dim": d}
                    for key, bounds in (("min", lower), ("max", upper)):
                        if dim.name in bounds:
                            info[key] = int(bounds[dim.name])
                    self.shape_var_info[name] = info
                shape.append(self._expr(dim, f"input '{p.name}'"))
            t = self._new_tensor("input", i, 0, shape, str(ty.dtype))
            self.inputs.append({"name": p.name, "shape": shape, "dtype": str(ty.dtype)})
            self.values[p] = t

    def _unique_var_name(self, name: str) -> str:
        taken = set(self.shape_var_info)
        out, k = name, 1
        while out in taken:
            out, k = f"{name}_{k}", k + 1
        return out

    def _expr(self, e, where: str) -> Any:
        return ExprWriter({}, self.shape_vars, where)(e)

    # ------------------------------------------------------------------------------------------ bindings
    def _eval(self, value, var) -> Any:
        where = f"binding '{var.name}'"
        if isinstance(value, tvm.ir.Call):
            op = value.op
            if isinstance(op, tvm.ir.GlobalVar):
                self._call_prim_func(op.name_hint, value.args, where)
                return None
            if isinstance(op, tvm.ir.Op):
                return self._call_op(op.name, value, var, where)
            raise TargetError(f"vulkan: {where} calls {op}, which the launch plan cannot run",
                              hint="only PrimFunc kernels and memory builtins run on the device")
        return self._value(value)

    def _call_op(self, name: str, call, var, where: str) -> Any:
        args = call.args
        if name == "relax.memory.alloc_storage":
            size = self._shape(args[0], where)
            sid = len(self.storages)
            self.storages.append({"bytes": size[0], "first": len(self.steps), "last": len(self.steps)})
            return _Storage(sid)
        if name == "relax.memory.alloc_tensor":
            storage = self._value(args[0])
            if not isinstance(storage, _Storage):
                raise TargetError(f"vulkan: {where}: alloc_tensor on something that is not a storage")
            shape = self._shape(args[2], where)
            return self._new_tensor("storage", storage.id, self._expr(args[1], where), shape,
                                    str(args[3].value))
        if name in ("relax.memory.kill_storage", "relax.memory.kill_tensor"):
            return None  # lifetimes are computed from the uses (a kill after the last use adds nothing)
        if name == "relax.reshape":
            src = self._value(args[0])
            if not isinstance(src, _Tensor):
                raise TargetError(f"vulkan: {where}: reshape of a non-tensor")
            shape = self._shape(args[1], where)
            base = self.tensors[src.id]
            return self._new_tensor(base["kind"], base["ref"], base["offset"], shape, src.dtype)
        raise TargetError(f"vulkan: {where}: the op '{name}' has no kernel and cannot run on the vulkan target",
                          hint="it survived TVM's GPU lowering; run a pass that removes or legalizes it")

    def _value(self, e) -> Any:
        if tvm.ir.expr.is_prim_expr(e):  # a shape variable or arithmetic on them, passed as a scalar
            return self._expr(e, "value")
        if isinstance(e, tvm.ir.Var):
            if e not in self.values:
                raise TargetError(f"vulkan: '{e.name}' is used before it is defined")
            return self.values[e]
        if isinstance(e, tvm.ir.expr.GenericConst) and isinstance(e.ty, relax.TensorType):
            return self._constant(e)
        if isinstance(e, tvm.ir.Tuple):
            return tuple(self._value(f) for f in e.fields)
        if isinstance(e, tvm.ir.TupleGetItem):
            return self._value(e.tuple_value)[e.index]
        if isinstance(e, relax.ShapeExpr):
            return [self._expr(v, "shape") for v in e.values]
        raise TargetError(f"vulkan: main uses a {type(e).__name__} ({e}), which the launch plan cannot express")

    def _shape(self, e, where: str) -> List[Any]:
        v = self._value(e)
        if not isinstance(v, list):
            raise TargetError(f"vulkan: {where}: expected a shape, got {e}")
        return v

    def _constant(self, c) -> _Tensor:
        key = c.__chandle__()  # the node, not the Python wrapper
        if key not in self.constant_ids:
            array = c.value.numpy()
            self.constant_ids[key] = self._new_tensor("constant", len(self.constants), 0, list(array.shape),
                                                      str(array.dtype)).id
            self.constants.append(array)
        tid = self.constant_ids[key]
        return _Tensor(tid, self.tensors[tid]["shape"], self.tensors[tid]["dtype"])

    def _new_tensor(self, kind: str, ref: int, offset: Any, shape: List[Any], dtype: str) -> _Tensor:
        self.tensors.append({"kind": kind, "ref": ref, "offset": offset, "shape": shape, "dtype": dtype})
        return _Tensor(len(self.tensors) - 1, shape, dtype)

    def _flatten(self, v) -> List[_Tensor]:
        if isinstance(v, _Tensor):
            return [v]
        if isinstance(v, tuple):
            return [t for x in v for t in self._flatten(x)]
        raise TargetError(f"vulkan: main returns a {type(v).__name__}, not tensors")

    def _touch_tensor(self, tid: int, step: int) -> None:
        t = self.tensors[tid]
        if t["kind"] == "storage":
            s = self.storages[t["ref"]]
            s["first"] = min(s["first"], step)
            s["last"] = max(s["last"], step)

    # ------------------------------------------------------------------------------------- kernel calls
    def _call_prim_func(self, name: str, args, where: str) -> None:
        """One step per kernel the host function ``name`` launches, with its arguments resolved."""
        host = self.kernels.host_func(name)
        flat = []  # the Relax arguments as the host function's parameters see them
        for a in args:
            v = self._value(a)
            flat.extend(v if isinstance(v, list) else [v])
        self._launch_host(name, host, flat)

    def _launch_host(self, name: str, host, flat: List[Any]) -> None:
        """The steps of the host function ``host`` called with ``flat`` (tensors and scalar expressions)."""
        if len(flat) != len(host.params):
            raise TargetError(f"vulkan: '{name}' takes {len(host.params)} arguments, main passes {len(flat)}")
        env: Dict[Any, Any] = {}
        tensor_of: Dict[Any, _Tensor] = {}
        for p, v in zip(host.params, flat):
            if isinstance(p.ty, tvm.tirx.BufferType):
                if not isinstance(v, _Tensor):
                    raise TargetError(f"vulkan: '{name}': parameter '{p.name}' expects a tensor")
                tensor_of[p] = v
                for dim, actual in zip(p.ty.shape, v.shape):
                    if isinstance(dim, tvm.ir.Var) and dim not in env:
                        env[dim] = actual
            else:
                if isinstance(v, _Tensor):
                    raise TargetError(f"vulkan: '{name}': scalar parameter '{p.name}' got a tensor")
                env[p] = v
        self._walk_host(name, host.body, env, tensor_of)

    def _walk_host(self, name: str, stmt, env: Dict[Any, Any], tensor_of: Dict[Any, _Tensor]) -> None:
        kind = type(stmt).__name__
        writer = ExprWriter(env, None, f"host function '{name}'")
        if kind == "SeqStmt":
            for s in stmt.seq:
                self._walk_host(name, s, env, tensor_of)
        elif kind == "Bind":
            env[stmt.var] = writer(stmt.value)
        elif kind == "DeclBuffer":
            source = _buffer_var(stmt.data)
            if source is None or source not in tensor_of:
                raise TargetError(f"vulkan: host function '{name}' declares a buffer that is no argument")
            tensor_of[stmt.buffer] = tensor_of[source]
        elif kind in ("LetStmt", "AttrStmt"):
            if kind == "LetStmt":
                env[stmt.var] = writer(stmt.value)
            self._walk_host(name, stmt.body, env, tensor_of)
        elif kind == "AssertStmt":
            pass
        elif kind == "Evaluate":
            call = stmt.value
            if isinstance(call, tvm.ir.Call) and isinstance(call.op, tvm.ir.Op) \
                    and call.op.name == "tirx.call_ffi_kernel":
                self._launch(name, call, writer, tensor_of)
            elif type(call).__name__ != "IntImm":  # Evaluate(0) is a no-op
                raise TargetError(f"vulkan: host function '{name}' does {call} on the host, which the "
                                  f"launch plan cannot express")
        else:
            raise TargetError(f"vulkan: host function '{name}' has a {kind} around its kernel launches, "
                              f"which the launch plan cannot express")

    def _launch(self, name: str, call, writer: ExprWriter, tensor_of: Dict[Any, _Tensor]) -> None:
        kname = call.args[0].value
        kernel = self.kernels.device_func(kname)
        iface = self._interface(kname)
        nparams = len(kernel.params)
        kargs = call.args[1:1 + nparams]
        extents = call.args[1 + nparams:]
        tags = [str(t) for t in call.attrs.launch_params]
        if len(extents) != len(tags):
            raise TargetError(f"vulkan: kernel '{kname}': {len(extents)} launch extents for {len(tags)} tags")
        buffers, pods = [], []
        for p, a in zip(kernel.params, kargs):
            if isinstance(p.ty, tvm.ir.PointerType):
                source = _buffer_var(a)
                if source is None or source not in tensor_of:
                    raise TargetError(f"vulkan: kernel '{kname}': argument for '{p.name}' is not a tensor")
                buffers.append(tensor_of[source].id)
            else:
                pods.append(writer(a))
        if len(buffers) != len(iface.buffers) or len(pods) != len(iface.pods):
            raise TargetError(f"vulkan: kernel '{kname}': the WGSL expects {len(iface.buffers)} buffers and "
                              f"{len(iface.pods)} scalars, the launch passes {len(buffers)} and {len(pods)}")
        grid: List[Any] = [1, 1, 1]
        threads = [1, 1, 1]
        for tag, ext in zip(tags, extents):
            axis = "xyz".index(tag[-1])
            if tag.startswith("blockIdx."):
                grid[axis] = writer(ext)
            elif tag.startswith("threadIdx."):
                threads[axis] = writer(ext)
            else:
                raise TargetError(f"vulkan: kernel '{kname}' uses the launch parameter '{tag}', which WebGPU "
                                  f"kernels cannot take")
        if grid[2] != 1:
            raise TargetError(f"vulkan: kernel '{kname}' uses blockIdx.z, which WGSL kernels reserve")
        if list(iface.workgroup_size) != threads:
            raise TargetError(f"vulkan: kernel '{kname}': launch threads {threads} differ from its WGSL "
                              f"@workgroup_size{tuple(iface.workgroup_size)}")
        step = len(self.steps)
        for tid in buffers:
            self._touch_tensor(tid, step)
        self.steps.append({"kernel": kname, "call": name, "grid": grid, "buffers": buffers, "pods": pods})

    def _interface(self, kname: str) -> KernelInterface:
        if kname not in self.interfaces:
            if kname not in self.kernels.wgsl:
                raise TargetError(f"vulkan: no WGSL source for kernel '{kname}'")
            iface = parse_interface(kname, self.kernels.wgsl[kname])
            self.interfaces[kname] = iface
            self.kernel_info[kname] = iface.to_json(f"shaders/{kname}.wgsl")
        return self.interfaces[kname]


def _buffer_var(e):
    """The buffer a ``tirx.buffer_data(buf)`` call reads, or None."""
    if isinstance(e, tvm.ir.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "tirx.buffer_data":
        return e.args[0]
    return None


def assign_slots(storages: List[dict], nsteps: int) -> int:
    """Give each storage a physical buffer ``slot``, sharing slots between storages whose lives do not overlap.

    A storage lives from its allocation to its last use (``first``..``last`` step indices, inclusive); an output
    lives to the end. Greedy interval colouring in allocation order, preferring the slot whose largest tenant
    is the closest in size (sizes may be symbolic: then only equal sizes count as close). Returns the number of
    slots.
    """
    free_at: List[int] = []  # per slot: the first step at which it is free again
    sizes: List[Any] = []
    for s in storages:
        best = None
        for k, free in enumerate(free_at):
            if free <= s["first"] and (best is None or _closer(s["bytes"], sizes[k], sizes[best])):
                best = k
        if best is None:
            best = len(free_at)
            free_at.append(0)
            sizes.append(s["bytes"])
        elif isinstance(sizes[best], int) and isinstance(s["bytes"], int):
            sizes[best] = max(sizes[best], s["bytes"])
        s["slot"] = best
        free_at[best] = s["last"] + 1
    return len(free_at)


def _closer(want, a, b) -> bool:
    if isinstance(want, int) and isinstance(a, int) and isinstance(b, int):
        return abs(a - want) < abs(b - want)
    return a == want and b != want


def plan_summary(plan: Dict[str, Any], env: Optional[Dict[str, int]] = None) -> str:
    """A few readable lines: kernels, steps, storages and slots (bytes evaluated where ``env`` binds them)."""
    env = env or {}
    lines = [f"{len(plan['steps'])} dispatches of {len(plan['kernels'])} kernels, "
             f"{len(plan['storages'])} storages in {plan['slots']} buffers, {len(plan['constants'])} constants"]
    for i, s in enumerate(plan["steps"]):
        try:
            grid = [evaluate(g, env) for g in s["grid"]]
        except KeyError:
            grid = s["grid"]
        lines.append(f"  {i:3d} {s['kernel']:40s} grid={grid} buffers={s['buffers']}")
    return "\n".join(lines)
