"""Fix-ups for WGSL that TVM 0.27's webgpu code generator emits but WGSL does not accept.

Each is a textual rewrite of one kernel's source, applied at build time (the artifact holds the fixed source):

- ``inff`` / ``nanf`` (and ``infh`` / ``nanh``): WGSL has no infinity or NaN literal and rejects constant
  expressions that overflow, so they become a run-time ``bitcast<f32>`` of the IEEE bit pattern;
- ``-2147483648i``: the literal ``2147483648i`` does not fit i32 before the minus applies; it becomes
  ``(-2147483647i - 1i)``;
- 8- and 16-bit integers (``i8(x)``, ``u16(x)``, ``var v : i8``): WGSL has none. Values live in i32/u32 and each
  conversion truncates explicitly (``i8(x)`` -> ``((i32(x) << 24u) >> 24u)``), so a value converted to int8
  and back is exactly what it was on the CPU. Arithmetic between two narrow values is not re-truncated: an int8
  sum that overflows keeps its 32-bit result (quantized kernels accumulate in int32 anyway).
"""

from __future__ import annotations

import re

_LITERALS = (
    (re.compile(r"\binff\b"), "bitcast<f32>(0x7f800000u)"),
    (re.compile(r"\bnanf\b"), "bitcast<f32>(0x7fc00000u)"),
    (re.compile(r"\binfh\b"), "f16(bitcast<f32>(0x7f800000u))"),
    (re.compile(r"\bnanh\b"), "f16(bitcast<f32>(0x7fc00000u))"),
    (re.compile(r"(?<![\w.])-2147483648i\b"), "(-2147483647i - 1i)"),
)
# narrow type -> (carrier type, truncating conversion of an expression already in the carrier type)
_NARROW = {
    "i8": ("i32", "(({x} << 24u) >> 24u)"),
    "i16": ("i32", "(({x} << 16u) >> 16u)"),
    "u8": ("u32", "({x} & 0xffu)"),
    "u16": ("u32", "({x} & 0xffffu)"),
}
_CONVERSION = re.compile(r"\b(i8|i16|u8|u16)\(")
_TYPE = re.compile(r"\b(i8|i16|u8|u16)\b")


def _close(text: str, open_at: int) -> int:
    """The index of the parenthesis closing the one at ``open_at``."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced parentheses in WGSL")


def _rewrite_conversions(text: str) -> str:
    while True:
        m = _CONVERSION.search(text)
        if m is None:
            return text
        carrier, truncate = _NARROW[m.group(1)]
        open_at = m.end() - 1
        close = _close(text, open_at)
        inner = _rewrite_conversions(text[open_at + 1:close])
        text = text[:m.start()] + truncate.format(x=f"{carrier}({inner})") + text[close + 1:]


def fix_wgsl(source: str) -> str:
    """``source`` with the rewrites of the module docstring applied (unchanged when none applies)."""
    for pattern, replacement in _LITERALS:
        source = pattern.sub(replacement, source)
    source = _rewrite_conversions(source)
    return _TYPE.sub(lambda m: _NARROW[m.group(1)][0], source)
