"""Sockets, sends and the wire at the client level, on both transports: what a receiver
gets, a full send buffer, the link's pace, and bad sends (another client's socket or
process, a bad buffer) answered with an error that changes nothing. The wire is per
session (another session's packets never arrive; the operator's tap sees all; a full
queue drops the oldest and says so; every queue together stays within wire_total, the
largest paying); sockets close on close, exit, reap and detach
(queued data still leaves, every loan is returned, the count goes back to 0); at most
limits.sockets per session (EMFILE); net.socket names only the caller's processes."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from machine.client import Machine, MachineTimeout, Process, RequestError, Wire
from machine.ipc.inmemory import run_simulation
from machine.limits import Limits
from machine.net.wire import WIRE_OVERHEAD
from machine.params import PAGE_SIZE
from machine.proto import (
    NO_HEADER,
    CtlStats,
    CtlStatsReply,
    Errno,
    NetLink,
    NetListen,
    NetPacket,
    NetRecv,
    NetRecvReply,
    NetSend,
    NetSocket,
    NetTapListen,
    NetTapListenReply,
    NetTapRecv,
    Reply,
    WirePacket,
    decode_event,
)
from machine.testing import SimMachine, poll_for
from tests.conftest import Harness, SimHarness, boot_real


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
        with pytest.raises(RequestError) as ei:  # another client's socket: as if none
            await b.call_role("net", NetSend(h=NO_HEADER, asid=pb.pid, sock=sa.id, va=va, n=64))
        assert (ei.value.errno, ei.value.detail) == (Errno.EBADF, f"no socket {sa.id}")
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


# -- the wire is per session ------------------------------------------------------------


async def _counters(m: Machine, role: str) -> dict[str, int]:
    rep = await m.call_role(role, CtlStats(h=NO_HEADER), CtlStatsReply)
    return dict(rep.counters)


async def _filled(p: Process, npages: int, byte: bytes) -> int:
    va = await p.mmap(npages * PAGE_SIZE, "rw")
    await p.store(va, byte * npages * PAGE_SIZE)
    return va


async def test_a_session_receives_only_its_own_packets(harness: Harness) -> None:
    """Defect 1 of issue 9's wire: every packet was published on net's PUB for anyone."""
    published: list[str] = []
    if isinstance(harness, SimHarness):  # whatever net publishes, on any PUB
        net = harness.sim.service("net")
        real_publish = net.publish
        net.publish = lambda ev: (published.append(type(ev).__name__), real_publish(ev))  # type: ignore[method-assign]
    async with harness.attach() as a, harness.attach() as b, a.wire() as wa, b.wire() as wb:
        snooped: list[bytes] = []
        assert b.directory is not None
        sub = await b.transport.subscribe(b.directory.roles["net"].pub, "", snooped.append)
        try:
            pa, pb = await a.spawn(), await b.spawn()
            va, vb = await _filled(pa, 4, b"A"), await _filled(pb, 4, b"B")
            sa, sb = await pa.socket(), await pb.socket()
            await pa.send(sa, va, 4 * PAGE_SIZE)  # loaned
            await pa.send(sa, va, 100)  # copied
            await pb.send(sb, vb, 100)
            got_a = [await wa.get(), await wa.get()]
            got_b = await wb.get()
            assert [(x.session, x.payload[:1]) for x in got_a] == [(a.session, b"A")] * 2
            assert (got_b.session, got_b.payload) == (b.session, b"B" * 100)
            with pytest.raises(MachineTimeout):
                await wb.get(0.5)  # a's sends never reach b
        finally:
            await sub.close()
        for raw in snooped:
            assert b"AAAA" not in raw  # no payload on net's PUB
            assert not isinstance(decode_event(raw), NetPacket)
    assert "NetPacket" not in published


async def test_the_operators_tap_sees_every_session(harness: Harness) -> None:
    async with harness.attach() as a, harness.attach() as b:
        async with Wire.tap(harness.kcall, a) as tap:
            pa, pb = await a.spawn(), await b.spawn()
            va, vb = await _filled(pa, 2, b"a"), await _filled(pb, 2, b"b")
            ra = await pa.send(await pa.socket(), va, 2 * PAGE_SIZE)
            rb = await pb.send(await pb.socket(), vb, 10)
            got = {
                (x.session, x.sock, x.seq): x.payload for x in (await tap.get(), await tap.get())
            }
        assert got == {
            (a.session, ra.sock, ra.seq): b"a" * 2 * PAGE_SIZE,
            (b.session, rb.sock, rb.seq): b"b" * 10,
        }


def test_a_full_queue_drops_the_oldest_and_says_so() -> None:
    """wire_bytes bounds a listener's queue (a non-reader holds up nobody): the oldest go."""

    async def main() -> None:
        boot = SimMachine.boot(seed=5, ram_bytes=1 << 20, limits=Limits(wire_bytes=2600))
        async with boot as sim, sim.attach() as m:
            await m.call_role("net", NetListen(h=NO_HEADER))
            p = await m.spawn()
            va = await _filled(p, 1, b"z")
            s = await p.socket()
            seqs = [(await p.send(s, va, 1000)).seq for _ in range(4)]  # 4 mbufs of 1256 B

            async def sent() -> bool:
                return (await _counters(m, "net"))["tx_packets"] >= 4

            await poll_for(sent, 10, what="four mbufs on the wire")
            rep = await m.call_role("net", NetRecv(h=NO_HEADER, wait_ms=0), NetRecvReply)
            assert ([x.seq for x in rep.packets], rep.dropped) == (seqs[2:], 2)
            assert (await _counters(m, "net"))["wiredrops"] == 2
            async with m.wire() as w:  # the client's wire counts what was dropped, too
                await p.send(s, va, 1000)
                assert (await w.get()).seq == seqs[-1] + 1

    run_simulation(main())


