"""madvise, mincore and minherit's calls (machine.uvm.advice), with an in-process pmap.

Each advice's effect is checked in the page queues, the frames, the mmu and the counters;
every errno with the state unchanged; the auditor after the interesting steps. Fork's side
of minherit is tests/unit/uvm/test_inherit.py; fault-ahead by advice is at the end here.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from machine.limits import Limits
from machine.mmu.pmap import Mmu
from machine.params import PAGE_SIZE, USER_MIN, USER_TOP
from machine.proto import (
    MADV_DONTNEED,
    MADV_FREE,
    MADV_NORMAL,
    MADV_RANDOM,
    MADV_SEQUENTIAL,
    MADV_SPACEAVAIL,
    MADV_WILLNEED,
    MAP_INHERIT_DONATE_COPY,
    MAP_INHERIT_NONE,
    MAP_INHERIT_ZERO,
    MINCORE_MAX_PAGES,
    UserError,
)
from machine.proto.types import Prot
from machine.uvm import advice, files, mmap, wiring
from machine.uvm.ahead import neighbours
from machine.uvm.audit import audit
from machine.uvm.fault import fault_locked
from machine.uvm.loan import loan_to_kernel, unloan_pages
from machine.uvm.page import NIL, PQ, PageFlag
from machine.uvm.pager import pageout
from machine.uvm.state import Uvm
from tests.unit.uvm.localpmap import make_uvm
from tests.unit.uvm.test_core import OWN, cpu_load, cpu_store

RW = Prot.READ | Prot.WRITE
P = PAGE_SIZE


@pytest.fixture
def vm(tmp_path: Path) -> tuple[Uvm, Mmu]:
    return make_uvm(128, tmp_path, swap_pages=64)


async def clean(uvm: Uvm) -> None:
    assert await audit(uvm) == []


def layout(uvm: Uvm, asid: int) -> list[tuple[int, int, str, int]]:
    """(start, end, inheritance, advice) of every entry: what a refused call must not change."""
    return [(e.start, e.end, e.inheritance.value, e.advice) for e in uvm.spaces[asid].map.entries]


def anon_pfn(uvm: Uvm, asid: int, va: int) -> int:
    e = uvm.spaces[asid].map.lookup(va)
    assert e is not None
    assert e.amap is not None
    anon = e.amap.lookup(e.slot(va))
    assert anon is not None
    return anon.page


async def expect(errno: str, call: object) -> None:
    with pytest.raises(UserError) as ei:
        await call  # type: ignore[misc]
    assert ei.value.errno == errno


# -- minherit ----------------------------------------------------------------------------


async def test_minherit_rounds_clips_and_skips_holes(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    p = await mmap.spawn(uvm, OWN)
    a = await mmap.mmap(uvm, p, OWN, 4 * P, RW)
    b = await mmap.mmap(uvm, p, OWN, 4 * P, RW, va=a + 6 * P)  # a hole of two pages between
    # va rounded down to its page, the length up to the last byte's page (sys_minherit)
    await advice.minherit(uvm, p, OWN, a + P + 10, 2 * P, MAP_INHERIT_NONE)
    assert [(s - a, e - a, i) for s, e, i, _ in layout(uvm, p)] == [
        (0, P, "copy"),
        (P, 4 * P, "none"),
        (6 * P, 10 * P, "copy"),
    ]
    # a range over the hole: the hole is skipped (uvm_map_inherit), no error
    await advice.minherit(uvm, p, OWN, a + 3 * P, 5 * P, MAP_INHERIT_ZERO)
    assert [i for _, _, i, _ in layout(uvm, p)] == ["copy", "none", "zero", "zero", "copy"]
    assert uvm.spaces[p].map.lookup(b + P) is not None
    await clean(uvm)


async def test_minherit_errnos_change_nothing(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 4 * P, RW)
    before = layout(uvm, p)
    for bad in (MAP_INHERIT_DONATE_COPY, 5, 99):  # uvm_map_inherit refuses DONATE_COPY too
        await expect("EINVAL", advice.minherit(uvm, p, OWN, va, P, bad))
    await expect("EINVAL", advice.minherit(uvm, p, OWN, 0, P, MAP_INHERIT_NONE))
    await expect("EINVAL", advice.minherit(uvm, p, OWN, USER_TOP - P, 2 * P, MAP_INHERIT_NONE))
    await expect("ESRCH", advice.minherit(uvm, p + 99, OWN, va, P, MAP_INHERIT_NONE))
    uvm.limits = Limits(map_entries=2)  # a split in the middle needs two more entries
    await expect("ENOMEM", advice.minherit(uvm, p, OWN, va + P, P, MAP_INHERIT_NONE))
    uvm.limits = Limits(maxentries=2)
    await expect("ENOMEM", advice.minherit(uvm, p, OWN, va + P, P, MAP_INHERIT_NONE))
    assert layout(uvm, p) == before
    uvm.limits = Limits()
    await advice.minherit(uvm, p, OWN, va, 4 * P, MAP_INHERIT_NONE)  # no split: no entry
    assert layout(uvm, p) == [(va, va + 4 * P, "none", 0)]
    await clean(uvm)


# -- madvise: NORMAL, RANDOM, SEQUENTIAL; errnos ---------------------------------------------


async def test_madvise_sets_the_advice_of_the_range(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 6 * P, RW)
    await advice.madvise(uvm, p, OWN, va + 2 * P, 2 * P, MADV_SEQUENTIAL)
    await advice.madvise(uvm, p, OWN, va + 5 * P - 1, 1, MADV_RANDOM)  # rounded to page 4
    assert [(s - va, adv) for s, _, _, adv in layout(uvm, p)] == [
        (0, MADV_NORMAL),
        (2 * P, MADV_SEQUENTIAL),
        (4 * P, MADV_RANDOM),
        (5 * P, MADV_NORMAL),
    ]
    # holes are skipped (uvm_map_advice), the advice survives fork
    await advice.madvise(uvm, p, OWN, va, 64 * P, MADV_NORMAL)
    await advice.madvise(uvm, p, OWN, va + 2 * P, P, MADV_SEQUENTIAL)
    c = await mmap.fork(uvm, p, OWN)
    assert layout(uvm, c) == layout(uvm, p)
    await clean(uvm)


async def test_madvise_errnos_change_nothing(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 6 * P, RW)
    await cpu_store(uvm, mmu, p, va, b"x" * 6 * P)
    await mmap.munmap(uvm, p, OWN, va + 2 * P, P)  # a hole at page 2
    await wiring.mlock(uvm, p, OWN, va, 2 * P)
    before = layout(uvm, p), uvm.pages.free.count, uvm.pages.active.count
    for bad in (MADV_SPACEAVAIL, 7, 99):
        await expect("EINVAL", advice.madvise(uvm, p, OWN, va, P, bad))
    await expect("EINVAL", advice.madvise(uvm, p, OWN, USER_TOP - P, 2 * P, MADV_NORMAL))
    await expect("EINVAL", advice.madvise(uvm, p, OWN, 0, P, MADV_NORMAL))
    await expect("ESRCH", advice.madvise(uvm, p + 9, OWN, va, P, MADV_NORMAL))
    # uvm_map_clean: a hole is EFAULT (NetBSD's errno) for DONTNEED and FREE
    for adv in (MADV_DONTNEED, MADV_FREE):
        await expect("EFAULT", advice.madvise(uvm, p, OWN, va + 3 * P, 4 * P, adv))
        await expect("EFAULT", advice.madvise(uvm, p, OWN, va + 2 * P, P, adv))
    await expect("EBUSY", advice.madvise(uvm, p, OWN, va, 2 * P, MADV_FREE))  # wired
    uvm.limits = Limits(map_entries=2)
    await expect("ENOMEM", advice.madvise(uvm, p, OWN, va + 4 * P, 1, MADV_RANDOM))
    assert (layout(uvm, p), uvm.pages.free.count, uvm.pages.active.count) == before
    # the other advice skip holes
    uvm.limits = Limits()
    await advice.madvise(uvm, p, OWN, va, 6 * P, MADV_WILLNEED)
    await advice.madvise(uvm, p, OWN, va, 6 * P, MADV_SEQUENTIAL)
    assert [adv for *_, adv in layout(uvm, p)] == [MADV_SEQUENTIAL] * 2
    await clean(uvm)


# -- DONTNEED ---------------------------------------------------------------------------------


async def test_dontneed_deactivates_anon_and_file_pages_but_not_wired_or_loaned(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    uvm, mmu = vm
    (tmp_path / "disk" / "d.bin").write_bytes(b"d" * 2 * P)
    h, _ = files.open(uvm, OWN, "d.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 4 * P, RW)
    fva = await mmap.mmap(uvm, p, OWN, 2 * P, RW, handle=h, shared=True, va=va + 4 * P)
    assert fva == va + 4 * P
    await cpu_store(uvm, mmu, p, va, b"a" * 4 * P)
    await cpu_store(uvm, mmu, p, fva + 5, b"dirty")  # a dirty file page
    assert await cpu_load(uvm, mmu, p, fva + P, 1) == b"d"
    await wiring.mlock(uvm, p, OWN, va, P)
    loaned = await loan_to_kernel(uvm, p, OWN, va + P, 1)
    pfns = [anon_pfn(uvm, p, va + i * P) for i in range(4)]
    await advice.madvise(uvm, p, OWN, va, 6 * P, MADV_DONTNEED)
    pq = uvm.pages.pqflags
    assert pq[pfns[0]] == 0  # wired: off the queues, untouched
    assert pq[pfns[1]] == PQ.ACTIVE  # loaned: left alone
    assert pq[pfns[2]] == pq[pfns[3]] == PQ.INACTIVE
    fpfns = list(uvm.objects[uvm.handles[(OWN, h)].id].pages.values())
    assert all(pq[f] == PQ.INACTIVE for f in fpfns)
    assert uvm.stats.madv_dontneed == 4
    assert (tmp_path / "disk" / "d.bin").read_bytes()[5:10] == b"dirty"  # PGO_CLEANIT first
    assert await cpu_load(uvm, mmu, p, va + 2 * P, 1) == b"a"  # the data stays
    unloan_pages(uvm, loaned)
    await clean(uvm)


# -- FREE ---------------------------------------------------------------------------------------


async def test_free_frees_private_anon_pages_and_a_read_is_zero(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    assert uvm.swap is not None
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 4 * P, RW)
    await cpu_store(uvm, mmu, p, va, b"f" * 4 * P)
    await pageout(uvm, p, va + 3 * P)  # page 3 only in swap
    await cpu_load(uvm, mmu, p, va + 3 * P, 1)  # back in, with its swap copy (a slot)
    await pageout(uvm, p, va + 2 * P)  # page 2 stays only in swap
    free, slots = uvm.pages.free.count, uvm.swap.swpginuse
    assert await advice.mincore(uvm, p, OWN, va, 4 * P) == b"\x01\x01\x00\x01"
    await advice.madvise(uvm, p, OWN, va, 4 * P, MADV_FREE)
    assert uvm.stats.madv_free == 3
    assert uvm.pages.free.count == free + 3
    assert uvm.swap.swpginuse == slots - 1  # the slot of page 3 went with its anon
    assert all(mmu.extract(p, va + i * P) is None for i in range(4))  # translations first
    assert await advice.mincore(uvm, p, OWN, va, 4 * P) == bytes(4)
    await clean(uvm)
    assert await cpu_load(uvm, mmu, p, va, 3) == bytes(3)  # zero-fill
    # an anon only in swap is left, as NetBSD's uvm_map_clean leaves it
    assert await cpu_load(uvm, mmu, p, va + 2 * P, 3) == b"fff"
    await clean(uvm)


async def test_free_of_a_private_file_mapping_shows_the_file_again(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    uvm, mmu = vm
    (tmp_path / "disk" / "pf.bin").write_bytes(b"file" * (P // 2))
    h, _ = files.open(uvm, OWN, "pf.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 2 * P, RW, handle=h)
    await cpu_store(uvm, mmu, p, va, b"MINE")
    await advice.madvise(uvm, p, OWN, va, 2 * P, MADV_FREE)
    assert await cpu_load(uvm, mmu, p, va, 4) == b"file"
    assert (tmp_path / "disk" / "pf.bin").read_bytes()[:4] == b"file"
    await clean(uvm)


async def test_free_of_shared_memory_only_deactivates_or_writes_back(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    """An amap with another reference (fork), an aobj: deactivated, the data stays. A file
    page: written if dirty, then freed; a read brings the file's bytes back."""
    uvm, mmu = vm
    h, _ = files.open(uvm, OWN, "sf.bin", True, 2 * P)
    p = await mmap.spawn(uvm, OWN)
    priv = await mmap.mmap(uvm, p, OWN, P, RW)
    shm = await mmap.mmap(uvm, p, OWN, P, RW, shared=True)
    fsh = await mmap.mmap(uvm, p, OWN, 2 * P, RW, handle=h, shared=True)
    for a in (priv, shm, fsh):
        await cpu_store(uvm, mmu, p, a, b"keep")
    c = await mmap.fork(uvm, p, OWN)  # the private amap now has two references
    free = uvm.pages.free.count
    for a, n in ((priv, P), (shm, P), (fsh, 2 * P)):
        await advice.madvise(uvm, p, OWN, a, n, MADV_FREE)
    assert uvm.pages.free.count == free + 1  # the file page
    assert uvm.stats.madv_free == 1
    assert uvm.pages.pqflags[anon_pfn(uvm, p, priv)] == PQ.INACTIVE
    assert (tmp_path / "disk" / "sf.bin").read_bytes()[:4] == b"keep"
    for a in (priv, shm, fsh):
        assert await cpu_load(uvm, mmu, p, a, 4) == b"keep"
        assert await cpu_load(uvm, mmu, c, a, 4) == b"keep"
    await clean(uvm)


