"""Write a checked schedule back as ``.sched`` text, every default filled in.

The output is deterministic (statements in a fixed order, settings in their declaration order, floats written
with ``repr``) and parses and checks back to an equal :class:`CheckedSchedule`, so a build artifact can carry the
exact schedule it was built from and two builds can be diffed. Settings left unset (None) are omitted. String
values are always quoted, which the checker accepts for enum and dataset settings too.
"""

from __future__ import annotations

import math
from typing import Any, List, Mapping

from aglmc.dsl.check import CheckedSchedule, ResolvedStep

__all__ = ["format_schedule"]

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}


def format_schedule(checked: CheckedSchedule) -> str:
    """The resolved schedule as ``.sched`` text (see the module docstring)."""
    head = [f"model {_quote(checked.model.source.text)}"]
    head += [f"input {i.name}: {i.dtype}[{', '.join(map(str, i.shape))}]" for i in checked.inputs]
    head += [f"dataset {d.name} = {_quote(d.source.text)}" for d in checked.datasets.values()]
    sections = [head]
    if checked.evaluation is not None:
        e = checked.evaluation
        settings = {"data": e.data, "metric": e.metric, "tolerance": e.tolerance, "metric_drop": e.metric_drop,
                    "limit": e.limit}
        sections.append(_block("evaluate", settings))
    if checked.generation is not None:
        sections.append(_block("generate", checked.generation.params))
    if checked.steps:
        sections.append([line for step in checked.steps for line in _block(_step_head(step), step.params)])
    sections.append([line for t in checked.targets for line in _block(f"target {t.kind}", t.params)])
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _step_head(step: ResolvedStep) -> str:
    head = f"pass {step.name}"
    if step.selector.ops:
        head += f" on {', '.join(step.selector.ops)}"
    if step.selector.path is not None:
        head += f" in {_quote(step.selector.path)}"
    return head


def _block(head: str, settings: Mapping[str, Any]) -> List[str]:
    body = [f"    {key} = {_literal(value)}" for key, value in settings.items() if value is not None]
    return [f"{head} {{", *body, "}"] if body else [head]


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, tuple):
        return f"[{', '.join(map(_literal, value))}]"
    raise TypeError(f"a schedule cannot hold the value {value!r}")


def _quote(text: str) -> str:
    return '"' + "".join(_ESCAPES.get(c, c) for c in text) + '"'