@pytest.mark.parametrize("hoarder", ["listener", "tap"])
def test_every_queue_together_stays_within_wire_total_and_the_largest_pays(
    hoarder: str,
) -> None:
    """Red team (issue 9): ten listeners that never read held 167 MB, wire_bytes each.
    limits.wire_total bounds every queue together: once it is full a packet drops the
    oldest of the LARGEST queue (here the one that never reads: a session's listener,
    or an operator's tap), so the session that reads loses nothing; wire_queued equals
    the sum of the queues and never passes the budget, after every enqueue."""
    cost = 1000 + WIRE_OVERHEAD
    budget = 4 * cost + cost // 2  # room for four mbufs of 1000 bytes

    async def main() -> None:
        boot = SimMachine.boot(seed=7, ram_bytes=1 << 20, limits=Limits(wire_total=budget))
        async with boot as sim, sim.attach() as h, sim.attach() as v, v.wire() as wv:
            wire: Any = sim.service("net").net.wire  # type: ignore[attr-defined]
            broken: list[tuple[int, int]] = []
            enqueue = wire._enqueue

            def checked(q: Any, pkt: WirePacket) -> None:
                enqueue(q, pkt)
                total = sum(x.nbytes for x in wire._queues())
                if not wire.wire_queued == total <= budget:
                    broken.append((wire.wire_queued, total))

            wire._enqueue = checked
            tap = 0
            if hoarder == "listener":
                await h.call_role("net", NetListen(h=NO_HEADER))
            else:
                rep = await sim.kcall("net", NetTapListen(h=NO_HEADER))
                assert isinstance(rep, NetTapListenReply)
                tap = rep.tap

            async def take() -> Reply:  # everything the hoarder's queue holds
                if not tap:
                    hoard = NetRecv(h=NO_HEADER, wait_ms=0, max_packets=4096)
                    return await h.call_role("net", hoard, NetRecvReply)
                return await sim.kcall(
                    "net", NetTapRecv(h=NO_HEADER, tap=tap, wait_ms=0, max_packets=4096)
                )

            ph, pv = await h.spawn(), await v.spawn()
            vh, vv = await _filled(ph, 1, b"h"), await _filled(pv, 1, b"v")
            sh, sv = await ph.socket(), await pv.socket()
            hoarded = [(await ph.send(sh, vh, 1000)).seq for _ in range(8)]
            for _ in range(5):  # the hoarder goes on sending; the reader still gets all
                hoarded.append((await ph.send(sh, vh, 1000)).seq)
                r = await pv.send(sv, vv, 1000)
                pkt = await wv.get()
                assert (pkt.sock, pkt.seq, pkt.payload) == (sv.id, r.seq, b"v" * 1000)
            assert wv.dropped == 0
            c = await _counters(v, "net")
            assert 0 < c["wire_queued"] <= budget
            got = await take()
            assert isinstance(got, NetRecvReply)
            assert 0 < len(got.packets) <= 4
            assert got.dropped + len(got.packets) == (13 if hoarder == "listener" else 18)
            assert got.dropped == c["wiredrops"]  # every drop was the hoarder's
            if hoarder == "listener":  # the newest survive, in order
                assert [x.seq for x in got.packets] == hoarded[-len(got.packets) :]
            assert broken == []

    run_simulation(main())


