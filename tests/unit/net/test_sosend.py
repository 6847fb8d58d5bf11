"""sosend without a bus: chunks, loan or copy, sb_cc and somaxkva back-pressure, errors."""

from __future__ import annotations

import asyncio

import pytest

from machine.limits import Limits
from machine.net.core import Net
from machine.net.knobs import SOCK_LOAN_CHUNK
from machine.net.mbuf import Mbuf
from machine.net.socket import Socket
from machine.net.sosend import npages_of
from machine.params import PAGE_SIZE, trunc_page
from machine.proto import Errno, UserError
from machine.testing import poll_for
from tests.unit.net.fakes import ASID, OWNER, VA0, FakeKernel, driving, make_net, user_bytes

K64 = SOCK_LOAN_CHUNK


def queued(net: Net) -> list[Mbuf]:
    """The mbufs in the transmit queue, in order (without taking them)."""
    return list(net.driver.txq._queue)  # type: ignore[attr-defined]


async def sock(net: Net, sndbuf: int = 1 << 20) -> Socket:
    return await net.socreate(OWNER, ASID, sndbuf)


async def drained(net: Net, k: FakeKernel) -> None:
    """Every mbuf sent and every loan returned; then nothing is left anywhere."""
    await poll_for(
        lambda: not net.driver.queued and not net.driver.pendfree.qsize() and not k.loans,
        2,
        0.001,
        "the driver to drain",
    )
    await poll_for(lambda: net.kva.socurkva == 0, 2, 0.001, "loan KVA to be released")
    assert net.pool.mbuf_bytes == 0
    assert net.kva.slots_held == 0
    assert not k.kmap


async def test_a_send_is_cut_into_loan_chunks_at_64k_and_each_is_loaned_once() -> None:
    net, k = make_net()
    so = await sock(net)
    va, n = VA0 + 123, 3 * K64 + 8292  # unaligned start; the tail is still >= the threshold
    res = await net.sosend.send(so, ASID, va, n, OWNER)
    mbs = queued(net)
    assert [(m.off, m.length) for m in mbs] == [
        (0, K64),
        (K64, K64),
        (2 * K64, K64),
        (3 * K64, 8292),
    ]
    assert all(m.loaned and m.pgoff == 123 and m.total == n and m.seq == res.seq for m in mbs)
    assert k.ops("loan") == [
        (ASID, OWNER, trunc_page(va + off), npages_of(va + off, ln)) for off, ln in
        [(0, K64), (K64, K64), (2 * K64, K64), (3 * K64, 8292)]
    ]  # fmt: skip
    assert [len(m.pfns) for m in mbs] == [17, 17, 17, 3]  # unaligned: one page more
    assert k.ops("uhold") == []
    assert len(k.ops("loans")) == 1  # one for the window: uvm enters the mappings too
    assert [kva for kva, _ in k.ops("kenter")] == [m.kva for m in mbs]
    assert (res.loaned_pages, res.copied_bytes, res.messages) == (54, 0, 1)  # a whole-send loan
    assert so.cc == n
    assert net.kva.socurkva == 54 * PAGE_SIZE
    async with driving(net) as (wire, _):
        await drained(net, k)
    assert b"".join(p.payload for p in wire) == user_bytes(va, n)
    assert so.cc == 0


async def test_the_tail_below_the_threshold_is_copied_and_no_loan_is_taken_for_it() -> None:
    net, k = make_net()
    so = await sock(net)
    res = await net.sosend.send(so, ASID, VA0, K64 + 1000, OWNER)
    a, b = queued(net)
    assert a.loaned
    assert not b.loaned
    assert b.data == user_bytes(VA0 + K64, 1000)
    assert k.ops("uhold") == [(ASID, OWNER, VA0 + K64, 1)]  # its page, held for the copy
    assert len(k.ops("urelease")) == 1
    assert not k.holds  # released once copied
    assert len(k.ops("loan")) == 1
    assert (res.loaned_pages, res.copied_bytes, res.messages) == (16, 1000, 3)
    assert net.pool.mbuf_bytes == 1000  # held until the mbuf is sent


async def test_no_loans_when_the_threshold_is_negative() -> None:
    net, k = make_net(loan_thresh=-1)
    so = await sock(net)
    res = await net.sosend.send(so, ASID, VA0, 2 * K64, OWNER)
    assert k.ops("loan") == []
    assert net.kva.socurkva == 0
    assert [m.data for m in queued(net)] == [user_bytes(VA0, K64), user_bytes(VA0 + K64, K64)]
    assert res.copied_bytes == 2 * K64


async def test_a_refused_loan_frees_its_kva_and_copies_the_chunk() -> None:
    net, k = make_net()
    so = await sock(net)
    k.refuse.add(VA0 + K64 + PAGE_SIZE)  # a wired page in the second chunk
    res = await net.sosend.send(so, ASID, VA0, 3 * K64, OWNER)
    mbs = queued(net)
    assert [m.loaned for m in mbs] == [True, False, True]
    assert mbs[1].data == user_bytes(VA0 + K64, K64)
    assert net.kva.socurkva == 32 * PAGE_SIZE
    assert net.kva.slots_held == 2
    assert net.stats["loan_fallbacks"] == 1
    assert res.messages == 1 + 2  # one loan (answered per chunk, mapped by uvm), hold + release
    assert [kva for kva, _ in k.ops("kenter")] == [mbs[0].kva, mbs[2].kva]  # not the refused


