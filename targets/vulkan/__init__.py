"""The vulkan target: TVM's GPU kernels as WGSL, run on Vulkan devices through wgpu (see shared/VULKAN.md).

Build side (imports TVM):

- ``target.py``       ``VulkanTarget`` (``target vulkan { ... }``): the build steps, in order;
- ``narrow_int64.py`` NarrowInt64: int64 tensors become int32 (WGSL has no 64-bit integers);
- ``widen_bool.py``   RunOnInt32 and WidenBool: bool and 8/16-bit tensors are stored as int32;
- ``pack_weights.py`` PackWeights: int8 / int4 weight constants as u32 words, unpacked inside the conv2d / matmul;
- ``exact_floats.py`` ExactFloatLiterals: float32 constants reach WGSL exactly (TVM prints seven digits);
- ``lower.py``        TVM's GPU pipeline (dlight schedules), WGSL code generation, the MakePackedAPI capture;
- ``wgsl.py``         fix-ups of WGSL that TVM emits but wgpu rejects (``inff``, INT_MIN, ``i8``);
- ``plan.py``         the launch plan read from the lowered Relax ``main`` and TVM's host functions.

Run side (wgpu and numpy only, never TVM): ``artifact.py`` (the zip format and plan expressions) and
``runtime.py`` (``VulkanRunner``), ``llm.py`` (``VulkanLlmRunner``: prefill and decode). Importing this package
imports neither side.
"""
