"""The vulkan LLM runner: ``vulkan_prefill.wgpu`` and ``vulkan_decode.wgpu`` of an LLM build (see
:mod:`aglmc.targets.llm`) on a Vulkan device, with the interface of the host and board runners. wgpu and numpy
only: it runs where TVM is not installed (``bench/vulkan_gpu.py`` runs it on a GPU machine)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np


def _tokens(tokens) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(tokens, dtype=np.int64)).reshape(1, -1)


class VulkanLlmRunner:
    """The two vulkan artifacts of an LLM build on this machine's Vulkan device; the cache comes back to the
    host after every call (the vulkan runtime takes and returns numpy arrays)."""

    def __init__(self, prefill_path: Union[str, Path], decode_path: Union[str, Path], adapter: Optional[str] = None):
        from aglmc.targets.vulkan.runtime import VulkanRunner

        self._prefill = VulkanRunner(prefill_path, adapter=adapter)
        self._decode = VulkanRunner(decode_path, adapter=adapter)
        self.adapter = self._prefill.adapter
        self.where = f"vulkan ({self.adapter})"

    def prefill(self, tokens):
        logits, cache = self._prefill.run([_tokens(tokens)])
        return logits, cache

    def decode(self, token: int, cache, pos: int):
        logits, cache = self._decode.run([np.array([[token]], dtype=np.int64), cache,
                                          np.array([pos], dtype=np.int64)])
        return logits.reshape(-1), cache

    def close(self) -> None:
        self._prefill = self._decode = None
