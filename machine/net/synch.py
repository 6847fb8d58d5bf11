"""Sleep and wakeup on a channel (NetBSD's tsleep/wakeup), for net's shared resources.

A sender waiting for send-buffer space (sbwait), for mbuf storage (m_get with M_WAIT)
or for loan KVA (sokvareserve) sleeps on the core's one channel until its condition
holds; whatever frees one of them calls `wakeup()`, which is synchronous (no task is
started) and wakes every sleeper to re-check its own condition.

Invariants: a sleeper returns only once its condition held when it last ran (there is
no await between that check and the caller's next statement, so the caller may take
the resource at once); a wakeup reaches every sleeper that was asleep when it was
called; a cancelled sleeper leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class WaitChannel:
    """One wait channel: sleepers re-check their condition at every wakeup."""

    def __init__(self) -> None:
        self._sleepers: list[asyncio.Future[None]] = []

    def __len__(self) -> int:
        """Sleepers now asleep."""
        return len(self._sleepers)

    async def sleep_until(self, cond: Callable[[], bool]) -> None:
        """Return once cond() holds (at once if it does now)."""
        while not cond():
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._sleepers.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                with contextlib.suppress(ValueError):  # not there once a wakeup took it
                    self._sleepers.remove(fut)
                raise

    def wakeup(self) -> None:
        """Wake every sleeper (each re-checks its condition)."""
        sleepers, self._sleepers = self._sleepers, []
        for fut in sleepers:
            if not fut.done():
                fut.set_result(None)
