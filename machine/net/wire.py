"""The wire: per-session listeners and the operator's taps, each a bounded queue of mbufs.

An mbuf on the wire (a WirePacket) is queued for its session's listener, if the session
listens (net.listen / net.recv, a long poll), and for every operator tap
(net.tap_listen / net.tap_recv, kernel endpoint, at most MAX_TAPS); nothing carrying a
payload is published. A queue holds at most `wire_bytes` (payload plus WIRE_OVERHEAD per
mbuf): beyond it its own oldest mbufs are dropped. Every queue together holds at most
`wire_total` (`wire_queued`): a packet that would pass it drops the oldest mbufs of the
LARGEST queue (the receiver that hoards pays, not those that read), whichever queue that
is. That is max-min fair (longest-queue drop): with k queues holding packets (the
arriving packet queued), a queue holding at most wire_total // k is never the one
trimmed for wire_total (were every queue that small, the total would not pass
wire_total), so a session that reads keeps its packets
whatever another hoards; a queue loses packets to wire_total only while it is the
largest (give or take the one packet that goes last). This is wire_total's fair share
(machine.share states the rule for the caps a session asks for; the wire's receivers
do not ask, packets arrive, so its share is kept by what it drops). Drops are counted
(the queue's `dropped`, the core's `wiredrops`), never back-pressure on the driver.
A queue ends at unlisten (or when its session ends); its bytes are then given back at once.

A loaned mbuf's payload may be a pinned DMA (machine.net.dma: views of RAM): each queue
that takes the packet holds it (`Dma.hold`), and gives it back when it drops the packet
or ends; `recv` hands its packets' holds to its caller, who releases them once the
bytes are taken (net.recv: when its reply has been sent). A packet no queue takes is
released by the driver at once.

Invariants:
  * a listener's queue holds only its session's mbufs, in the order they left;
  * q.nbytes == the cost of q's packets <= wire_bytes, after every enqueue;
  * wire_queued == the sum of every listener's and tap's nbytes <= wire_total, after
    every enqueue (a tap shares its packets' payloads, so memory is at most that);
  * q.ready is set while q holds a packet (and once q is closed, to end a pending recv).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from dataclasses import dataclass, field

from machine.net.dma import dma_of
from machine.net.knobs import new_stats
from machine.proto import Errno, UserError, WirePacket

WIRE_OVERHEAD = 256  # bytes a queued mbuf costs beyond its payload (measured: ~140-330)
RECV_MAX_BYTES = 1 << 20  # payload in one net.recv reply (at least one mbuf)
MAX_TAPS = 16  # operator taps at once


@dataclass(eq=False)
class WireQueue:
    """One receiver's queue of mbufs from the wire: a session's listener or a tap."""

    packets: collections.deque[WirePacket] = field(default_factory=collections.deque)
    nbytes: int = 0  # payload + WIRE_OVERHEAD of each queued mbuf
    dropped: int = 0  # dropped since the last recv
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # set while not empty
    closed: bool = False


def release(pkt: WirePacket) -> None:
    """A holder is done with the packet's bytes (a pinned DMA completes with the last)."""
    if (d := dma_of(pkt)) is not None:
        d.release()


def cost(pkt: WirePacket) -> int:
    """What a queued mbuf counts against wire_bytes and wire_total."""
    return len(pkt.payload) + WIRE_OVERHEAD


