"""Importing models into Relax: PyTorch (FX / nn.Module, through torch.export) and ONNX.

Weights stay embedded in the Relax module as constants, so the built library needs nothing but its inputs.
A model TVM cannot import is a :class:`~aglmc.errors.ModelError` that names the unsupported op and the graph
node that uses it, never a TVM traceback.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import tvm

from aglmc.errors import ModelError
from aglmc.targets.compile import error_summary


def relax_from_torch(model, example_args: Tuple[Any, ...]) -> tvm.IRModule:
    """The Relax module of a ``torch.nn.Module`` or ``torch.fx.GraphModule`` called with ``example_args``.

    The model is (re-)exported with ``torch.export.export`` at the shapes of ``example_args`` and imported with
    TVM's exported-program frontend. Pass it in eval mode: export traces whatever mode it is in (dropout,
    batch-norm statistics). The Relax ``main`` takes the tensors of ``example_args`` in order and returns a
    tuple of the model's outputs.
    """
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    try:
        with torch.no_grad():
            program = torch.export.export(model, tuple(example_args))
    except Exception as e:  # torch raises many kinds (UserError, Unsupported, TypeError ...)
        raise ModelError(f"torch.export could not export {type(model).__name__}: {error_summary(e)}") from e
    try:
        # issue 6 (INT8): converters for torch.ops.quantized_decomposed, which TVM 0.27's frontend lacks
        from aglmc.targets.quant import TORCH_QDQ_CONVERTERS

        return from_exported_program(program, keep_params_as_input=False,
                                     custom_convert_map=TORCH_QDQ_CONVERTERS)
    except Exception as e:
        unsupported = _unsupported_ops(e)
        if unsupported:
            uses = []
            for op in unsupported:
                # TVM names ops by the overload's __name__ (special_bessel_j0.default, not aten.special_...)
                nodes = [n.name for n in program.graph.nodes if n.op == "call_function"
                         and op in (getattr(n.target, "__name__", None), str(n.target))]
                uses.append(f"{op} (node {', '.join(nodes[:3])})" if nodes else op)
            raise ModelError(f"TVM's PyTorch frontend does not support {'; '.join(uses)}",
                             hint="replace the op in the model, or decompose it before export") from e
        node = _failing_node(e, "torch.fx.node.Node")
        where = f" at node '{node.name}' ({node.target})" if node is not None else ""
        raise ModelError(f"TVM's PyTorch frontend failed{where}: {error_summary(e)}") from e


def relax_from_onnx(model, shapes: Mapping[str, Sequence[int]],
                    dtypes: Union[str, Mapping[str, str]] = "float32") -> tvm.IRModule:
    """The Relax module of the ONNX ``model`` (a ``ModelProto``) with input ``shapes`` and ``dtypes``.

    ``shapes`` maps every graph input to its shape; ``dtypes`` is one dtype for all inputs or one per input.
    Initializers become constants of the module (``keep_params_in_input=False``).
    """
    from tvm.relax.frontend.onnx import from_onnx

    chatter = io.StringIO()  # on a failure TVM prints the node's inputs as Relax text; we name the node instead
    try:
        with contextlib.redirect_stdout(chatter):
            mod = from_onnx(model, shape_dict={k: list(v) for k, v in shapes.items()}, dtype_dict=dtypes,
                            keep_params_in_input=False)
        sys.stdout.write(chatter.getvalue())
        return mod
    except Exception as e:
        unsupported = _unsupported_ops(e)
        if unsupported:
            uses = []
            for op in unsupported:
                nodes = [n.name or f"#{i}" for i, n in enumerate(model.graph.node) if n.op_type == op]
                uses.append(f"{op} (node {', '.join(nodes[:3])})" if nodes else op)
            raise ModelError(f"TVM's ONNX frontend does not support {'; '.join(uses)}",
                             hint="replace the op in the model, or export with another opset") from e
        node = _failing_node(e, "onnx.onnx_ml_pb2.NodeProto")
        where = f" at node '{node.name}' ({node.op_type})" if node is not None else ""
        raise ModelError(f"TVM's ONNX frontend failed{where}: {error_summary(e)}") from e


# TVM's words for ops it has no converter for:
#   PyTorch: "Unsupported function types ['special_bessel_j0.default']"
#   ONNX:    "The following operators are not supported for frontend ONNX: STFT, Foo"
_UNSUPPORTED = (
    re.compile(r"Unsupported function types \[(?P<ops>[^\]]*)\]"),
    re.compile(r"operators are not supported for frontend \w+: (?P<ops>.+)"),
)


def _unsupported_ops(e: BaseException) -> Tuple[str, ...]:
    text = str(e)
    for pattern in _UNSUPPORTED:
        m = pattern.search(text)
        if m:
            return tuple(op.strip().strip("'\"") for op in m.group("ops").split(",") if op.strip())
    return ()


def _failing_node(e: BaseException, type_name: str) -> Optional[Any]:
    """The graph node the frontend was converting when ``e`` was raised, found in the traceback's frames.

    Both TVM frontends loop ``for node in ...`` and call one converter per node, so the innermost frame with a
    local ``node`` of the graph's node type names the node that failed.
    """
    module, _, cls = type_name.rpartition(".")
    found = None
    tb = e.__traceback__
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        if node is not None and type(node).__name__ == cls and type(node).__module__ == module:
            found = node
        tb = tb.tb_next
    return found