async def test_free_of_a_loaned_anon_page_orphans_it(vm: tuple[Uvm, Mmu]) -> None:
    """uvm_anfree of a loaned page: the loan keeps the bytes, the process reads zeros."""
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, P, RW)
    await cpu_store(uvm, mmu, p, va, b"lent")
    [pfn] = await loan_to_kernel(uvm, p, OWN, va, 1)
    free = uvm.pages.free.count
    await advice.madvise(uvm, p, OWN, va, P, MADV_FREE)
    assert uvm.pages.free.count == free  # disowned, kept by its loan
    assert uvm.pages.uanon[pfn] == NIL
    assert uvm.pages.loan_count[pfn] == 1
    assert bytes(uvm.ram.frame(pfn)[:4]) == b"lent"
    await clean(uvm)
    assert await cpu_load(uvm, mmu, p, va, 4) == bytes(4)
    unloan_pages(uvm, [pfn])
    assert uvm.pages.pqflags[pfn] == PQ.FREE
    await clean(uvm)


# -- WILLNEED ------------------------------------------------------------------------------------


async def test_willneed_reads_file_and_swap_in_without_mapping(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    uvm, mmu = vm
    (tmp_path / "disk" / "w.bin").write_bytes(b"w" * 3 * P)
    h, _ = files.open(uvm, OWN, "w.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    fva = await mmap.mmap(uvm, p, OWN, 8 * P, RW, handle=h)  # 3 pages of file, 5 beyond
    ava = await mmap.mmap(uvm, p, OWN, 2 * P, RW)
    await cpu_store(uvm, mmu, p, ava, b"s" * 2 * P)
    await pageout(uvm, p, ava)
    await cpu_store(uvm, mmu, p, fva + P, b"anon over file")  # page 1 of the file is hidden
    before = uvm.stats.fltget
    assert await advice.mincore(uvm, p, OWN, fva, 3 * P) == b"\x00\x01\x00"
    await advice.madvise(uvm, p, OWN, fva, 16 * P, MADV_WILLNEED)  # ava's pages too
    assert uvm.stats.madv_willneed == 3  # file pages 0 and 2, and the swapped anon
    assert uvm.stats.fltget == before + 2
    assert await advice.mincore(uvm, p, OWN, fva, 3 * P) == b"\x01\x01\x01"
    assert await advice.mincore(uvm, p, OWN, ava, 2 * P) == b"\x01\x01"
    assert mmu.extract(p, fva + 2 * P) is None
    assert mmu.extract(p, ava) is None
    assert uvm.pages.pqflags[anon_pfn(uvm, p, ava)] == PQ.ACTIVE
    await clean(uvm)
    assert await cpu_load(uvm, mmu, p, ava, 2) == b"ss"
    assert await cpu_load(uvm, mmu, p, fva + 2 * P, 2) == b"ww"


async def test_willneed_stops_at_freemin_and_costs_nothing_on_a_huge_sparse_range(
    tmp_path: Path,
) -> None:
    uvm, mmu = make_uvm(64, tmp_path, swap_pages=8)
    (tmp_path / "disk" / "big.bin").write_bytes(b"b" * 64 * P)  # as large as RAM
    h, _ = files.open(uvm, OWN, "big.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 1 << 39, RW, handle=h)
    await advice.madvise(uvm, p, OWN, va, 1 << 39, MADV_WILLNEED)
    assert uvm.pages.free.count == uvm.freemin  # no further: the daemon is not woken
    assert uvm.stats.madv_willneed == 64 - uvm.freemin
    await clean(uvm)
    big = await mmap.mmap(uvm, p, OWN, 1 << 39, RW)
    await cpu_store(uvm, mmu, p, big + (1 << 38), b"one page")
    t0 = time.perf_counter()
    await advice.madvise(uvm, p, OWN, big, 1 << 39, MADV_WILLNEED)  # nothing to read
    await advice.madvise(uvm, p, OWN, big, 1 << 39, MADV_DONTNEED)
    await advice.madvise(uvm, p, OWN, big, 1 << 39, MADV_FREE)
    assert time.perf_counter() - t0 < 1.0  # O(used slots), never O(pages of the range)
    assert uvm.stats.madv_willneed == 64 - uvm.freemin
    assert uvm.stats.madv_free == 1


# -- mincore ---------------------------------------------------------------------------------------


async def test_mincore_follows_touch_pageout_and_free(vm: tuple[Uvm, Mmu], tmp_path: Path) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 3 * P, RW)
    assert await advice.mincore(uvm, p, OWN, va, 3 * P) == bytes(3)
    await cpu_store(uvm, mmu, p, va + P, b"t")
    assert await advice.mincore(uvm, p, OWN, va, 3 * P - 1) == b"\x00\x01\x00"  # length up
    await pageout(uvm, p, va + P)
    assert await advice.mincore(uvm, p, OWN, va, 3 * P) == bytes(3)
    await cpu_load(uvm, mmu, p, va + P, 1)
    assert await advice.mincore(uvm, p, OWN, va + P, 1) == b"\x01"
    await advice.madvise(uvm, p, OWN, va, 3 * P, MADV_FREE)
    assert await advice.mincore(uvm, p, OWN, va, 3 * P) == bytes(3)
    # an anon only in swap over a resident file page: resident, as sys_mincore says
    (tmp_path / "disk" / "m.bin").write_bytes(b"m" * P)
    h, _ = files.open(uvm, OWN, "m.bin", False, None)
    fva = await mmap.mmap(uvm, p, OWN, P, RW, handle=h)
    await cpu_store(uvm, mmu, p, fva, b"M")  # promoted: the file page stays resident
    await pageout(uvm, p, fva)
    assert await advice.mincore(uvm, p, OWN, fva, P) == b"\x01"
    await clean(uvm)


async def test_mincore_errnos(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 2 * P, RW)
    await expect("EINVAL", advice.mincore(uvm, p, OWN, va + 1, P))  # sys_mincore: aligned
    await expect("EINVAL", advice.mincore(uvm, p, OWN, va, 0))
    await expect("EINVAL", advice.mincore(uvm, p, OWN, va, (MINCORE_MAX_PAGES + 1) * P))
    await expect("ENOMEM", advice.mincore(uvm, p, OWN, va, 3 * P))  # past the end: a hole
    await expect("ENOMEM", advice.mincore(uvm, p, OWN, 0, P))  # below user space
    await expect("ENOMEM", advice.mincore(uvm, p, OWN, USER_TOP - P, 2 * P))
    await expect("ESRCH", advice.mincore(uvm, p + 9, OWN, va, P))


async def test_mincore_of_the_most_pages_costs_what_they_are(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, MINCORE_MAX_PAGES * P, RW)
    assert va >= USER_MIN
    vec = await advice.mincore(uvm, p, OWN, va, MINCORE_MAX_PAGES * P)
    assert vec == bytes(MINCORE_MAX_PAGES)


# -- fault-ahead by advice (machine.uvm.ahead) ------------------------------------------------


async def _window(uvm: Uvm, mmu: Mmu, adv: int) -> tuple[list[int], list[int]]:
    """20 resident, unmapped pages; a read fault at page 10. => (neighbour page indexes,
    pages behind now on the inactive queue)."""
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 20 * P, RW)
    for i in range(20):
        await cpu_store(uvm, mmu, p, va + i * P, b"n")
    mmu.remove(p, va, va + 20 * P)
    await advice.madvise(uvm, p, OWN, va, 20 * P, adv)
    sp = uvm.spaces[p]
    async with sp.lock:
        r = await fault_locked(uvm, sp, va + 10 * P, Prot.READ, wire=False)
        near = neighbours(uvm, sp, r, int(Prot.READ))
        for n in (r, *near):
            uvm.unbusy(n.pfn)
    inactive = [
        i for i in range(20) if uvm.pages.pqflags[anon_pfn(uvm, p, va + i * P)] == PQ.INACTIVE
    ]
    return sorted((n.va - va) // P for n in near), inactive


async def test_the_fault_ahead_window_follows_the_advice(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    assert await _window(uvm, mmu, MADV_NORMAL) == ([7, 8, 9, 11, 12, 13, 14], [])
    assert await _window(uvm, mmu, MADV_RANDOM) == ([], [])
    mapped = uvm.stats.fltnamap
    # SEQUENTIAL: 7 ahead mapped, the 8 behind deactivated instead (uvmfault_anonflush)
    assert await _window(uvm, mmu, MADV_SEQUENTIAL) == (list(range(11, 18)), list(range(2, 10)))
    assert uvm.stats.fltnamap == mapped + 7
    assert uvm.stats.fltbehind == 8
    await clean(uvm)


def _page_at(uvm: Uvm, asid: int, va: int) -> int:
    """The resident page a fault at va would find: the anon's, else the object's."""
    e = uvm.spaces[asid].map.lookup(va)
    assert e is not None
    anon = e.amap.lookup(e.slot(va)) if e.amap is not None else None
    if anon is not None:
        return anon.page
    assert e.obj is not None
    return e.obj.pages[e.pgoff(va)]


async def test_fault_ahead_never_maps_nor_busies_a_busy_neighbour(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    """A neighbour another holder keeps BUSY (the pager, the page daemon's claim, another
    fault) is left out of the window, anon layer and object layer alike; the holder's
    BUSY survives the trap's release, which unbusies only what fault-ahead busied."""
    uvm, mmu = vm
    (tmp_path / "disk" / "ahead.bin").write_bytes(b"f" * (8 * P))
    h, _ = files.open(uvm, OWN, "ahead.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    anon_va = await mmap.mmap(uvm, p, OWN, 8 * P, RW)
    file_va = await mmap.mmap(uvm, p, OWN, 8 * P, Prot.READ, handle=h, shared=True)
    for i in range(8):
        await cpu_store(uvm, mmu, p, anon_va + i * P, b"n")
        assert await cpu_load(uvm, mmu, p, file_va + i * P, 1) == b"f"
    sp = uvm.spaces[p]
    for va in (anon_va, file_va):
        mmu.remove(p, va, va + 8 * P)
        held = {_page_at(uvm, p, va + i * P) for i in (1, 3)}  # pages 1 and 3 BUSY elsewhere
        for pfn in held:
            uvm.busy(pfn)
        async with sp.lock:
            r = await fault_locked(uvm, sp, va + 2 * P, Prot.READ, wire=False)
            near = neighbours(uvm, sp, r, int(Prot.READ))
            assert sorted((n.va - va) // P for n in near) == [0, 4, 5, 6]
            assert held.isdisjoint(n.pfn for n in near)
            for n in (r, *near):  # the trap's release
                uvm.unbusy(n.pfn)
        assert all(uvm.pages.flags[pfn] & PageFlag.BUSY for pfn in held)
        for pfn in held:
            uvm.unbusy(pfn)
    await clean(uvm)