class Wire:
    """Every listener's and tap's queue, and their shared budget."""

    def __init__(
        self, wire_bytes: int, wire_total: int, stats: dict[str, int] | None = None
    ) -> None:
        self.wire_bytes = wire_bytes
        self.wire_total = wire_total
        self.stats = stats if stats is not None else new_stats()  # counts wiredrops
        self.listeners: dict[int, WireQueue] = {}  # session -> its queue
        self.taps: dict[int, WireQueue] = {}
        self.wire_queued = 0  # bytes queued over every listener and tap
        self._tap_ids = itertools.count(1)

    # -- receivers ---------------------------------------------------------------

    def listen(self, session: int) -> None:
        """The session's mbufs are queued for it from now on (idempotent)."""
        self.listeners.setdefault(session, WireQueue())

    def listener(self, session: int) -> WireQueue:
        q = self.listeners.get(session)
        if q is None:
            raise UserError(Errno.EINVAL, "not listening: send net.listen first")
        return q

    def unlisten(self, session: int) -> None:
        self._unlisten(self.listeners, session)

    def tap_listen(self) -> int:
        """A new tap (every session's mbufs). => its id; EAGAIN beyond MAX_TAPS."""
        if len(self.taps) >= MAX_TAPS:
            raise UserError(Errno.EAGAIN, f"the machine holds its limit of {MAX_TAPS} taps")
        tap = next(self._tap_ids)
        self.taps[tap] = WireQueue()
        return tap

    def tap(self, tap: int) -> WireQueue:
        q = self.taps.get(tap)
        if q is None:
            raise UserError(Errno.EINVAL, f"no tap {tap}")
        return q

    def tap_unlisten(self, tap: int) -> None:
        self._unlisten(self.taps, tap)

    def _unlisten(self, queues: dict[int, WireQueue], key: int) -> None:
        q = queues.pop(key, None)
        if q is not None:
            q.closed = True
            for pkt in q.packets:
                release(pkt)
            q.packets.clear()
            self.wire_queued -= q.nbytes
            q.nbytes = 0
            q.ready.set()  # a pending recv answers now

    async def recv(
        self, q: WireQueue, max_packets: int, wait_ms: int
    ) -> tuple[list[WirePacket], int]:
        """Take q's oldest mbufs (at most max_packets and about RECV_MAX_BYTES of payload,
        at least one), waiting up to wait_ms while q is empty. => (them, drops since the
        last recv); the caller releases them (`release`) once their bytes are taken."""
        if not q.packets and wait_ms and not q.closed:
            try:
                await asyncio.wait_for(q.ready.wait(), wait_ms / 1000)
            except TimeoutError:
                pass
        out: list[WirePacket] = []
        size = 0
        while q.packets and len(out) < max_packets:
            pkt = q.packets[0]
            if out and size + len(pkt.payload) > RECV_MAX_BYTES:
                break
            q.packets.popleft()
            q.nbytes -= cost(pkt)
            self.wire_queued -= cost(pkt)
            size += len(pkt.payload)
            out.append(pkt)
        if not q.packets:
            q.ready.clear()
        dropped, q.dropped = q.dropped, 0
        return out, dropped

    # -- the driver's side -----------------------------------------------------------

    def deliver(self, pkt: WirePacket) -> None:
        """Put an mbuf on the wire: its session's listener and every tap."""
        q = self.listeners.get(pkt.session)
        if q is not None:
            self._enqueue(q, pkt)
        for tq in self.taps.values():
            self._enqueue(tq, pkt)

    def _enqueue(self, q: WireQueue, pkt: WirePacket) -> None:
        """Queue an mbuf for one receiver. => q.nbytes <= wire_bytes (q's own oldest go)
        and wire_queued <= wire_total (the oldest of the largest queue go, q or not)."""
        c = cost(pkt)
        if (d := dma_of(pkt)) is not None:
            d.hold()
        q.packets.append(pkt)
        q.nbytes += c
        self.wire_queued += c
        while q.nbytes > self.wire_bytes:
            self._wire_drop(q)
        while self.wire_queued > self.wire_total:  # then some queue is not empty
            self._wire_drop(max(self._queues(), key=lambda x: x.nbytes))
        if q.packets:
            q.ready.set()

    def _wire_drop(self, q: WireQueue) -> None:
        """Drop q's oldest mbuf and count it (q is not empty)."""
        old = q.packets.popleft()
        release(old)
        q.nbytes -= cost(old)
        self.wire_queued -= cost(old)
        q.dropped += 1
        self.stats["wiredrops"] += 1
        if not q.packets:
            q.ready.clear()

    def _queues(self) -> itertools.chain[WireQueue]:
        return itertools.chain(self.listeners.values(), self.taps.values())
