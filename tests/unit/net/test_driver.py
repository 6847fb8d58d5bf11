"""The driver without a bus: the ring of 8, transmit order and speed, sopendfree, faults."""

from __future__ import annotations

import asyncio

from machine.ipc.peer import PeerPanic
from machine.net.core import Net
from machine.net.knobs import RING, SOCK_LOAN_CHUNK
from machine.net.socket import Socket
from machine.params import PAGE_SIZE
from machine.testing import poll_for
from tests.unit.net.fakes import ASID, OWNER, PFN0, VA0, FakeClock, driving, make_net, user_bytes

K64 = SOCK_LOAN_CHUNK


async def sock(net: Net) -> Socket:
    return await net.socreate(OWNER, ASID, 1 << 24)


async def send(net: Net, so: Socket, va: int, n: int) -> int:
    return (await net.sosend.send(so, ASID, va, n, OWNER)).seq


async def test_the_dma_runs_at_most_a_ring_of_8_ahead_of_a_stalled_wire() -> None:
    clock = FakeClock()
    net, k = make_net(clock=clock)
    net.driver.latency_us = 10
    clock.gate = asyncio.Event()  # the wire stalls on the first mbuf
    so = await sock(net)
    for i in range(14):
        await send(net, so, VA0 + i * PAGE_SIZE, PAGE_SIZE)
    async with driving(net) as (wire, _):
        await poll_for(lambda: net.driver.ring.full(), 2, 0.001, "the ring to fill")
        for _ in range(10):
            await asyncio.sleep(0)
        # one on the wire, RING in the ring, one waiting for a slot (its DMA started)
        assert len(k.ops("kextract")) == RING + 2
        assert net.driver.txq.qsize() == 14 - RING - 2
        assert wire == []
        clock.gate.set()
        await poll_for(lambda: len(wire) == 14, 2, 0.001, "every mbuf on the wire")
    assert clock.slept == [10e-6] * 14


async def test_mbufs_go_out_in_queue_order_even_when_a_later_dma_finishes_first() -> None:
    net, k = make_net()
    a, b = await sock(net), await sock(net)
    seqs = [
        (a.id, await send(net, a, VA0, 2 * PAGE_SIZE)),  # loaned
        (b.id, await send(net, b, VA0 + 8 * PAGE_SIZE, 100)),  # copied
        (a.id, await send(net, a, VA0 + 4 * PAGE_SIZE, K64 + PAGE_SIZE)),  # loaned, 2 mbufs
        (b.id, await send(net, b, VA0 + 40 * PAGE_SIZE, PAGE_SIZE)),  # loaned
    ]
    first = net.driver.txq._queue[0]  # type: ignore[attr-defined]
    k.slow[first.kva] = asyncio.Event()  # the first mbuf's DMA is the slowest
    async with driving(net) as (wire, _):
        await poll_for(lambda: len(k.ops("kextract")) == 4, 2, 0.001, "every DMA to start")
        for _ in range(10):
            await asyncio.sleep(0)
        assert wire == []  # nothing overtakes the first
        k.slow[first.kva].set()
        await poll_for(lambda: len(wire) == 5, 2, 0.001, "every mbuf on the wire")
    assert [(p.sock, p.seq, p.off) for p in wire] == [
        (seqs[0][0], seqs[0][1], 0),
        (seqs[1][0], seqs[1][1], 0),
        (seqs[2][0], seqs[2][1], 0),
        (seqs[2][0], seqs[2][1], K64),
        (seqs[3][0], seqs[3][1], 0),
    ]
    assert wire[3].payload == user_bytes(VA0 + 4 * PAGE_SIZE + K64, PAGE_SIZE)
    assert [p.loaned for p in wire] == [True, False, True, True, True]


