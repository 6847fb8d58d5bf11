"""mlock, munlock, mlockall, munlockall and RLIMIT_MEMLOCK on the uvm core (machine.uvm.wiring,
machine.uvm.pageable): every call, flag and errno, with the auditor run after each step.

NetBSD's behaviour is the specification (sys/uvm/uvm_mmap.c, uvm_map.c uvm_map_pageable
and uvm_map_pageable_all, and the ATF test tests/lib/libc/sys/t_mlock.c): ranges are
rounded to pages, one munlock unlocks however often a range was locked, a bad or unlocked
range is ENOMEM, a limit is EAGAIN for mlock and ENOMEM for mlockall and MCL_FUTURE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from machine.mmu.pmap import Mmu
from machine.params import PAGE_SIZE, USER_MIN, USER_TOP
from machine.proto import Errno, UserError
from machine.proto.types import Prot
from machine.proto.vmcalls import MCL_CURRENT, MCL_FUTURE, O_RDWR, RLIMIT_MEMLOCK
from machine.uvm import files, mmap, wiring
from machine.uvm.audit import audit
from machine.uvm.fault import fault
from machine.uvm.page import PQ
from machine.uvm.state import Uvm
from tests.unit.uvm.localpmap import make_uvm
from tests.unit.uvm.test_core import OWN, cpu_load, cpu_store

RW = Prot.READ | Prot.WRITE
OTHER = 78
NFRAMES = 128
P = PAGE_SIZE


@pytest.fixture
def vm(tmp_path: Path) -> tuple[Uvm, Mmu]:
    return make_uvm(NFRAMES, tmp_path, swap_pages=64)


async def clean(uvm: Uvm) -> None:
    assert await audit(uvm) == []


def wired_counts(uvm: Uvm, asid: int) -> list[tuple[int, int, int]]:
    return [(e.start, e.end, e.wired_count) for e in uvm.spaces[asid].map.entries]


def snapshot(uvm: Uvm, mmu: Mmu) -> tuple[Any, ...]:
    """What a refused call must leave as it was."""
    return (
        {a: wired_counts(uvm, a) for a in uvm.spaces},
        {a: (sp.map.wirefuture, sp.map.all_locked, sp.memlock) for a, sp in uvm.spaces.items()},
        {a: sp.map.size for a, sp in uvm.spaces.items()},
        uvm.pages.free.count,
        uvm.pages.wired,
        len(uvm.anons),
        sorted(mmu.pmaps),
        {a: sorted(v for v, pte in mmu.pmaps[a].ptes.items() if pte.wired) for a in mmu.pmaps},
    )


async def refused(uvm: Uvm, mmu: Mmu, errno: Errno, call: Any) -> UserError:
    """call must fail with errno and change nothing."""
    before = snapshot(uvm, mmu)
    with pytest.raises(UserError) as ei:
        await call
    assert ei.value.errno == errno, ei.value
    assert snapshot(uvm, mmu) == before
    await clean(uvm)
    return ei.value


def wired_ptes(mmu: Mmu, asid: int) -> int:
    return sum(pte.wired for pte in mmu.pmaps[asid].ptes.values())


async def touch(uvm: Uvm, mmu: Mmu, asid: int, va: int, npages: int, owner: int = OWN) -> None:
    """Store into each page (faults with the owner's session)."""
    for i in range(npages):
        f = mmu.store(asid, va + i * P, b"x")
        if f is not None:
            await fault(uvm, asid, owner, f.va, f.access)
            assert mmu.store(asid, va + i * P, b"x") is None


# -- mlock / munlock ------------------------------------------------------------------------


async def test_locks_do_not_nest_one_munlock_unlocks(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 4 * P, RW)
    for _ in range(3):  # t_mlock's mlock_nested: consecutive mlocks succeed
        await wiring.mlock(uvm, p, OWN, va, 4 * P)
        await clean(uvm)
    assert uvm.pages.wired == 4
    assert wired_ptes(mmu, p) == 4
    assert wired_counts(uvm, p) == [(va, va + 4 * P, 3)]  # NetBSD counts each wiring...
    await wiring.munlock(uvm, p, OWN, va, 4 * P)  # ...and one munlock unlocks them all
    assert uvm.pages.wired == 0
    assert wired_ptes(mmu, p) == 0
    assert wired_counts(uvm, p) == [(va, va + 4 * P, 0)]
    assert all(
        uvm.pages.pqflags[pfn] == PQ.ACTIVE
        for pfn in uvm.resident_pages(uvm.spaces[p].map.entries[0])
    )
    await clean(uvm)
    await refused(uvm, mmu, Errno.ENOMEM, wiring.munlock(uvm, p, OWN, va, 4 * P))
    assert (uvm.stats.wirings, uvm.stats.unwirings) == (3, 1)


async def test_an_unaligned_range_is_rounded_to_pages(vm: tuple[Uvm, Mmu]) -> None:
    """t_mlock's mlock_err: mlock(buf + page/3, page/5) succeeds, and so does its munlock."""
    uvm, _mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 4 * P, RW)
    await wiring.mlock(uvm, p, OWN, va + P // 3, P // 5)  # inside page 0
    assert wired_counts(uvm, p) == [(va, va + P, 1), (va + P, va + 4 * P, 0)]
    await wiring.mlock(uvm, p, OWN, va + P + 100, P)  # crosses into page 2: pages 1 and 2
    assert uvm.pages.wired == 3
    await clean(uvm)
    await wiring.munlock(uvm, p, OWN, va + 5, 1)  # page 0 only
    assert uvm.pages.wired == 2
    await wiring.munlock(uvm, p, OWN, va + 2 * P - 1, 2)  # the last byte of 1, first of 2
    assert uvm.pages.wired == 0
    await clean(uvm)


async def test_unmapped_ranges_and_holes_are_enomem(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    a = await mmap.mmap(uvm, p, OWN, 2 * P, RW)
    b = await mmap.mmap(uvm, p, OWN, 2 * P, RW, va=a + 3 * P, fixed=True)  # a hole between
    for call in (wiring.mlock, wiring.munlock):
        await refused(uvm, mmu, Errno.ENOMEM, call(uvm, p, OWN, a, 5 * P))  # over the hole
        await refused(uvm, mmu, Errno.ENOMEM, call(uvm, p, OWN, a + 2 * P, P))  # the hole
        await refused(uvm, mmu, Errno.ENOMEM, call(uvm, p, OWN, b + 2 * P, P))  # past the end
    await wiring.mlock(uvm, p, OWN, a, 2 * P)
    await refused(uvm, mmu, Errno.ENOMEM, wiring.munlock(uvm, p, OWN, a, 5 * P))  # still a hole
    assert uvm.pages.wired == 2  # the locked part stays locked


async def test_null_and_ranges_outside_user_space_are_enomem(vm: tuple[Uvm, Mmu]) -> None:
    """t_mlock (NetBSD 2020): mlock and munlock of NULL, and of (char *)-1, are ENOMEM."""
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    await mmap.mmap(uvm, p, OWN, P, RW, va=USER_MIN, fixed=True)  # the first user page
    for call in (wiring.mlock, wiring.munlock):
        for va, n in ((0, P), (0, 2 * P), (USER_TOP - P, 2 * P), ((1 << 63) - 1, P)):
            err = await refused(uvm, mmu, Errno.ENOMEM, call(uvm, p, OWN, va, n))
            assert "outside user space" in err.detail or "wraps" in err.detail


async def test_mlock_of_a_prot_none_mapping_fails(vm: tuple[Uvm, Mmu]) -> None:
    """t_mlock's mlock_mmap: it must be impossible to mlock a PROT_NONE mapping."""
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 2 * P, RW)
    await mmap.mprotect(uvm, p, OWN, va + P, P, Prot.NONE)
    await refused(uvm, mmu, Errno.ENOMEM, wiring.mlock(uvm, p, OWN, va, 2 * P))
    await wiring.mlock(uvm, p, OWN, va, P)
    await clean(uvm)


async def test_munlock_of_memory_not_locked_is_enomem(vm: tuple[Uvm, Mmu]) -> None:
    """t_mlock (NetBSD 2020): unlocking memory that is not locked is an error, ENOMEM."""
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 3 * P, RW)
    await refused(uvm, mmu, Errno.ENOMEM, wiring.munlock(uvm, p, OWN, va, P))
    await wiring.mlock(uvm, p, OWN, va, P)
    await refused(uvm, mmu, Errno.ENOMEM, wiring.munlock(uvm, p, OWN, va, 2 * P))  # partly
    await wiring.munlock(uvm, p, OWN, va, P)
    await clean(uvm)


