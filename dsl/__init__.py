"""The ``.sched`` schedule language: parse, check against the registries, and format back.

``parse_file`` → :class:`~aglmc.dsl.ast.Schedule` → ``check(schedule, catalog)`` → :class:`CheckedSchedule`
→ ``format_schedule`` (the resolved schedule as text). Every user error is a located ``ScheduleError``.
"""

from aglmc.dsl.check import (Catalog, CheckedSchedule, Evaluation, Generation, PassSig, ResolvedStep, ResolvedTarget,
                             check)
from aglmc.dsl.format import format_schedule
from aglmc.dsl.parser import parse_file, parse_text

__all__ = ["parse_text", "parse_file", "check", "format_schedule", "Catalog", "PassSig", "CheckedSchedule",
           "ResolvedStep", "ResolvedTarget", "Evaluation", "Generation"]
