"""Sockets, sends and the wire at the client level, on both transports: what a receiver
gets, a full send buffer, the link's pace, and bad sends (another client's socket or
process, a bad buffer) answered with an error that changes nothing."""

from __future__ import annotations

import asyncio

import pytest

from machine.client import RequestError
from machine.ipc.inmemory import run_simulation
from machine.params import PAGE_SIZE
from machine.proto import NO_HEADER, CtlStats, CtlStatsReply, Errno, NetLink, NetSend
from machine.testing import SimMachine, poll_for
from tests.conftest import Harness


async def test_loaned_and_copied_sends_arrive_in_order_with_their_bytes(harness: Harness) -> None:
    async with harness.attach() as m, m.wire() as wire:
        p = await m.spawn()
        va = await p.mmap(32 * PAGE_SIZE, "rw")
        data = bytes((i * 13) & 0xFF for i in range(32 * PAGE_SIZE))
        await p.store(va, data)
        s = await p.socket()
        small = await p.send(s, va + 5, 1000)  # below the threshold: copied
        big = await p.send(s, va + 7, 20 * PAGE_SIZE)  # loaned, in 64 KiB chunks
        assert (small.copied_bytes, small.loaned_pages) == (1000, 0)
        assert big.loaned_pages == 17 + 5  # each chunk loans the pages it spans (unaligned)
        assert big.seq == small.seq + 1
        first, second = await wire.get(), await wire.get()
        assert (first.seq, first.payload, first.loaned) == (small.seq, data[5:1005], False)
        assert (second.seq, second.payload, second.loaned) == (
            big.seq,
            data[7 : 7 + 20 * PAGE_SIZE],
            True,
        )
        assert first.session == m.session
        assert first.asid == p.pid


async def test_bad_sends_get_errors_and_change_nothing(harness: Harness) -> None:
    async with harness.attach() as a, harness.attach() as b:
        pa = await a.spawn()
        va = await pa.mmap(4 * PAGE_SIZE, "rw")
        await pa.store(va, b"mine" * 1024)
        sa = await pa.socket()
        pb = await b.spawn()
        frames = (await a.stats())["frames"]
        with pytest.raises(RequestError) as ei:  # another client's socket
            await b.call_role("net", NetSend(h=NO_HEADER, asid=pb.pid, sock=sa.id, va=va, n=64))
        assert ei.value.errno is Errno.EPERM
        sb = await pb.socket()
        with pytest.raises(RequestError) as ei:  # a socket of another process
            await b.call_role("net", NetSend(h=NO_HEADER, asid=pa.pid, sock=sb.id, va=va, n=64))
        assert ei.value.errno is Errno.EINVAL
        with pytest.raises(RequestError) as ei:  # nothing mapped there (copy path)
            await pb.send(sb, 0x7000_0000, 100)
        assert ei.value.errno is Errno.EFAULT
        with pytest.raises(RequestError) as ei:  # nothing mapped there (loan path)
            await pb.send(sb, 0x7000_0000, 4 * PAGE_SIZE)
        assert ei.value.errno is Errno.EFAULT
        with pytest.raises(RequestError) as ei:
            await pb.send(type(sb)(pb, 999), va, 10)  # no such socket
        assert ei.value.errno is Errno.EBADF
        after = (await a.stats())["frames"]
        assert (after["free"], after["loaned"]) == (frames["free"], frames["loaned"])
        assert await pa.load(va, 4) == b"mine"
        assert await harness.audit() == []


async def test_a_full_send_buffer_makes_send_wait(harness: Harness) -> None:
    async with harness.attach() as m, m.wire() as wire:
        p = await m.spawn()
        va = await p.mmap(8 * PAGE_SIZE, "rw")
        await p.store(va, b"q" * 8 * PAGE_SIZE)
        s = await p.socket(sndbuf=2 * PAGE_SIZE)
        await harness.kcall("net", NetLink(h=NO_HEADER, hold=True))
        try:
            await p.send(s, va, 2 * PAGE_SIZE)  # fills the send buffer
            second = asyncio.ensure_future(p.send(s, va, PAGE_SIZE))

            async def waiting() -> bool:
                rep = await m.call_role("net", CtlStats(h=NO_HEADER), CtlStatsReply)
                return rep.counters["sbwaits"] >= 1

            await poll_for(waiting, 10, what="the second send to wait for buffer space")
            assert not second.done()
        finally:
            await harness.kcall("net", NetLink(h=NO_HEADER, hold=False))
        await second  # the driver drained the buffer
        assert [len((await wire.get()).payload) for _ in range(2)] == [2 * PAGE_SIZE, PAGE_SIZE]


@pytest.mark.parametrize(
    ("bandwidth_bps", "latency_us", "least_s"),
    [(8_000_000, 0, 0.2048), (0, 50_000, 0.2)],
    ids=["bandwidth", "latency"],
)
def test_the_link_speed_paces_the_wire(bandwidth_bps: int, latency_us: int, least_s: float) -> None:
    """In virtual time: 200 KiB at 1 MB/s take 0.2048 s; four mbufs at 50 ms latency 0.2 s."""

    async def main() -> float:
        boot = SimMachine.boot(seed=2, ram_bytes=1 << 20)
        async with boot as sim, sim.attach() as m, m.wire() as wire:
            p = await m.spawn()
            va = await p.mmap(50 * PAGE_SIZE, "rw")
            await p.store(va, b"w" * 50 * PAGE_SIZE)
            s = await p.socket()
            await sim.kcall(
                "net", NetLink(h=NO_HEADER, bandwidth_bps=bandwidth_bps, latency_us=latency_us)
            )
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await p.send(s, va, 50 * PAGE_SIZE)  # four mbufs (64 + 64 + 64 + 8 KiB)
            await wire.get(60)
            return loop.time() - t0

    took = run_simulation(main())
    assert least_s <= took < least_s + 0.1