async def test_munmap_and_exit_drop_the_locks(vm: tuple[Uvm, Mmu]) -> None:
    """t_mlock's mlock_mmap: after munmap, munlock of the range fails."""
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 4 * P, RW)
    await wiring.mlock(uvm, p, OWN, va, 4 * P)
    await mmap.munmap(uvm, p, OWN, va + P, P)
    assert uvm.pages.wired == 3
    await clean(uvm)
    await refused(uvm, mmu, Errno.ENOMEM, wiring.munlock(uvm, p, OWN, va, 4 * P))
    await mmap.exit(uvm, p, OWN)
    assert uvm.pages.wired == 0
    await clean(uvm)


async def test_other_sessions_processes_are_esrch(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, P, RW)
    for call in (
        wiring.mlock(uvm, p, OTHER, va, P),
        wiring.munlock(uvm, p, OTHER, va, P),
        wiring.mlockall(uvm, p, OTHER, MCL_CURRENT),
        wiring.munlockall(uvm, p, OTHER),
    ):
        await refused(uvm, mmu, Errno.ESRCH, call)
    with pytest.raises(UserError) as ei:
        wiring.getrlimit(uvm, p, OTHER, RLIMIT_MEMLOCK)
    assert ei.value.errno == Errno.ESRCH
    with pytest.raises(UserError) as ei:
        wiring.setrlimit(uvm, p, OTHER, RLIMIT_MEMLOCK, 0, 0)
    assert ei.value.errno == Errno.ESRCH


