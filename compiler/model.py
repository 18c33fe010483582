"""Importing the schedule's model: a PyTorch module via torch.export into FX, or an ONNX file into a
graphsurgeon graph. A :class:`Model` holds the graph the passes transform, the original model as the
reference the build is verified against, and the input/output descriptions.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Sequence

import numpy as np

from aglmc.compiler.pyload import call_factory
from aglmc.compiler.tensors import TensorSpec
from aglmc.dsl import CheckedSchedule
from aglmc.errors import ModelError, ScheduleError, did_you_mean

_NP_DTYPES = {"float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool"}


@dataclass
class Model:
    """The model being compiled.

    ``graph`` is a ``torch.fx.GraphModule`` (kind "fx") or an ``onnx_graphsurgeon.Graph`` (kind "onnx");
    passes transform it in place. ``reference`` runs the original, untransformed model.
    """

    kind: str
    graph: Any
    inputs: List[TensorSpec]
    outputs: List[TensorSpec]
    reference: Callable[[Sequence[np.ndarray]], List[np.ndarray]]
    source_sha256: str
    example_inputs: List[np.ndarray] = field(default_factory=list)
    #: the user's original torch module (FX models only): the reference, never modified
    original_module: Any = None

    def run(self, arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Run the current (transformed) graph: torch for FX, onnxruntime for ONNX."""
        if self.kind == "fx":
            return _run_torch(self.graph, arrays)
        return _run_onnx_bytes(self.onnx_bytes(), [s.name for s in self.inputs], arrays)

    def onnx_model(self):
        import onnx_graphsurgeon as gs

        return gs.export_onnx(self.graph)

    def onnx_bytes(self) -> bytes:
        return self.onnx_model().SerializeToString()

    def to_relax(self):
        """The current graph as a Relax IRModule (imported by the targets layer)."""
        from aglmc.targets import frontend

        if self.kind == "fx":
            return frontend.relax_from_torch(self.graph, tuple(_to_torch(a) for a in self.example_inputs))
        return frontend.relax_from_onnx(self.onnx_model(), {s.name: s.shape for s in self.inputs},
                                        {s.name: s.dtype for s in self.inputs})

    def clone(self) -> "Model":
        # graphsurgeon graphs copy themselves (deepcopy recurses through their producer/consumer links)
        graph = copy.deepcopy(self.graph) if self.kind == "fx" else self.graph.copy()
        return Model(self.kind, graph, list(self.inputs), list(self.outputs), self.reference, self.source_sha256,
                     list(self.example_inputs), self.original_module)


def load_model(checked: CheckedSchedule) -> Model:
    src = checked.model.source
    if src.is_python:
        return _load_torch(checked)
    return _load_onnx(checked)


