"""The run's final checks wait for the page daemon's pass before counting frames.

A pass claims pages (PG_BUSY) and revokes their mappings; when their owner exits
meanwhile, uvm_anfree only marks them PG_RELEASED and the pass's finish frees them.
Frames counted while the pass is in flight are no leak (issue 13: 162 frames under
bug1999/thorpe/silvers with PCT); a pass that never ends is a hang. The kernel here is
a stand-in Ctx whose daemon ends its pass after a number of polls.
"""

from __future__ import annotations

import asyncio

import pytest

from machine.explore.run import _Found, _Player
from machine.explore.workload import Workload
from machine.ipc.inmemory import run_simulation

MIB = 1 << 20
BUSY = 162  # pages the daemon holds until its finish


class _Kernel:
    """A drained net, a clean audit, and a page daemon whose pass ends after `polls`
    counter reads (never when None): its BUSY pages are freed only then."""

    def __init__(self, polls: int | None) -> None:
        self.polls = polls
        self.reads = 0

    def scanning(self) -> bool:
        return self.polls is None or self.reads <= self.polls

    async def drain(self, timeout_s: float) -> None:
        return None

    async def loans_left(self) -> int:
        return 0

    async def audit(self) -> list[str]:
        return []

    async def counters(self, role: str) -> dict[str, int]:
        assert role == "pdaemon"
        self.reads += 1
        return {"scanning": int(self.scanning())}

    async def frames(self) -> dict[str, int]:
        busy = BUSY if self.scanning() else 0
        return {"total": 512, "free": 512 - busy, "kernel_owned": 0, "swpginuse": 0}


def final(polls: int | None) -> tuple[str, str, float]:
    k = _Kernel(polls)
    found = _Found()
    w = Workload(2 * MIB, 5 * MIB, ("hog",), 0, 0, ())
    player = _Player(w, None, None, k, found)  # type: ignore[arg-type]
    t: list[float] = []

    async def go() -> None:
        await player.final_checks()
        t.append(asyncio.get_running_loop().time())

    run_simulation(go(), limit_s=600)
    return (*found.first(), t[0])


@pytest.mark.timeout(10)
def test_frames_the_daemon_holds_are_counted_after_its_pass_ends() -> None:
    outcome, message, _ = final(polls=5)
    assert outcome == "ok", message


@pytest.mark.timeout(10)
def test_no_pass_running_costs_no_wait() -> None:
    outcome, _, t = final(polls=0)
    assert outcome == "ok"
    assert t == 0.0


@pytest.mark.timeout(10)
def test_a_pass_that_never_ends_is_a_hang_not_a_leak() -> None:
    outcome, message, t = final(polls=None)
    assert outcome == "hang", message
    assert "page daemon's pass did not end" in message
    assert t >= 30.0


@pytest.mark.timeout(10)
def test_the_stand_in_holds_the_frames_while_its_pass_runs() -> None:
    """Without the wait the stand-in's frames would be a leak: the test can fail."""
    k = _Kernel(polls=5)
    fr = asyncio.run(k.frames())
    assert fr["total"] - fr["free"] == BUSY