# -- RLIMIT_MEMLOCK -------------------------------------------------------------------------


async def test_getrlimit_defaults_to_a_third_of_ram_and_all_of_it(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    p = await mmap.spawn(uvm, OWN)
    assert wiring.getrlimit(uvm, p, OWN, RLIMIT_MEMLOCK) == (NFRAMES * P // 3, NFRAMES * P)
    with pytest.raises(UserError) as ei:
        wiring.getrlimit(uvm, p, OWN, 5)  # RLIMIT_RSS: not served
    assert ei.value.errno == Errno.EINVAL


async def test_setrlimit_rules(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _mmu = vm
    p = await mmap.spawn(uvm, OWN)
    cur, top = wiring.getrlimit(uvm, p, OWN, RLIMIT_MEMLOCK)
    for resource, c, m, errno in (
        (RLIMIT_MEMLOCK, top, cur, Errno.EINVAL),  # cur > max
        (RLIMIT_MEMLOCK, cur, top + 1, Errno.EPERM),  # raising max: root only
        (3, cur, top, Errno.EINVAL),  # another resource (RLIMIT_STACK)
    ):
        with pytest.raises(UserError) as ei:
            wiring.setrlimit(uvm, p, OWN, resource, c, m)
        assert ei.value.errno == errno
        assert wiring.getrlimit(uvm, p, OWN, RLIMIT_MEMLOCK) == (cur, top)
    assert wiring.setrlimit(uvm, p, OWN, RLIMIT_MEMLOCK, top, top) == (top, top)  # cur up to max
    assert wiring.setrlimit(uvm, p, OWN, RLIMIT_MEMLOCK, P, 2 * P) == (P, 2 * P)  # max lowered
    with pytest.raises(UserError) as ei:
        wiring.setrlimit(uvm, p, OWN, RLIMIT_MEMLOCK, P, top)  # and never raised again
    assert ei.value.errno == Errno.EPERM
    await clean(uvm)


async def test_mlock_beyond_rlimit_memlock_is_eagain(vm: tuple[Uvm, Mmu]) -> None:
    """t_mlock's mlock_limits: with the limit one byte short, mlock is EAGAIN."""
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 4 * P, RW)
    wiring.setrlimit(uvm, p, OWN, RLIMIT_MEMLOCK, P - 1, 2 * P)
    await refused(uvm, mmu, Errno.EAGAIN, wiring.mlock(uvm, p, OWN, va, 10))
    wiring.setrlimit(uvm, p, OWN, RLIMIT_MEMLOCK, 2 * P, 2 * P)  # cur raised up to max
    await refused(uvm, mmu, Errno.EAGAIN, wiring.mlock(uvm, p, OWN, va, 3 * P))
    await wiring.mlock(uvm, p, OWN, va, 2 * P)
    await refused(uvm, mmu, Errno.EAGAIN, wiring.mlock(uvm, p, OWN, va + 2 * P, P))
    # as sys_mlock counts: the whole range again, though it is locked already
    await refused(uvm, mmu, Errno.EAGAIN, wiring.mlock(uvm, p, OWN, va, P))
    wiring.setrlimit(uvm, p, OWN, RLIMIT_MEMLOCK, P, P)  # below what is wired: nothing unwired
    assert uvm.pages.wired == 2
    await wiring.munlock(uvm, p, OWN, va, 2 * P)
    await wiring.mlock(uvm, p, OWN, va + 3 * P, P)
    await clean(uvm)


async def test_mlock_beyond_wiredmax_is_eagain_even_for_a_huge_sparse_range(
    vm: tuple[Uvm, Mmu],
) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 1 << 40, RW)  # 2^28 pages, none touched
    assert uvm.wiredmax == NFRAMES // 3
    wiring.setrlimit(uvm, p, OWN, RLIMIT_MEMLOCK, NFRAMES * P, NFRAMES * P)
    await refused(uvm, mmu, Errno.EAGAIN, wiring.mlock(uvm, p, OWN, va, 1 << 40))
    await refused(uvm, mmu, Errno.EAGAIN, wiring.mlock(uvm, p, OWN, va, (uvm.wiredmax + 1) * P))
    await wiring.mlock(uvm, p, OWN, va, uvm.wiredmax * P)
    await refused(uvm, mmu, Errno.EAGAIN, wiring.mlock(uvm, p, OWN, va + (1 << 39), P))
    await clean(uvm)


async def test_a_forks_child_inherits_the_limit(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    p = await mmap.spawn(uvm, OWN)
    wiring.setrlimit(uvm, p, OWN, RLIMIT_MEMLOCK, 3 * P, 5 * P)
    c = await mmap.fork(uvm, p, OWN)
    assert wiring.getrlimit(uvm, c, OWN, RLIMIT_MEMLOCK) == (3 * P, 5 * P)
    wiring.setrlimit(uvm, c, OWN, RLIMIT_MEMLOCK, P, P)  # the child's own from now on
    assert wiring.getrlimit(uvm, p, OWN, RLIMIT_MEMLOCK) == (3 * P, 5 * P)
    g = await mmap.fork(uvm, c, OWN)
    assert wiring.getrlimit(uvm, g, OWN, RLIMIT_MEMLOCK) == (P, P)
    await clean(uvm)


# -- mlockall / munlockall ------------------------------------------------------------------


@pytest.mark.parametrize("flags", [0, 0x4, MCL_CURRENT | 0x8, 1 << 20])
async def test_mlockall_flags_zero_or_unknown_are_einval(vm: tuple[Uvm, Mmu], flags: int) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    await mmap.mmap(uvm, p, OWN, P, RW)
    await refused(uvm, mmu, Errno.EINVAL, wiring.mlockall(uvm, p, OWN, flags))


async def test_mlockall_current_wires_every_accessible_mapping(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    uvm, mmu = vm
    (tmp_path / "disk" / "f").write_bytes(bytes(2 * P))
    h, _ = files.open(uvm, OWN, "f", False, None, O_RDWR)
    p = await mmap.spawn(uvm, OWN)
    anon = await mmap.mmap(uvm, p, OWN, 3 * P, RW)
    none = await mmap.mmap(uvm, p, OWN, 2 * P, Prot.NONE)
    shared = await mmap.mmap(uvm, p, OWN, 2 * P, RW, handle=h, shared=True)
    await wiring.mlockall(uvm, p, OWN, MCL_CURRENT)
    assert [(e.start, bool(e.wired_count)) for e in uvm.spaces[p].map.entries] == [
        (anon, True),
        (none, False),
        (shared, True),
    ]
    assert uvm.pages.wired == 5
    assert wired_ptes(mmu, p) == 5
    assert not uvm.spaces[p].map.wirefuture
    await clean(uvm)
    later = await mmap.mmap(uvm, p, OWN, P, RW)  # MCL_CURRENT only: not wired
    assert not uvm.spaces[p].map.lookup(later).wired_count  # type: ignore[union-attr]
    await wiring.mlockall(uvm, p, OWN, MCL_CURRENT)  # again: counts, wires only the new one
    assert uvm.pages.wired == 6
    await wiring.munlockall(uvm, p, OWN)
    assert uvm.pages.wired == 0
    assert wired_ptes(mmu, p) == 0
    assert all(not e.wired_count for e in uvm.spaces[p].map.entries)
    await clean(uvm)
    await wiring.munlockall(uvm, p, OWN)  # nothing locked: still fine
    assert (uvm.stats.mlockalls, uvm.stats.munlockalls) == (2, 2)


async def test_mlockall_beyond_the_limits_is_enomem_up_front(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    await mmap.mmap(uvm, p, OWN, 4 * P, RW)
    wiring.setrlimit(uvm, p, OWN, RLIMIT_MEMLOCK, 3 * P, NFRAMES * P)
    await refused(uvm, mmu, Errno.ENOMEM, wiring.mlockall(uvm, p, OWN, MCL_CURRENT | MCL_FUTURE))
    wiring.setrlimit(uvm, p, OWN, RLIMIT_MEMLOCK, NFRAMES * P, NFRAMES * P)
    await mmap.mmap(uvm, p, OWN, 1 << 39, RW)  # huge and sparse: beyond wiredmax
    await refused(uvm, mmu, Errno.ENOMEM, wiring.mlockall(uvm, p, OWN, MCL_CURRENT))


async def test_mcl_future_wires_every_later_mapping(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    before = await mmap.mmap(uvm, p, OWN, 2 * P, RW)
    await wiring.mlockall(uvm, p, OWN, MCL_FUTURE)
    sp = uvm.spaces[p]
    assert sp.map.wirefuture
    assert not sp.map.all_locked
    assert uvm.pages.wired == 0
    va = await mmap.mmap(uvm, p, OWN, 3 * P, RW)
    assert uvm.pages.wired == 3
    assert wired_ptes(mmu, p) == 3
    assert await cpu_store(uvm, mmu, p, va, b"no fault") == 0  # resident and writable
    none = await mmap.mmap(uvm, p, OWN, 2 * P, Prot.NONE)  # PROT_NONE: nothing to wire
    assert uvm.pages.wired == 3
    await clean(uvm)
    await mmap.mprotect(uvm, p, OWN, none, 2 * P, Prot.READ)  # made accessible: wired now
    assert uvm.pages.wired == 5
    assert uvm.stats.wirefutures == 1
    await clean(uvm)
    await wiring.mlockall(uvm, p, OWN, MCL_CURRENT)  # now the old one too: everything
    assert sp.map.all_locked
    assert uvm.pages.wired == 7
    assert sp.map.lookup(before).wired_count  # type: ignore[union-attr]
    await clean(uvm)
    await wiring.munlockall(uvm, p, OWN)  # cancels MCL_FUTURE
    assert not sp.map.wirefuture
    assert not sp.map.all_locked
    assert uvm.pages.wired == 0
    await mmap.mmap(uvm, p, OWN, P, RW)
    assert uvm.pages.wired == 0
    await clean(uvm)


async def test_an_mcl_future_mapping_that_cannot_be_wired_is_not_made(
    vm: tuple[Uvm, Mmu],
) -> None:
    """uvm_mmap: beyond the limit, or without frames, the new mapping is unmapped: ENOMEM."""
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    await wiring.mlockall(uvm, p, OWN, MCL_CURRENT | MCL_FUTURE)
    wiring.setrlimit(uvm, p, OWN, RLIMIT_MEMLOCK, 2 * P, 40 * P)
    await refused(uvm, mmu, Errno.ENOMEM, mmap.mmap(uvm, p, OWN, 3 * P, RW))
    await mmap.mmap(uvm, p, OWN, 2 * P, RW)
    wiring.setrlimit(uvm, p, OWN, RLIMIT_MEMLOCK, 40 * P, 40 * P)
    hog = await mmap.spawn(uvm, OTHER)
    hva = await mmap.mmap(uvm, hog, OTHER, NFRAMES * P, RW)
    with pytest.raises(UserError):  # take every frame there is (no page daemon here)
        await touch(uvm, mmu, hog, hva, NFRAMES, OTHER)
    await refused(uvm, mmu, Errno.ENOMEM, mmap.mmap(uvm, p, OWN, 8 * P, RW))
    assert uvm.spaces[p].map.all_locked
    await clean(uvm)


async def test_mcl_future_and_wirings_are_not_inherited_at_fork(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 2 * P, RW)
    await cpu_store(uvm, mmu, p, va, b"parent")
    await wiring.mlockall(uvm, p, OWN, MCL_CURRENT | MCL_FUTURE)
    c = await mmap.fork(uvm, p, OWN)
    child = uvm.spaces[c]
    assert not child.map.wirefuture
    assert not child.map.all_locked
    assert all(not e.wired_count for e in child.map.entries)
    assert wired_ptes(mmu, c) == 0
    assert await cpu_load(uvm, mmu, c, va, 6) == b"parent"
    await mmap.mmap(uvm, c, OWN, P, RW)
    assert uvm.pages.wired == 2  # the parent's two pages only
    await mmap.mmap(uvm, p, OWN, P, RW)
    assert uvm.pages.wired == 3
    await refused(uvm, mmu, Errno.ENOMEM, wiring.munlock(uvm, c, OWN, va, 2 * P))
    await clean(uvm)