def _vmrss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    raise AssertionError(f"no VmRSS for {pid}")


async def test_listeners_that_never_read_cannot_bloat_net(tmp_path: Path) -> None:
    """The red team's attack on real processes: ten sessions listen, never read, and
    each sends 17 MiB (1 GiB send buffers, as the protocol allows). Before wire_total
    net grew from 32 to 192 MiB; now its queues hold at most wire_total (32M here) and
    its RSS grows by less than that plus 48 MiB."""
    budget = 32 << 20
    rm = boot_real(tmp_path, "--ram", "16M", "--limit", f"wire_total={budget}")
    try:
        net_pid = rm.role_pids()["net"]
        before = _vmrss(net_pid)
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(10):
                m = await stack.enter_async_context(Machine.attach(rm.endpoint))
                await m.call_role("net", NetListen(h=NO_HEADER))
                p = await m.spawn()
                va = await p.mmap(1 << 20, "rw")
                s = await p.socket(sndbuf=1 << 30)
                for _ in range(17):
                    await p.send(s, va, 1 << 20)

            async def sent() -> bool:
                return (await _counters(m, "net"))["tx_bytes"] >= 170 << 20

            await poll_for(sent, 60, 0.1, "every send on the wire")
            c = await _counters(m, "net")
            grew = _vmrss(net_pid) - before
            assert 0 < c["wire_queued"] <= budget
            assert c["wiredrops"] >= (170 << 20) // (64 << 10) - budget // (64 << 10)
            assert grew < budget + (48 << 20), f"net grew by {grew >> 20} MiB"
    finally:
        assert rm.stop() == 0


def test_copied_data_in_net_is_bounded_over_every_session() -> None:
    """limits.mbufs bounds the copied bytes net holds, whoever sends: with the link held,
    a copying send waits for mbuf storage (m_get M_WAIT) instead of growing the kernel.
    With two live sessions each one's fair share is mbufs // 3 (machine.share: one share
    is kept for a newcomer), so here a's second copy waits at its share, before the pool
    itself is full: 4096 each, and a 4000-byte copy of each fits its own share."""

    async def main() -> None:
        boot = SimMachine.boot(seed=6, ram_bytes=1 << 20, limits=Limits(mbufs=3 * 4096))
        async with boot as sim, sim.attach() as a, sim.attach() as b, a.wire() as wa:
            await sim.kcall("net", NetLink(h=NO_HEADER, hold=True))
            pa, pb = await a.spawn(), await b.spawn()
            va, vb = await _filled(pa, 1, b"a"), await _filled(pb, 1, b"b")
            sa, sb = await pa.socket(), await pb.socket()
            await pa.send(sa, va, 4000)  # below the loan threshold: copied
            await pb.send(sb, vb, 4000)
            third = asyncio.ensure_future(pa.send(sa, va, 4000))

            async def waiting() -> bool:
                c = await _counters(a, "net")
                return c["mbufwaits"] >= 1 and c["mbuf_bytes"] == 8000

            await poll_for(waiting, 10, what="a copy waiting for mbuf storage")
            assert not third.done()
            await sim.kcall("net", NetLink(h=NO_HEADER, hold=False))
            await asyncio.wait_for(third, 10)
            got = [await wa.get() for _ in range(2)]
            assert [p.payload for p in got] == [b"a" * 4000] * 2
            assert (await _counters(a, "net"))["mbuf_bytes"] <= 4000

    run_simulation(main())