async def test_a_copyin_fault_is_resolved_by_kfault_on_the_process_behalf() -> None:
    net, k = make_net(loan_thresh=-1)
    so = await sock(net)
    k.faulting.add(VA0 + PAGE_SIZE)
    res = await net.sosend.send(so, ASID, VA0, 3 * PAGE_SIZE, OWNER)
    assert k.ops("kfault") == [(VA0 + PAGE_SIZE, ASID, OWNER, "", -1)]
    assert len(k.ops("uhold")) == 2
    assert res.messages == 4  # uhold (EFAULT), kfault, uhold, urelease
    assert not k.holds
    assert queued(net)[0].data == user_bytes(VA0, 3 * PAGE_SIZE)


async def test_a_full_send_buffer_blocks_the_send_until_the_driver_sends() -> None:
    net, k = make_net(loan_thresh=-1)
    so = await sock(net, sndbuf=2 * PAGE_SIZE)
    send = asyncio.ensure_future(net.sosend.send(so, ASID, VA0, 5 * PAGE_SIZE, OWNER))
    await poll_for(lambda: net.stats["sbwaits"] == 1, 2, 0.001, "the send to sleep")
    assert not send.done()
    assert [m.length for m in queued(net)] == [2 * PAGE_SIZE]  # chunks of sndbuf at most
    assert so.cc == so.sndbuf
    async with driving(net) as (wire, _):
        res = await asyncio.wait_for(send, 2)
        await drained(net, k)
    assert [p.payload for p in wire] == [
        user_bytes(VA0, 2 * PAGE_SIZE),
        user_bytes(VA0 + 2 * PAGE_SIZE, 2 * PAGE_SIZE),
        user_bytes(VA0 + 4 * PAGE_SIZE, PAGE_SIZE),
    ]
    assert res.copied_bytes == 5 * PAGE_SIZE
    assert so.cc == 0


async def test_send_buffer_room_comes_back_on_the_wire_not_when_the_loan_is_freed() -> None:
    net, k = make_net()
    k.kremove_gate = asyncio.Event()  # sopendfree stalls: no loan comes back
    so = await sock(net, sndbuf=K64)
    async with driving(net) as (wire, _):
        res = await asyncio.wait_for(net.sosend.send(so, ASID, VA0, 3 * K64, OWNER), 2)
        assert res.loaned_pages == 48
        await poll_for(lambda: len(wire) == 3, 2, 0.001, "every mbuf on the wire")
        assert not k.ops("unloan")  # the room came from the wire alone
        k.kremove_gate.set()
        await drained(net, k)


async def test_loan_kva_is_bounded_by_somaxkva_and_a_send_waits_for_sopendfree() -> None:
    net, k = make_net()
    net.kva.somaxkva = 32 * PAGE_SIZE  # two chunks
    so = await sock(net)
    send = asyncio.ensure_future(net.sosend.send(so, ASID, VA0, 4 * K64, OWNER))
    await poll_for(lambda: net.stats["kvawaits"] == 1, 2, 0.001, "the send to wait for KVA")
    assert not send.done()
    assert len(queued(net)) == 2  # the window was queued before waiting
    assert net.kva.socurkva == net.kva.somaxkva
    seen: list[int] = []
    free = net.kva.free

    def checked_free(kva: int, npages: int) -> None:
        free(kva, npages)
        seen.append(net.kva.socurkva)

    net.kva.free = checked_free  # type: ignore[method-assign]
    async with driving(net) as (wire, _):
        res = await asyncio.wait_for(send, 2)
        await drained(net, k)
    assert res.loaned_pages == 64
    assert len(wire) == 4
    assert seen
    assert max(seen) <= 32 * PAGE_SIZE
    assert len(k.ops("unloan")) == 4


async def test_an_unresolvable_fault_ends_the_send_with_efault_and_leaves_nothing() -> None:
    net, k = make_net(loan_thresh=-1)
    so = await sock(net)
    k.faulting.add(VA0 + K64)
    k.unresolvable.add(VA0 + K64)
    with pytest.raises(UserError) as e:
        await net.sosend.send(so, ASID, VA0, 3 * K64, OWNER)
    assert e.value.errno is Errno.EFAULT
    assert [m.off for m in queued(net)] == [0]  # before the fault: still sent (write(2))
    assert so.cc == K64
    assert net.pool.mbuf_bytes == K64
    assert so.sends == 0
    assert not so.lock.locked()
    async with driving(net):
        await drained(net, k)
    assert so.cc == 0