async def test_sopendfree_kremoves_then_unloans_then_releases_the_kva() -> None:
    net, k = make_net()
    so = await sock(net)
    await send(net, so, VA0 + 100, 2 * K64)  # two loaned mbufs of 17 pages
    kvas = [m.kva for m in net.driver.txq._queue]  # type: ignore[attr-defined]
    pfns = {m.kva: m.pfns for m in net.driver.txq._queue}  # type: ignore[attr-defined]
    net.sockets.soclose(so, "test")  # the record goes once its loans are back
    async with driving(net) as (wire, _):
        await poll_for(lambda: net.stats["pendfree"] == 2, 2, 0.001, "sopendfree")
    assert len(wire) == 2
    for kva in kvas:
        order = [op for op, args in k.calls if op in ("kremove", "unloan") and kva in args]
        assert order == ["kremove", "unloan"]
        assert (kva, 17) in k.ops("kremove")
        assert (pfns[kva], kva, 17) in k.ops("unloan")
    assert not k.loans  # every page's loan was returned
    assert not k.kmap  # every kernel mapping removed
    assert net.kva.socurkva == 0
    assert net.kva.slots_held == 0
    assert so.loans == 0
    assert so.id not in net.sockets.sockets  # freed with its last loan


async def test_copied_mbufs_give_their_storage_back_on_the_wire_and_need_no_free() -> None:
    net, k = make_net(loan_thresh=-1)
    so = await sock(net)
    await send(net, so, VA0, 3 * PAGE_SIZE)
    assert net.pool.mbuf_bytes == 3 * PAGE_SIZE
    async with driving(net) as (wire, _):
        await poll_for(lambda: len(wire) == 1, 2, 0.001, "the mbuf on the wire")
    assert net.pool.mbuf_bytes == 0
    assert so.cc == 0
    assert k.ops("kremove") == []
    assert k.ops("unloan") == []


async def test_a_missing_translation_is_a_kernel_fault_with_the_evidence() -> None:
    net, k = make_net()
    so = await sock(net)
    seq = await send(net, so, VA0, 4 * PAGE_SIZE)
    mb = net.driver.txq._queue[0]  # type: ignore[attr-defined]
    del k.kmap[(mb.kva >> 12) + 2]  # the page daemon revoked the third page's mapping
    async with driving(net) as (wire, _):
        await poll_for(lambda: len(wire) == 1, 2, 0.001, "the mbuf on the wire")
    ((va, asid, owner, evidence, pfn),) = k.ops("kfault")
    assert (va, asid, owner, pfn) == (mb.kva + 2 * PAGE_SIZE, 0, 0, PFN0 + 2)
    assert f"socket {so.id} send {seq}" in evidence
    assert "revoked by pdaemon" in evidence
    assert net.stats["kfaults"] == 1
    assert len(k.ops("kextract")) == 2  # translated again once resolved
    assert wire[0].payload == user_bytes(VA0, 4 * PAGE_SIZE)


async def test_a_kernel_fault_uvm_panics_on_stops_the_driver_with_the_peer_panic() -> None:
    net, k = make_net()
    k.kfault_resolves = False
    so = await sock(net)
    await send(net, so, VA0, PAGE_SIZE)
    k.kmap.clear()
    async with driving(net) as (wire, task):
        panic = await asyncio.wait_for(task, 2)
    assert isinstance(panic, PeerPanic)
    assert "kernel page fault" in panic.detail
    assert wire == []


async def test_a_held_link_sends_nothing_until_released() -> None:
    net, k = make_net()
    so = await sock(net)
    net.driver.hold(True)
    await send(net, so, VA0, PAGE_SIZE)
    async with driving(net) as (wire, _):
        for _ in range(20):
            await asyncio.sleep(0)
        assert wire == []
        assert k.ops("kextract") == []  # not even the DMA starts
        net.driver.hold(False)
        await poll_for(lambda: len(wire) == 1, 2, 0.001, "the mbuf on the wire")


async def test_one_ring_pass_translates_every_mbuf_it_takes_in_one_message() -> None:
    net, k = make_net()
    so = await sock(net)
    await send(net, so, VA0, 4 * K64)  # four loaned mbufs, queued before the driver runs
    async with driving(net) as (wire, _):
        await poll_for(lambda: net.stats["pendfree"] == 4, 2, 0.001, "sopendfree")
    assert len(wire) == 4
    assert k.ops("kextracts") == [[(m, 16) for m in sorted({kva for kva, _ in k.ops("kextract")})]]
    assert len(k.ops("kremove")) == len(k.ops("unloan")) == 4  # every mbuf freed, per mbuf
    assert len(k.ops("kremoves")) == len(k.ops("unloans")) <= 4  # in batches
    assert net.stats["driver_msgs"] == 1 + 2 * len(k.ops("kremoves"))