# -- sockets close ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["exit", "fork_exit", "reaped", "detach"])
async def test_sockets_close_when_their_process_goes_and_queued_data_still_leaves(
    harness: Harness, how: str
) -> None:
    """Defect 4 of issue 9: a socket's record lived forever. Now the descriptor closes
    at exit, reap and detach; with the link held its loaned and copied mbufs stay
    queued, then reach the wire, every loan is returned and the count returns to 0."""
    async with harness.attach() as watcher, Wire.tap(harness.kcall) as tap:
        free0 = (await watcher.stats())["frames"]["free"]
        reaped0 = (await _counters(watcher, "uvm")).get("reaped", 0)
        await harness.kcall("net", NetLink(h=NO_HEADER, hold=True))
        try:
            async with harness.attach(keepalive=how != "reaped") as m:
                p = await m.spawn()
                va = await _filled(p, 8, b"L")
                sender = await p.fork() if how == "fork_exit" else p
                s = await sender.socket()
                big = await sender.send(s, va, 8 * PAGE_SIZE)  # loaned: 2 mbufs of 4 pages
                small = await sender.send(s, va + 1, 100)  # copied
                await sender.store(va, b"N" * PAGE_SIZE)  # a loan break: the wire keeps "L"
                before = await _counters(watcher, "net")
                assert before["sockets"] >= 1
                if how == "exit":
                    await p.exit()
                elif how == "fork_exit":
                    await sender.exit()
                    ps = await p.socket()  # the parent's own descriptors are untouched
                    await p.send(ps, va, 10)
                    await p.exit()
                elif how == "reaped":  # no keepalive: the lease runs out

                    async def reaped() -> bool:
                        return (await _counters(watcher, "uvm")).get("reaped", 0) > reaped0

                    await poll_for(reaped, 20, 0.1, "the session's lease to run out")

            async def closed() -> bool:
                return (await _counters(watcher, "net"))["soclosed"] > before["soclosed"]

            await poll_for(closed, 20, 0.05, "the socket to be closed")
            assert (await _counters(watcher, "net"))["sockets"] >= 1  # still draining
        finally:
            await harness.kcall("net", NetLink(h=NO_HEADER, hold=False))
        got = {}
        for _ in range(3 if how == "fork_exit" else 2):
            pkt = await tap.get()
            got[(pkt.sock, pkt.seq)] = pkt.payload
        assert got[(s.id, big.seq)] == b"L" * 8 * PAGE_SIZE
        assert got[(s.id, small.seq)] == b"L" * 100

        async def drained() -> bool:
            c = await _counters(watcher, "net")
            return c["sockets"] == 0 and c["pendfree"] == c["loaned_chunks"] and not c["txq"]

        await poll_for(drained, 20, 0.05, "every socket freed and every loan returned")
        frames = (await watcher.stats())["frames"]
        assert (frames["loaned"], frames["free"]) == (0, free0)
    assert await harness.audit() == []


def test_a_lost_exit_event_still_closes_the_socket() -> None:
    """uvm.proc_exited is fire-and-forget: net's reconciliation with uvm.owners closes
    the socket of a process whose event never arrived."""

    async def main() -> None:
        async with SimMachine.boot(seed=9, ram_bytes=1 << 20) as sim, sim.attach() as m:
            net = sim.service("net")
            await net._uvm_sub.close()  # type: ignore[attr-defined,union-attr]
            p = await m.spawn()
            await p.socket()
            await p.socket()
            assert (await _counters(m, "net"))["sockets"] == 2
            await p.exit()

            async def freed() -> bool:
                return (await _counters(m, "net"))["sockets"] == 0

            await poll_for(freed, 10, what="reconciliation to close the sockets")
            assert (await _counters(m, "net"))["reconciles"] >= 1

    run_simulation(main())


