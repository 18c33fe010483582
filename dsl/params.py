"""The value types of the ``.sched`` language, and typed parameter declarations.

Passes and targets declare their parameters with :class:`Param`; the schedule checker uses those declarations
to type-check ``key = value`` settings, fill in defaults and report unknown keys with a location and a
"did you mean" hint. This module knows neither lark nor TVM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Tuple


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Ident:
    """A bare identifier used as a value (``metric = accuracy``, ``data = calib``)."""

    name: str

    def __str__(self) -> str:
        return self.name


# Parameter types. 'enum' values are bare identifiers (or strings) from ``choices``; 'dataset' is the name of a
# dataset declared in the schedule; 'list[T]' is a bracketed list of T.
PARAM_TYPES = ("int", "float", "str", "bool", "enum", "dataset", "list[int]", "list[float]", "list[str]")


@dataclass(frozen=True)
class Param:
    """One typed parameter of a pass or a target block.

    Parameters
    ----------
    name : the key the schedule writes (``ratio``).
    type : one of ``PARAM_TYPES``.
    default : the value when the schedule omits the key; ``REQUIRED`` makes it mandatory.
    doc : one line, shown by ``aglmc passes`` and in error hints.
    choices : the allowed values of an ``enum``.
    min, max : inclusive bounds of a number (``min_open``/``max_open`` make them exclusive).
    check : an extra check returning an error message, or None when the value is fine.
    """

    name: str
    type: str
    default: Any = REQUIRED
    doc: str = ""
    choices: Tuple[str, ...] = ()
    min: Optional[float] = None
    max: Optional[float] = None
    min_open: bool = False
    max_open: bool = False
    check: Optional[Callable[[Any], Optional[str]]] = field(default=None, compare=False)

    def __post_init__(self):
        if self.type not in PARAM_TYPES:
            raise ValueError(f"parameter {self.name!r}: unknown type {self.type!r}; one of {PARAM_TYPES}")
        if self.type == "enum" and not self.choices:
            raise ValueError(f"parameter {self.name!r}: an enum needs choices")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe_range(self) -> str:
        if self.min is None and self.max is None:
            return ""
        lo = "(" if self.min_open else "["
        hi = ")" if self.max_open else "]"
        return f"{lo}{'-inf' if self.min is None else self.min}, {'inf' if self.max is None else self.max}{hi}"
