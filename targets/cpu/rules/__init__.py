"""aglmc's CPU schedule rules, one per file, each a ``tvm.s_tir.dlight.ScheduleRule``.

:func:`default_rules` lists them in the order ``ApplyDefaultSchedule`` tries them: the first rule that
matches a function schedules it, and :class:`Fallback` matches everything, so it comes last.
"""

from __future__ import annotations

from .base import RULE_ATTR, CpuRule
from .conv2d import Conv2d
from .depthwise_conv2d import DepthwiseConv2d
from .elementwise import Elementwise
from .fallback import Fallback
from .matmul import Matmul
from .pool import Pool2d
from .reduction import Reduction


def default_rules() -> list[CpuRule]:
    """The rules of an untuned CPU build, most specific first."""
    return [Matmul(), Conv2d(), DepthwiseConv2d(), Pool2d(), Reduction(), Elementwise(), Fallback()]


__all__ = [
    "RULE_ATTR",
    "Conv2d",
    "CpuRule",
    "DepthwiseConv2d",
    "Elementwise",
    "Fallback",
    "Matmul",
    "Pool2d",
    "Reduction",
    "default_rules",
]
