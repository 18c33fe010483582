"""Graph passes over torch.fx and ONNX graphs. See :mod:`aglmc.passes.base` for the pass API."""

from aglmc.passes.base import Pass, PassContext, PassResult, get_pass, load_plugin, register_pass, registry

__all__ = ["Pass", "PassContext", "PassResult", "get_pass", "load_plugin", "register_pass", "registry"]
