"""aglmc: compile trained models for ARM boards and Vulkan devices.

The repository root is the ``aglmc`` package (see ``pyproject.toml``): ``aglmc.dsl`` parses ``.sched`` files,
``aglmc.passes`` transforms FX and ONNX graphs, ``aglmc.targets`` lowers through Apache TVM, and
``aglmc.compiler`` wires them together and owns the command line.
"""

__version__ = "0.1.0"
