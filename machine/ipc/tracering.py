"""The role's trace: the last TRACE_LEN lines of what it did, in words (UVMHIST's spirit).

Handlers and cores append a line for what a person reading a crash dump needs
(a request's tag and sender, a panic, a check that failed, a daemon's wake-up);
ctl.dump and ctl.panic carry its tail. The machine's inputs themselves, with
their bytes, are the flight recorder's (machine.ipc.recorder).

Invariant: nothing a client sends makes it grow with its input: at most
TRACE_LEN lines, each cut to TRACE_LINE characters.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

TRACE_LEN = 256
TRACE_LINE = 256


class TraceRing(collections.deque[str]):
    """The role's trace: the last TRACE_LEN lines, each at most TRACE_LINE characters."""

    def __init__(self) -> None:
        super().__init__(maxlen=TRACE_LEN)

    def append(self, line: str) -> None:
        super().append(line if len(line) <= TRACE_LINE else line[: TRACE_LINE - 3] + "...")

    def extend(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.append(line)