async def test_chunks_set_up_after_a_failed_one_return_their_loans() -> None:
    net, k = make_net()
    so = await sock(net)
    k.refuse.add(VA0 + K64)  # chunk 1's loan is refused, then its copy faults for good
    k.faulting.add(VA0 + K64)
    k.unresolvable.add(VA0 + K64)
    with pytest.raises(UserError):
        await net.sosend.send(so, ASID, VA0, 4 * K64, OWNER)
    assert [m.off for m in queued(net)] == [0]  # chunks 2 and 3 were loaned, never queued
    assert net.driver.pendfree.qsize() == 2
    assert so.cc == K64
    assert so.loans == 3
    async with driving(net):
        await drained(net, k)
    assert so.loans == 0
    assert so.cc == 0
    assert sorted(v for v, _ in k.ops("kremove")) == sorted(v for v, _ in k.ops("kenter"))


async def test_a_failed_kenter_at_uvm_frees_the_kva_and_copies_the_chunks() -> None:
    net, k = make_net()
    so = await sock(net)
    k.fail_kenter = True  # uvm's kenter fails: it unloans them all, the loan is an error
    res = await net.sosend.send(so, ASID, VA0, 2 * K64, OWNER)
    assert [m.loaned for m in queued(net)] == [False, False]
    assert [m.data for m in queued(net)] == [user_bytes(VA0, K64), user_bytes(VA0 + K64, K64)]
    assert res.copied_bytes == 2 * K64
    assert res.loaned_pages == 0
    assert net.kva.socurkva == 0
    assert so.loans == 0
    assert not k.loans


async def test_soclose_while_waiting_for_room_is_ebadf_and_gives_back_the_window() -> None:
    net, k = make_net()
    so = await sock(net, sndbuf=K64 + 4 * PAGE_SIZE)
    net.sosend.loan_chunk = 4 * PAGE_SIZE
    send = asyncio.ensure_future(net.sosend.send(so, ASID, VA0, 64 * PAGE_SIZE, OWNER))
    await poll_for(lambda: net.stats["sbwaits"] == 1, 2, 0.001, "the send to sleep")
    net.sockets.soclose(so, "test")
    with pytest.raises(UserError) as e:
        await asyncio.wait_for(send, 2)
    assert e.value.errno is Errno.EBADF
    # the chunks that had room (5 of 4 pages) were queued; the rest never took any
    assert len(queued(net)) == 5
    assert so.cc == so.sndbuf
    assert net.kva.socurkva == so.sndbuf
    assert net.kva.slots_held == 5
    assert so.id in net.sockets.sockets  # closed, but its data has not left yet
    async with driving(net):
        await drained(net, k)
    assert so.id not in net.sockets.sockets  # closed, drained: the record is freed


async def test_another_process_socket_is_einval_and_changes_nothing() -> None:
    net, k = make_net()
    so = await sock(net)
    with pytest.raises(UserError) as e:
        await net.sosend.send(so, ASID + 1, VA0, PAGE_SIZE, OWNER)
    assert e.value.errno is Errno.EINVAL
    assert k.calls == [("owners", ([ASID], []))]
    assert so.next_seq == 1
    assert so.sends == 0


async def test_the_mbuf_pool_makes_a_copy_wait_for_storage_until_the_driver_frees_it() -> None:
    net, k = make_net(loan_thresh=-1, limits=Limits(mbufs=3 * PAGE_SIZE))
    a, b = await sock(net), await sock(net)
    net.driver.hold(True)
    await net.sosend.send(a, ASID, VA0, 2 * PAGE_SIZE, OWNER)
    waiting = asyncio.ensure_future(net.sosend.send(b, ASID, VA0, 2 * PAGE_SIZE, OWNER))
    await poll_for(lambda: net.stats["mbufwaits"] == 1, 2, 0.001, "the copy to wait")
    assert net.pool.mbuf_bytes == 2 * PAGE_SIZE  # b's chunk does not fit beside a's
    assert not waiting.done()
    async with driving(net) as (wire, _):
        net.driver.hold(False)
        await asyncio.wait_for(waiting, 2)
        await drained(net, k)
    assert [p.sock for p in wire] == [a.id, b.id]


async def test_one_chunk_bigger_than_the_pool_still_goes_alone() -> None:
    net, k = make_net(loan_thresh=-1, limits=Limits(mbufs=PAGE_SIZE))
    so = await sock(net)
    await net.sosend.send(so, ASID, VA0, 3 * PAGE_SIZE, OWNER)  # into the empty pool
    assert net.pool.mbuf_bytes == 3 * PAGE_SIZE
    async with driving(net):
        await drained(net, k)


async def test_a_pool_smaller_than_a_window_of_copies_does_not_deadlock_the_send() -> None:
    """The copied chunks of a window hold their storage until the whole window is set
    up and queued, so a window stops before one more chunk would pass the session's
    share of the pool (here the whole pool): each chunk is queued before the next
    takes storage, and the send completes. (It used to wait for ever: issue 10's xfail.)"""
    net, k = make_net(loan_thresh=-1, limits=Limits(mbufs=3 * PAGE_SIZE))
    so = await sock(net)
    async with driving(net):
        await asyncio.wait_for(net.sosend.send(so, ASID, VA0, 4 * K64, OWNER), 2)
        await drained(net, k)
