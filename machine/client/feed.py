"""WireFeed: one receiver queue in net, long-polled by one task, fanned out to Wires.

A feed is either a session's queue (net.listen / net.recv, shared by every Wire
of the session) or an operator's tap (net.tap_listen / net.tap_recv on the
kernel endpoint); the three calls that reach it are given at construction, so
this module knows neither the session nor the Wire (see Receiver).

Invariants:
  - the queue is listened to (in net) while at least one receiver is added;
    the poll task exists exactly then (`_task`, in the feed's TaskSet): it is
    cancelled and awaited when the last receiver goes or the session closes,
    never left running;
  - every reply of the poll goes to every receiver added at that moment, in
    the order net queued the mbufs;
  - `error` is what ended the poll (a panic, a stop, a timeout); Wire.get
    raises it. Adding a receiver again listens again and clears it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol

from machine.client.errors import MachineError
from machine.ipc.tasks import TaskSet
from machine.proto import NetRecvReply

#: One long poll: at most this many mbufs, waiting at most this long for the first.
RECV_PACKETS = 256
RECV_WAIT_MS = 1000


class Receiver(Protocol):
    """What a feed delivers to (a Wire)."""

    def on_recv(self, rep: NetRecvReply) -> None:
        """Take one poll's mbufs (`rep.packets`) and drop count (`rep.dropped`)."""


class WireFeed:
    """One receiver queue in net, polled by a background task that hands every
    mbuf to each receiver added (see the module's invariants)."""

    def __init__(
        self,
        listen: Callable[[], Awaitable[None]],
        recv: Callable[[int, int], Awaitable[NetRecvReply]],
        unlisten: Callable[[], Awaitable[None]],
    ) -> None:
        self._listen, self._recv, self._unlisten = listen, recv, unlisten
        self.wires: set[Receiver] = set()
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None  # the poll, while listening
        self._tasks = TaskSet()  # holds `_task`; it catches its own errors (`error`)
        self._lock = asyncio.Lock()

    async def add(self, w: Receiver) -> None:
        async with self._lock:
            if self._task is None:
                await self._listen()  # from its reply on, every mbuf is queued for us
                self.error = None
                self._task = self._tasks.spawn(self._poll(), "client wire poll")
            self.wires.add(w)

    async def remove(self, w: Receiver) -> None:
        async with self._lock:
            self.wires.discard(w)
            if not self.wires:
                await self._halt(unlisten=True)

    async def stop(self) -> None:
        """The session is going: stop polling (net ends its listener at detach)."""
        self.wires.clear()
        await self._halt(unlisten=False)

    async def _halt(self, unlisten: bool) -> None:
        if self._task is None:
            return
        self._task = None
        await self._tasks.close()  # cancels the poll and waits until it has ended
        if unlisten and self.error is None:
            with contextlib.suppress(MachineError):
                await self._unlisten()

    async def _poll(self) -> None:
        try:
            while True:
                rep = await self._recv(RECV_PACKETS, RECV_WAIT_MS)
                for w in list(self.wires):
                    w.on_recv(rep)
        except Exception as e:  # a panic, a stop, a timeout: Wire.get raises it
            self.error = e
