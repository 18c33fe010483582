"""Typed, located errors shared by every layer of aglmc.

Every error a user can cause derives from :class:`AglmcError`. It carries where the problem is (a place in a
``.sched`` file, a graph node, a file) and renders as one readable message, never as a traceback. The command
line maps ``AglmcError`` to exit code 1 and anything else to exit code 2 (an internal error).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Optional


@dataclass(frozen=True)
class Location:
    """A span in a source file; lines and columns are 1-based, ``end_col`` is exclusive."""

    file: str
    line: int
    col: int
    end_line: int = 0
    end_col: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def did_you_mean(name: str, candidates: Iterable[str]) -> Optional[str]:
    """A 'did you mean' hint for a misspelt ``name``, or None when nothing is close."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


class AglmcError(Exception):
    """A user-facing error: a message, an optional location and an optional hint.

    ``source`` is the text of the file the location points into; when it is given, the rendered message shows
    the offending line with a caret under the span.
    """

    kind = "error"

    def __init__(self, message: str, location: Optional[Location] = None, *, hint: Optional[str] = None,
                 source: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.location = location
        self.hint = hint
        self.source = source

    def render(self) -> str:
        head = f"{self.location}: error: {self.message}" if self.location else f"error: {self.message}"
        lines = [head]
        loc = self.location
        if loc is not None and self.source is not None and 1 <= loc.line <= len(self.source.splitlines()):
            text = self.source.splitlines()[loc.line - 1].expandtabs(1)
            width = 1
            if loc.end_line == loc.line and loc.end_col > loc.col:
                width = loc.end_col - loc.col
            gutter = f"{loc.line:>5} | "
            lines.append(gutter + text)
            lines.append(" " * (len(gutter) - 2) + "| " + " " * (loc.col - 1) + "^" * width)
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class ScheduleError(AglmcError):
    """A ``.sched`` file that does not parse or does not check (always located in the file)."""


class ModelError(AglmcError):
    """A model that cannot be loaded, exported or imported (names the file, node or op)."""


class PassError(AglmcError):
    """A pass that cannot run on this graph (names the pass, and the node and op where it failed)."""


class TargetError(AglmcError):
    """A target that cannot be built for: a missing toolchain, an unsupported op, a bad setting."""


class VerifyError(AglmcError):
    """A built model whose outputs are further from the original than the schedule allows."""


class ArtifactError(AglmcError):
    """An artifact folder that is missing, incomplete or does not match the request."""
