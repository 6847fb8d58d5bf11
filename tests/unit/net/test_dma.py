"""DMA straight from RAM (machine.net.dma): a loaned mbuf's packet carries views of its
pinned frames until the wire has taken the bytes; a revocation in that window waits for
the DMA (the frames stay loaned), so the wire carries the bytes as they were at send."""

from __future__ import annotations

import asyncio
import random

from machine.ipc.framed import Framed
from machine.ipc.inmemory import InMemoryTransport
from machine.kpt import KernelPageTable
from machine.net.core import Net
from machine.net.dma import DMA_HOLD_S, dma_of
from machine.net.service import NetService
from machine.params import PAGE_SHIFT, PAGE_SIZE
from machine.proto import Header, NetRecv, NetRecvReply, attach_frames
from machine.testing import poll_for
from tests.unit.net.fakes import ASID, OWNER, VA0, FakeKernel, driving, make_net, user_bytes


def _service() -> tuple[NetService, Net, FakeKernel, KernelPageTable]:
    kpt = KernelPageTable.anonymous()
    svc = NetService(InMemoryTransport(1), rng=random.Random(1))
    svc.net, k = make_net(kpt=kpt)
    return svc, svc.net, k, kpt


def _recv(frames: bool) -> NetRecv:
    return NetRecv(h=Header(msg_id=1, sender="c", incarnation=OWNER), wait_ms=0, frames=frames)


async def _queued(net: Net, n: int) -> None:
    q = net.wire.listeners[OWNER]
    await poll_for(lambda: len(q.packets) == n, 2, 0.001, "the packets on the wire")


async def test_a_revocation_in_the_dma_window_waits_and_the_wire_carries_the_sent_bytes() -> None:
    svc, net, k, kpt = _service()
    net.wire.listen(OWNER)
    so = await net.socreate(OWNER, ASID, 1 << 24)
    n = 2 * PAGE_SIZE
    sent = user_bytes(VA0, n)
    await net.sosend.send(so, ASID, VA0, n, OWNER)
    async with driving(net, capture=False):
        await _queued(net, 1)
        (pkt,) = net.wire.listeners[OWNER].packets
        d = dma_of(pkt)
        assert d is not None
        assert d.pinned
        vpns = set(kpt.written)
        assert vpns
        assert k.loans
        # The revocation (the mmu's pmap_page_protect NONE): the entry goes, a reader is
        # inside, so the mmu's reply waits (K3); uvm reuses the frames only after it.
        assert all(kpt.clear(v) for v in vpns)
        pfns = sorted(k.loans)
        ram = net.driver.ram
        assert ram is not None

        async def uvm_reuses() -> None:
            await poll_for(lambda: not kpt.inside(vpns), 2, 0, "the shootdown's wait")
            for pfn in pfns:  # another owner's bytes in the frames now
                ram.view[pfn << PAGE_SHIFT : (pfn + 1) << PAGE_SHIFT] = bytes(PAGE_SIZE)

        reuse = asyncio.ensure_future(uvm_reuses())
        for _ in range(50):  # loop turns: the shootdown polls, the driver runs
            await asyncio.sleep(0)
        assert not reuse.done()  # the DMA has not completed: the frames stay as they were
        out = await svc.on_recv(_recv(frames=True))
        assert isinstance(out, Framed)
        wire_bytes = [bytes(f) for f in out.frames]  # what libzmq's send copies
        assert not reuse.done()
        out.on_sent()  # the transport has taken them: the DMA completes
        await asyncio.wait_for(reuse, 2)
        rep = attach_frames(out.reply, wire_bytes)
        assert isinstance(rep, NetRecvReply)
        assert rep.packets[0].payload == sent  # the bytes as they were at send
        assert net.stats["dma_revoked"] == 1
        await poll_for(lambda: not k.loans, 2, 0.001, "the loans to return")
    assert k.ops("kextract") == []


async def test_a_packet_no_receiver_takes_is_copied_out_of_ram_after_the_hold() -> None:
    svc, net, k, kpt = _service()
    net.wire.listen(OWNER)
    so = await net.socreate(OWNER, ASID, 1 << 24)
    n = 3 * PAGE_SIZE + 100
    await net.sosend.send(so, ASID, VA0, n, OWNER)
    async with driving(net, capture=False):
        await _queued(net, 1)
        vpns = set(kpt.written)
        assert kpt.inside(vpns)  # pinned: the reader is inside its frames
        await poll_for(lambda: not k.loans, 10 * DMA_HOLD_S + 2, 0.001, "the hold to end")
        assert net.stats["dma_timeouts"] == 1
        assert not kpt.inside(vpns)
        ram = net.driver.ram
        assert ram is not None
        ram.view[:] = bytes(len(ram.view))  # RAM reused: the packet holds its own copy
        rep = await svc.on_recv(_recv(frames=False))
    assert isinstance(rep, NetRecvReply)
    assert rep.packets[0].payload == user_bytes(VA0, n)


async def test_packets_complete_when_taken_dropped_or_unheard() -> None:
    svc, net, k, _kpt = _service()
    so = await net.socreate(OWNER, ASID, 1 << 24)
    async with driving(net, capture=False):
        await net.sosend.send(so, ASID, VA0, 2 * PAGE_SIZE, OWNER)  # no listener
        await poll_for(lambda: not k.loans, 2, 0.001, "an unheard packet's loans")
        net.wire.listen(OWNER)
        await net.sosend.send(so, ASID, VA0, 2 * PAGE_SIZE, OWNER)
        await _queued(net, 1)
        assert k.loans
        net.wire.unlisten(OWNER)  # the queue ends: its packets are dropped
        await poll_for(lambda: not k.loans, 2, 0.001, "a dropped packet's loans")
        net.wire.listen(OWNER)
        await net.sosend.send(so, ASID, VA0 + PAGE_SIZE, 2 * PAGE_SIZE, OWNER)
        await _queued(net, 1)
        rep = await svc.on_recv(_recv(frames=False))  # joined into the reply: taken
        assert isinstance(rep, NetRecvReply)
        assert rep.packets[0].payload == user_bytes(VA0 + PAGE_SIZE, 2 * PAGE_SIZE)
        await poll_for(lambda: not k.loans, 2, 0.001, "a taken packet's loans")
    assert net.stats["dma_pins"] == 3
    assert net.stats["dma_timeouts"] == 0