# ---- PyTorch --------------------------------------------------------------------------------------------
def _to_torch(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


def _flatten_outputs(out) -> List[np.ndarray]:
    import torch
    from torch.utils import _pytree

    leaves = _pytree.tree_leaves(out)
    return [leaf.detach().cpu().numpy() for leaf in leaves if isinstance(leaf, torch.Tensor)]


def _run_torch(module, arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
    import torch

    with torch.no_grad():
        return _flatten_outputs(module(*[_to_torch(a) for a in arrays]))


def _load_torch(checked: CheckedSchedule) -> Model:
    import torch

    decl = checked.model
    src = decl.source
    text = checked.schedule.text
    produced = call_factory(src, text, what="model")
    module, example = (produced if isinstance(produced, tuple) and len(produced) == 2 else (produced, None))
    if not isinstance(module, torch.nn.Module):
        raise ScheduleError(f"model: {src.text} returned {type(produced).__name__}; expected an nn.Module or "
                            "(nn.Module, example_inputs)", src.loc, source=text)
    module = module.eval()
    names = _forward_arg_names(module)
    if example is None:
        if not checked.inputs:
            raise ScheduleError(f"model: {src.text} returned no example inputs and the schedule declares none",
                                src.loc, hint="return (module, (example_input, ...)) or declare "
                                              "`input NAME: float32[1, 3, 224, 224]`", source=text)
        rng = np.random.default_rng(0)
        example = tuple(_random_input(d.shape, d.dtype, rng) for d in checked.inputs)
    if isinstance(example, torch.Tensor):
        example = (example,)
    example = tuple(example)
    if not all(isinstance(t, torch.Tensor) for t in example):
        raise ScheduleError(f"model: example inputs from {src.text} must be tensors", src.loc, source=text)
    if checked.inputs:
        specs = _match_declared(checked, [TensorSpec(d.name, tuple(d.shape), d.dtype) for d in checked.inputs],
                                [TensorSpec.of(n, t.numpy()) for n, t in zip(names, example)])
    else:
        specs = [TensorSpec.of(n, t.numpy()) for n, t in zip(names, example)]
    try:
        exported = torch.export.export(module, example)
    except Exception as e:
        raise ModelError(f"torch.export could not trace {src.text}: {_first_line(e)}",
                         hint="aglmc compiles what torch.export can capture; see the message above for the "
                              "construct it stopped at") from e
    gm = exported.module()
    arrays = [t.detach().numpy() for t in example]
    outs = _run_torch(module, arrays)
    reference_module = module

    def reference(inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        return _run_torch(reference_module, inputs)

    return Model("fx", gm, specs, [TensorSpec.of(f"output{i}", o) for i, o in enumerate(outs)], reference,
                 _sha256_torch(src.path, module), arrays, module)


def _forward_arg_names(module) -> List[str]:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return [f"input{i}" for i in range(16)]
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return names + [f"input{i}" for i in range(len(names), 16)]


def _random_input(shape, dtype: str, rng):
    import torch

    if dtype.startswith("float") or dtype == "bfloat16":
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(getattr(torch, dtype))
    if dtype == "bool":
        return torch.zeros(shape, dtype=torch.bool)
    return torch.zeros(shape, dtype=getattr(torch, dtype))


def _match_declared(checked: CheckedSchedule, declared: List[TensorSpec], actual: List[TensorSpec]):
    text = checked.schedule.text
    if len(declared) != len(actual):
        d = checked.inputs[min(len(declared), len(checked.inputs)) - 1]
        raise ScheduleError(f"the schedule declares {len(declared)} input(s), the model takes {len(actual)} "
                            f"({', '.join(a.name for a in actual)})", d.loc, source=text)
    for decl, want, got in zip(checked.inputs, declared, actual):
        if want.name != got.name:
            raise ScheduleError(f"input '{want.name}' is not the model's; its inputs are "
                                f"{', '.join(a.name for a in actual)} in that order", decl.loc, source=text,
                                hint=did_you_mean(want.name, [a.name for a in actual]))
        if (want.shape, want.dtype) != (got.shape, got.dtype):
            raise ScheduleError(f"input '{want.name}' is declared {want.dtype}{list(want.shape)} but the model's "
                                f"example input is {got.dtype}{list(got.shape)}", decl.loc, source=text)
    return declared


# ---- ONNX -----------------------------------------------------------------------------------------------
_ONNX_NP = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool"}


def _load_onnx(checked: CheckedSchedule) -> Model:
    import onnx
    import onnx_graphsurgeon as gs

    src = checked.model.source
    text = checked.schedule.text
    path = src.path
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ScheduleError(f"model: {path.name} is not a readable ONNX file: {_first_line(e)}", src.loc,
                            source=text) from e
    _check_external_data(model, path)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
        onnx.checker.check_model(model, full_check=False)
    except Exception as e:
        raise ModelError(f"{path.name} fails the ONNX checker: {_first_line(e)}") from e
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    declared = {d.name: d for d in checked.inputs}
    for d in checked.inputs:
        if d.name not in {i.name for i in graph_inputs}:
            raise ScheduleError(f"input '{d.name}' is not an input of {path.name} (its inputs: "
                                f"{', '.join(i.name for i in graph_inputs)})", d.loc, source=text,
                                hint=did_you_mean(d.name, [i.name for i in graph_inputs]))
    specs = []
    for i in graph_inputs:
        ttype = i.type.tensor_type
        dtype = _ONNX_NP.get(ttype.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        if i.name in declared:
            d = declared[i.name]
            if len(d.shape) != len(dims) or any(m is not None and m != s for m, s in zip(dims, d.shape)):
                raise ScheduleError(f"input '{d.name}' is declared {list(d.shape)} but {path.name} has "
                                    f"{['?' if x is None else x for x in dims]}", d.loc, source=text)
            if dtype is not None and d.dtype != dtype:
                raise ScheduleError(f"input '{d.name}' is declared {d.dtype} but {path.name} has {dtype}",
                                    d.loc, source=text)
            specs.append(TensorSpec(d.name, tuple(d.shape), d.dtype))
            continue
        if dtype is None or any(x is None or x <= 0 for x in dims):
            raise ScheduleError(f"{path.name} input '{i.name}' has a dynamic shape "
                                f"{['?' if x is None else x for x in dims]}; declare it", checked.model.loc,
                                hint=f"add `input {i.name}: {dtype or 'float32'}[...]` with static sizes",
                                source=text)
        specs.append(TensorSpec(i.name, tuple(dims), dtype))
    original = model.SerializeToString()
    names = [s.name for s in specs]

    def reference(inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        return _run_onnx_bytes(original, names, inputs)

    rng = np.random.default_rng(0)
    example = [np.asarray(_random_input(s.shape, s.dtype, rng).numpy()) for s in specs]
    outs = reference(example)
    out_specs = [TensorSpec.of(o.name, arr) for o, arr in zip(model.graph.output, outs)]
    return Model("onnx", gs.import_onnx(model), specs, out_specs, reference, _sha256_file(path), example)


def _check_external_data(model, path: Path) -> None:
    """External tensor data must live inside the model's folder (no absolute paths, no '..' escapes)."""
    import onnx

    root = path.parent.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if os.path.isabs(location) or root not in target.parents:
            raise ModelError(f"{path.name}: tensor '{tensor.name}' keeps its data at '{location}', outside the "
                             f"model's folder {root}; external data must sit beside the model")
        if not target.is_file():
            raise ModelError(f"{path.name}: tensor '{tensor.name}' needs external data file '{location}', "
                             f"which is missing from {root}")


_SESSIONS: dict = {}


def _run_onnx_bytes(model_bytes: bytes, names: Sequence[str], arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
    import onnxruntime as ort

    key = hashlib.sha256(model_bytes).hexdigest()
    sess = _SESSIONS.get(key)
    if sess is None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        if len(_SESSIONS) >= 4:  # the original and a few transformed versions
            _SESSIONS.pop(next(iter(_SESSIONS)))
        _SESSIONS[key] = sess
    return [np.asarray(o) for o in sess.run(None, dict(zip(names, arrays)))]


# ---- helpers --------------------------------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _sha256_torch(path: Path, module) -> str:
    """The model's identity: its Python file and every parameter and buffer (weights may come from elsewhere)."""
    import torch

    h = hashlib.sha256(bytes.fromhex(_sha256_file(path)))
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
