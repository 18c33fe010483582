"""What the schedule rules need to know about a CPU target: vector width, register file, cores.

LLVM's own answer is not usable here: ``tvm.target.codegen.llvm_get_vector_width`` reports 512 bits for
``haswell`` (an AVX2 part), so the width is derived from the target's features instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.target.codegen import target_has_features

from aglmc.errors import TargetError


@dataclass(frozen=True)
class VectorISA:
    """The SIMD unit of one CPU target, as the schedule rules see it.

    Attributes
    ----------
    name : str
        ``avx512``, ``avx2``, ``neon`` or ``sse`` (the x86-64 baseline).
    vector_bits : int
        Width of one vector register.
    registers : int
        Number of architectural vector registers (zmm, ymm, v).
    num_cores : int
        Cores the code may use: the target's ``num-cores`` attribute, 1 when absent.
    """

    name: str
    vector_bits: int
    registers: int
    num_cores: int

    def lanes(self, dtype: str = "float32") -> int:
        """Elements of ``dtype`` in one vector register."""
        return max(self.vector_bits // tvm.DataType(dtype).bits, 1)

    @property
    def fma_by_lane(self) -> bool:
        """Whether an FMA can take its multiplier from one lane of a vector register (NEON ``fmla .s[i]``):
        the GEMM kernel then loads its broadcast operand a vector at a time."""
        return self.name == "neon"

    @property
    def parallel(self) -> bool:
        """Whether loops should be parallelised at all (a 1-core target gets no thread-pool calls)."""
        return self.num_cores > 1


def vector_isa(target: tvm.target.Target) -> VectorISA:
    """Read the vector ISA of an LLVM CPU target.

    Raises
    ------
    TargetError
        When the target is not an LLVM CPU target.
    """
    if target.kind.name != "llvm":
        raise TargetError(f"CPU schedule rules need an llvm target, got '{target.kind.name}'")
    num_cores = int(target.attrs.get("num-cores", 1) or 1)
    triple = str(target.attrs.get("mtriple", "") or "")
    with target:
        if triple.startswith(("aarch64", "arm64")) or target_has_features("neon"):
            return VectorISA("neon", 128, 32, num_cores)
        if target_has_features("avx512f"):
            return VectorISA("avx512", 512, 32, num_cores)
        if target_has_features("avx2"):
            return VectorISA("avx2", 256, 16, num_cores)
    return VectorISA("sse", 128, 16, num_cores)
