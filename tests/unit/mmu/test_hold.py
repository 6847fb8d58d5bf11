"""Frame holds (machine.mmu.hold): copyin's translation, and replies deferred while held."""

from __future__ import annotations

import asyncio
import random

import pytest

from machine.ipc.inmemory import InMemoryTransport
from machine.mmu.copyin import uhold
from machine.mmu.hold import Holds
from machine.mmu.pmap import Fault, Mmu
from machine.mmu.service import MmuService
from machine.params import PAGE_SIZE
from machine.proto import (
    CtlAck,
    Errno,
    Header,
    PmapCountReply,
    PmapEnter,
    PmapPageProtect,
    PmapUhold,
    PmapUholdReply,
    PmapUrelease,
    Reply,
    Request,
    Scope,
    Status,
    UserError,
    encode,
)
from machine.proto.pageinfo import REFERENCED
from machine.proto.types import EnterFlags, Prot
from machine.ram import Ram

RW = Prot.READ | Prot.WRITE
VA = 0x10000
H = Header(msg_id=1, sender="uvm", incarnation=0)


@pytest.fixture
def mmu() -> Mmu:
    m = Mmu(Ram.anonymous(64 * PAGE_SIZE))
    m.create(1, owner=11)
    for i in range(3):
        m.enter(1, VA + i * PAGE_SIZE, 5 + i, RW, EnterFlags.NONE)
    return m


def test_a_hold_counts_each_frame_until_released_and_twice_held_frames_stay() -> None:
    h = Holds()
    a, b = h.hold([3, 4]), h.hold([4])
    assert dict(h.count) == {3: 1, 4: 2}
    h.release([a])
    assert dict(h.count) == {4: 1}
    assert h.check() == []
    with pytest.raises(UserError) as e:  # unknown (already released) and a good one
        h.release([a, b])
    assert e.value.errno is Errno.EINVAL
    assert dict(h.count) == {4: 1}  # nothing was released
    h.release([b])
    assert not h.count
    assert not h.holds


def test_uhold_translates_holds_and_marks_referenced(mmu: Mmu) -> None:
    res = uhold(mmu, 1, 11, VA, 3)
    assert not isinstance(res, Fault)
    hid, pfns = res
    assert pfns == [5, 6, 7]
    assert dict(mmu.holds.count) == {5: 1, 6: 1, 7: 1}
    assert all(mmu.attrs[p] & REFERENCED for p in pfns)
    mmu.holds.release([hid])
    assert not mmu.holds.count


def test_uhold_is_all_or_nothing_with_the_first_faulting_page(mmu: Mmu) -> None:
    mmu.remove(1, VA + PAGE_SIZE, VA + 2 * PAGE_SIZE)
    res = uhold(mmu, 1, 11, VA, 3)
    assert isinstance(res, Fault)
    assert res.va == VA + PAGE_SIZE
    assert not mmu.holds.count  # nothing held


def test_uhold_of_another_sessions_space_or_the_kernels_is_eperm(mmu: Mmu) -> None:
    for asid, owner in [(1, 12), (0, 0)]:
        with pytest.raises(UserError) as e:
            uhold(mmu, asid, owner, VA, 1)
        assert e.value.errno is Errno.EPERM
    assert not mmu.holds.count


def test_only_removals_of_held_frames_are_hits(mmu: Mmu) -> None:
    res = uhold(mmu, 1, 11, VA, 1)
    assert not isinstance(res, Fault)
    mmu.protect(1, VA, VA + PAGE_SIZE, Prot.READ)  # lowered, not removed
    mmu.remove(1, VA + PAGE_SIZE, VA + 2 * PAGE_SIZE)  # frame 6: not held
    assert mmu.holds.take_hits() == set()
    mmu.page_protect([5], Prot.NONE)
    assert mmu.holds.take_hits() == {5}
    assert mmu.holds.take_hits() == set()  # taken once


async def _call(svc: MmuService, msg: Request) -> Reply:
    return await svc.dispatch(encode(msg), Scope.KERNEL)


async def test_a_removal_of_a_held_frame_is_applied_at_once_and_answered_at_release(
    mmu: Mmu,
) -> None:
    svc = MmuService(InMemoryTransport(1), mmu=mmu, rng=random.Random(1))
    held = await _call(svc, PmapUhold(h=H, asid=1, owner=11, va=VA, npages=2))
    assert isinstance(held, PmapUholdReply)
    assert held.pfns == [5, 6]
    revoke = asyncio.ensure_future(
        _call(svc, PmapPageProtect(h=H, pfns=[6], prot=int(Prot.NONE), why="pdaemon"))
    )
    replace = asyncio.ensure_future(
        _call(svc, PmapEnter(h=H, asid=1, va=VA, pfn=9, prot=int(RW), flags=0))
    )
    other = await _call(svc, PmapPageProtect(h=H, pfns=[7], prot=int(Prot.NONE)))
    assert isinstance(other, PmapCountReply)  # frame 7 is not held: answered at once
    for _ in range(20):
        await asyncio.sleep(0)
    assert not revoke.done()
    assert not replace.done()
    assert mmu.extract(1, VA + PAGE_SIZE) is None  # applied: no translation any more
    pte = mmu.extract(1, VA)
    assert pte is not None
    assert pte.pfn == 9
    rel = await _call(svc, PmapUrelease(h=H, holds=[held.hold]))
    assert isinstance(rel, CtlAck)
    got = await asyncio.wait_for(revoke, 2)
    assert isinstance(got, PmapCountReply)
    assert got.count == 1
    assert isinstance(await asyncio.wait_for(replace, 2), CtlAck)
    assert mmu.check() == []
    assert svc.counters()["holds_deferred"] == 2


async def test_a_uhold_over_a_hole_answers_efault_with_the_page(mmu: Mmu) -> None:
    svc = MmuService(InMemoryTransport(1), mmu=mmu, rng=random.Random(1))
    rep = await _call(svc, PmapUhold(h=H, asid=1, owner=11, va=VA + 2 * PAGE_SIZE, npages=2))
    assert isinstance(rep, PmapUholdReply)
    assert rep.status is Status.ERROR
    assert rep.errno is Errno.EFAULT
    assert rep.fault_va == VA + 3 * PAGE_SIZE
