"""net's machine-wide caps shared fairly: mbufs (machine.share) and wire_total (the wire's
longest-queue drop, machine.net.wire)."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from machine.net.mbuf import MbufPool
from machine.net.synch import WaitChannel
from machine.net.wire import WIRE_OVERHEAD, Wire, cost
from machine.params import PAGE_SIZE
from machine.proto import WirePacket
from machine.testing import poll_for

GREEDY, A, B = 101, 102, 103


async def test_mbufs_a_greedy_sessions_copy_waits_while_the_others_are_served() -> None:
    """mbufs = 8 pages, 3 live sessions: share 2 pages. The greedy session's third page
    waits (m_get M_WAIT, counted in mbufwaits); the others' copies go at once; the greedy
    one goes on once it gives storage back (its mbufs sent)."""
    pool = MbufPool(WaitChannel(), 8 * PAGE_SIZE, live={GREEDY, A, B})
    await pool.mclget(PAGE_SIZE, GREEDY)
    await pool.mclget(PAGE_SIZE, GREEDY)
    third = asyncio.ensure_future(pool.mclget(PAGE_SIZE, GREEDY))
    await poll_for(lambda: pool.stats["mbufwaits"] == 1, 2, 0.001, "the greedy copy to wait")
    assert not third.done()
    for owner in (A, B):
        await asyncio.wait_for(pool.mclget(2 * PAGE_SIZE, owner), 1)  # their share, at once
    assert pool.mbuf_bytes == 6 * PAGE_SIZE
    assert not third.done()
    pool.mclfree(PAGE_SIZE, GREEDY)  # the driver sent one of its mbufs
    await asyncio.wait_for(third, 1)
    assert pool.share.held == {GREEDY: 2 * PAGE_SIZE, A: 2 * PAGE_SIZE, B: 2 * PAGE_SIZE}
    for owner in (GREEDY, A, B):
        pool.mclfree(2 * PAGE_SIZE, owner)
    assert pool.mbuf_bytes == 0
    assert pool.share.check() == []


def pkt(session: int, n: int) -> WirePacket:
    return WirePacket(session=session, asid=1, sock=1, seq=0, off=0, total=n, payload=b"x" * n,
                      loaned=False)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    budget=st.integers(4, 40),
    arrivals=st.lists(st.integers(0, 4), max_size=120),
)
def test_wire_total_is_max_min_fair(budget: int, arrivals: list[int]) -> None:
    """Longest-queue drop: with k listeners holding packets (the arrival queued), one
    holding at most wire_total // k is never trimmed for wire_total, whatever the others
    queue; the total stays within wire_total."""
    c = cost(pkt(0, 0))
    wire = Wire(wire_bytes=1 << 30, wire_total=budget * c)
    for s in range(5):
        wire.listen(s)
    for session in arrivals:
        q = wire.listeners[session]
        before = {s: (x.nbytes, x.dropped) for s, x in wire.listeners.items()}
        wire.deliver(pkt(session, 0))
        # the queues holding packets once this one was queued, before any drop
        k = sum(1 for s, x in wire.listeners.items() if before[s][0] or x is q)
        for s, x in wire.listeners.items():
            if x.dropped > before[s][1]:  # trimmed by this packet
                assert before[s][0] + (c if x is q else 0) > wire.wire_total // k
        assert wire.wire_queued <= wire.wire_total


def test_wire_total_a_reader_keeps_its_packets_while_a_hoarder_is_trimmed() -> None:
    wire = Wire(wire_bytes=1 << 30, wire_total=10 * (100 + WIRE_OVERHEAD))
    wire.listen(GREEDY)
    wire.listen(A)
    for _ in range(20):
        wire.deliver(pkt(GREEDY, 100))  # never reads
    for _ in range(3):
        wire.deliver(pkt(A, 100))
    assert len(wire.listeners[A].packets) == 3
    assert wire.listeners[A].dropped == 0
    assert wire.listeners[GREEDY].dropped == 13
    assert wire.wire_queued <= wire.wire_total