async def test_close_twice_is_ebadf_and_close_ends_a_waiting_send(harness: Harness) -> None:
    async with harness.attach() as m, m.wire() as wire:
        p = await m.spawn()
        va = await _filled(p, 4, b"c")
        s = await p.socket(sndbuf=2 * PAGE_SIZE)
        await harness.kcall("net", NetLink(h=NO_HEADER, hold=True))
        try:
            first = await p.send(s, va, 2 * PAGE_SIZE)  # fills the send buffer
            waiting = asyncio.ensure_future(p.send(s, va, PAGE_SIZE))

            async def blocked() -> bool:
                return (await _counters(m, "net"))["sbwaits"] >= 1 and not waiting.done()

            await poll_for(blocked, 10, what="the second send to wait for buffer space")
            await s.close()
            with pytest.raises(RequestError) as ei:
                await waiting  # soclose kicked it out of sbwait
            assert ei.value.errno is Errno.EBADF
            with pytest.raises(RequestError) as ei:
                await s.close()
            assert ei.value.errno is Errno.EBADF
            with pytest.raises(RequestError) as ei:
                await p.send(s, va, 10)
            assert ei.value.errno is Errno.EBADF
        finally:
            await harness.kcall("net", NetLink(h=NO_HEADER, hold=False))
        pkt = await wire.get()  # queued before the close: still sent
        assert (pkt.seq, pkt.payload) == (first.seq, b"c" * 2 * PAGE_SIZE)
        with pytest.raises(MachineTimeout):
            await wire.get(0.3)  # the send the close interrupted queued nothing


def test_a_session_holds_at_most_the_sockets_limit() -> None:
    async def main() -> None:
        boot = SimMachine.boot(seed=4, ram_bytes=1 << 20, limits=Limits(sockets=4))
        async with boot as sim, sim.attach() as a, sim.attach() as b:
            pa = await a.spawn()
            socks = [await pa.socket() for _ in range(4)]
            with pytest.raises(RequestError) as ei:
                await pa.socket()
            assert ei.value.errno is Errno.EMFILE
            pb = await b.spawn()
            assert len([await pb.socket() for _ in range(4)]) == 4  # per session
            await socks[0].close()  # nothing queued: the record is freed at once
            await pa.socket()

    run_simulation(main())


async def test_a_socket_only_for_the_callers_own_process(harness: Harness) -> None:
    async with harness.attach() as a, harness.attach() as b:
        pa = await a.spawn()
        sockets = (await _counters(a, "net"))["sockets"]
        errors = []
        for asid in (pa.pid, pa.pid + 100_000):  # another session's, and nobody's
            with pytest.raises(RequestError) as ei:
                await b.call_role("net", NetSocket(h=NO_HEADER, asid=asid), Reply)
            errors.append((ei.value.errno, ei.value.detail.replace(str(asid), "N")))
        assert errors == [(Errno.ESRCH, "no process with asid N")] * 2
        assert (await _counters(a, "net"))["sockets"] == sockets


async def test_a_listener_ends_with_its_session(harness: Harness) -> None:
    """A session that ends while listening (here: detach with its wire still open) loses
    its queue: net learns of it from uvm (uvm.owners) and drops the listener."""
    async with harness.attach() as watcher:
        listeners = (await _counters(watcher, "net"))["listeners"]
        async with harness.attach() as m:
            await m.wire().open()  # never closed: the session just goes
            assert (await _counters(watcher, "net"))["listeners"] == listeners + 1

        async def ended() -> bool:
            return (await _counters(watcher, "net"))["listeners"] == listeners

        await poll_for(ended, 10, 0.05, "the ended session's listener to go")
