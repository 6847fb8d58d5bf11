"""uvm memory follows use (sparse amaps, no per-page loops) and the limits of machine.limits.

Issue 9, defect 3: one store at the end of a 2^36-byte anonymous mapping cost
uvm 256 MiB (the amap's slot arrays were sized by the entry), 2^40 cost 4 GiB,
and a munmap of such a range looped over every page. Here a 2^40 mapping,
stored to, forked, stored to again, unmapped and exited costs uvm a few KiB
and milliseconds. Then each limit: its errno, and that the refused request
changed nothing (spaces, entries, mapped size, handles, frames; audit clean).
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from machine.client import RequestError
from machine.limits import Limits
from machine.mmu.pmap import Mmu
from machine.params import PAGE_SIZE, USER_MIN, USER_TOP
from machine.proto import Errno, UserError
from machine.proto.types import Prot
from machine.proto.vmcalls import RLIMIT_MEMLOCK
from machine.testing import SimMachine
from machine.uvm import files, mmap, wiring
from machine.uvm.audit import audit
from machine.uvm.state import Uvm
from tests.unit.uvm.localpmap import make_uvm
from tests.unit.uvm.test_core import OWN, cpu_load, cpu_store

RW = Prot.READ | Prot.WRITE
OTHER = 78  # another session
MEM_BOUND = 5 << 20  # bytes uvm may allocate for a handful of touched pages
TIME_BOUND_S = 1.0


@pytest.fixture
def vm(tmp_path: Path) -> tuple[Uvm, Mmu]:
    return make_uvm(64, tmp_path, swap_pages=64)


async def clean(uvm: Uvm) -> None:
    assert await audit(uvm) == []


async def measured(work: Callable[[], Awaitable[Any]]) -> tuple[Any, int, float]:
    """=> (result, peak bytes Python allocated, seconds) of running work."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        out = await work()
        return out, tracemalloc.get_traced_memory()[1], time.perf_counter() - t0
    finally:
        tracemalloc.stop()


def state(uvm: Uvm, mmu: Mmu) -> tuple[Any, ...]:
    """What a refused request must leave as it was."""
    return (
        sorted(uvm.spaces),
        {
            a: [(e.start, e.end, e.prot, e.wired_count) for e in sp.map.entries]
            for a, sp in uvm.spaces.items()
        },
        {a: sp.map.size for a, sp in uvm.spaces.items()},
        sorted(uvm.handles),
        sorted(uvm.objects),
        dict(uvm.procs.held),
        sorted(mmu.pmaps),
        uvm.pages.free.count,
        uvm.pages.wired,
        len(uvm.anons),
        (uvm.entry_pool.nentries, uvm.entry_pool.reserved),
    )


# -- memory follows use ----------------------------------------------------------------


@pytest.mark.parametrize("shift", [36, 40])
async def test_one_store_at_the_end_of_a_huge_mapping_costs_what_it_touches(
    vm: tuple[Uvm, Mmu], shift: int
) -> None:
    """mmap 2^shift + store the last byte + fork + store in the child + munmap + exit:
    bounded memory and time (before: 512 MiB / 3.7 s for 2^36, 8 GiB / 35 s for 2^40)."""
    uvm, mmu = vm
    size = 1 << shift
    p = await mmap.spawn(uvm, OWN)

    async def work() -> None:
        va = await mmap.mmap(uvm, p, OWN, size, RW)
        last = va + size - PAGE_SIZE
        await cpu_store(uvm, mmu, p, last + PAGE_SIZE - 1, b"P")
        c = await mmap.fork(uvm, p, OWN)
        await cpu_store(uvm, mmu, c, last + PAGE_SIZE - 1, b"C")
        assert await cpu_load(uvm, mmu, p, last + PAGE_SIZE - 1, 1) == b"P"
        assert await cpu_load(uvm, mmu, c, last + PAGE_SIZE - 1, 1) == b"C"
        assert await cpu_load(uvm, mmu, c, va, 4) == b"\0" * 4  # untouched: zero-fill
        await clean(uvm)
        (e,) = uvm.spaces[c].map.entries
        assert e.amap is not None
        assert e.amap.nslot == size // PAGE_SIZE
        assert e.amap.nused == 2
        await mmap.munmap(uvm, c, OWN, va, size)
        assert uvm.spaces[c].map.entries == []
        assert uvm.spaces[c].map.size == 0
        await mmap.exit(uvm, c, OWN)
        await mmap.munmap(uvm, p, OWN, va, size)
        await mmap.exit(uvm, p, OWN)

    _, peak, seconds = await measured(work)
    assert peak < MEM_BOUND, f"uvm allocated {peak} bytes for 3 touched pages"
    assert seconds < TIME_BOUND_S
    await clean(uvm)
    assert uvm.pages.free.count == uvm.pages.npages
    assert uvm.anons == {}
    assert uvm.spaces == {}
    assert not uvm.procs.held


async def test_fork_of_a_huge_sparse_mapping_stays_copy_on_write(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    size = 1 << 40
    p = await mmap.spawn(uvm, OWN)

    async def work() -> None:
        va = await mmap.mmap(uvm, p, OWN, size, RW)
        spots = [va, va + size // 2 + 5 * PAGE_SIZE, va + size - PAGE_SIZE]
        for i, a in enumerate(spots):
            await cpu_store(uvm, mmu, p, a + 7, b"parent%d" % i)
        c = await mmap.fork(uvm, p, OWN)
        await clean(uvm)
        assert await cpu_store(uvm, mmu, c, spots[1] + 7, b"child!!") == 1  # one COW fault
        await cpu_store(uvm, mmu, p, spots[2] + 7, b"PARENT2")
        await clean(uvm)
        assert await cpu_load(uvm, mmu, p, spots[1] + 7, 7) == b"parent1"
        assert await cpu_load(uvm, mmu, c, spots[1] + 7, 7) == b"child!!"
        assert await cpu_load(uvm, mmu, c, spots[2] + 7, 7) == b"parent2"
        assert await cpu_load(uvm, mmu, c, spots[0] + 7, 7) == b"parent0"
        (pe,), (ce,) = uvm.spaces[p].map.entries, uvm.spaces[c].map.entries
        assert pe.amap is not None
        assert ce.amap is not None
        assert pe.amap is not ce.amap
        assert pe.amap.nused == ce.amap.nused == 3
        shared = {a.id for _, a in pe.amap.used()} & {a.id for _, a in ce.amap.used()}
        assert len(shared) == 1  # spots[0]: still shared, read-only in both
        await mmap.exit(uvm, p, OWN)
        await clean(uvm)
        assert await cpu_load(uvm, mmu, c, spots[0] + 7, 7) == b"parent0"
        await mmap.exit(uvm, c, OWN)

    _, peak, seconds = await measured(work)
    assert peak < MEM_BOUND
    assert seconds < TIME_BOUND_S
    assert uvm.pages.free.count == uvm.pages.npages
    assert uvm.anons == {}


async def test_munmap_mprotect_mlock_of_huge_mostly_empty_ranges_are_fast(
    vm: tuple[Uvm, Mmu],
) -> None:
    uvm, mmu = vm
    size = 1 << 40
    p = await mmap.spawn(uvm, OWN)

    async def work() -> None:
        va = await mmap.mmap(uvm, p, OWN, size, RW)
        lo, hi = va + PAGE_SIZE, va + size - 2 * PAGE_SIZE
        await cpu_store(uvm, mmu, p, va, b"first")
        await cpu_store(uvm, mmu, p, hi, b"last")
        # mprotect the huge middle: three entries, the amap split by its used slots
        await mmap.mprotect(uvm, p, OWN, lo, hi - lo, Prot.READ)
        entries = uvm.spaces[p].map.entries
        assert [(e.start, e.end) for e in entries] == [(va, lo), (lo, hi), (hi, va + size)]
        assert [e.amap.nused if e.amap else 0 for e in entries] == [1, 0, 1]
        with pytest.raises(UserError) as ei:  # the middle is read-only now
            await cpu_store(uvm, mmu, p, lo + size // 4, b"x")
        assert ei.value.errno == "EFAULT"
        await clean(uvm)
        # mlock of the huge middle: refused up front (it could never be wired)
        before = state(uvm, mmu)
        with pytest.raises(UserError) as ei:
            await wiring.mlock(uvm, p, OWN, lo, hi - lo)
        assert ei.value.errno == "EAGAIN"
        assert state(uvm, mmu) == before
        # mlock + munlock of the whole mapping's small touched ends
        await wiring.mlock(uvm, p, OWN, va, PAGE_SIZE)
        await wiring.mlock(uvm, p, OWN, hi, PAGE_SIZE)
        assert uvm.pages.wired == 2
        pte = mmu.extract(p, va)
        assert pte is not None
        assert uvm.resident_pages(uvm.spaces[p].map.entries[0]) == [pte.pfn]
        assert uvm.resident_pages(uvm.spaces[p].map.entries[1]) == []  # 2^40 - 3 pages, none
        await wiring.munlock(uvm, p, OWN, hi, PAGE_SIZE)
        await wiring.munlock(uvm, p, OWN, va, PAGE_SIZE)
        assert uvm.pages.wired == 0
        # munmap of almost all of it, across the clipped entries
        await mmap.munmap(uvm, p, OWN, lo, hi + PAGE_SIZE - lo)
        assert [(e.start, e.end) for e in uvm.spaces[p].map.entries] == [
            (va, lo),
            (hi + PAGE_SIZE, va + size),
        ]
        assert await cpu_load(uvm, mmu, p, va, 5) == b"first"
        await clean(uvm)
        await mmap.exit(uvm, p, OWN)

    _, peak, seconds = await measured(work)
    assert peak < MEM_BOUND
    assert seconds < TIME_BOUND_S
    assert uvm.pages.free.count == uvm.pages.npages
    assert uvm.anons == {}


async def test_mmap_length_and_address_are_capped_without_a_panic(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    uvm.limits = Limits(vsize=1 << 47)
    p = await mmap.spawn(uvm, OWN)
    before = state(uvm, mmu)
    for kw, errno in [
        ({"length": 0}, "EINVAL"),
        ({"length": -PAGE_SIZE}, "EINVAL"),
        ({"length": PAGE_SIZE, "offset": -PAGE_SIZE}, "EINVAL"),
        ({"length": USER_TOP}, "ENOMEM"),  # larger than user space
        ({"length": 1 << 60}, "ENOMEM"),
        ({"length": 2 * PAGE_SIZE, "va": USER_TOP - PAGE_SIZE, "fixed": True}, "EINVAL"),
        ({"length": PAGE_SIZE, "va": 0, "fixed": True}, "EINVAL"),
    ]:
        args: dict[str, Any] = {"prot": RW, **kw}
        with pytest.raises(UserError) as ei:
            await mmap.mmap(uvm, p, OWN, **args)
        assert ei.value.errno == errno, kw
        assert state(uvm, mmu) == before
    # the whole of user space is one (sparse) mapping, and costs nothing until touched
    va = await mmap.mmap(uvm, p, OWN, USER_TOP - USER_MIN, RW)
    assert va == USER_MIN
    await cpu_store(uvm, mmu, p, USER_TOP - 1, b"!")
    await clean(uvm)
    await mmap.exit(uvm, p, OWN)
    assert uvm.pages.free.count == uvm.pages.npages


async def test_many_small_mappings_are_placed_first_fit_in_log_time(vm: tuple[Uvm, Mmu]) -> None:
    """find_space starts at first_free (before: a scan of every entry, 34 s for 16384)."""
    uvm, _ = vm
    p = await mmap.spawn(uvm, OWN)
    t0 = time.perf_counter()
    vas = [await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW) for _ in range(16384)]
    assert vas == [USER_MIN + i * PAGE_SIZE for i in range(16384)]
    assert time.perf_counter() - t0 < 5.0
    await mmap.munmap(uvm, p, OWN, vas[100], 2 * PAGE_SIZE)
    await mmap.munmap(uvm, p, OWN, vas[7], PAGE_SIZE)
    assert uvm.spaces[p].map.first_free == vas[7]
    await clean(uvm)
    assert (
        await mmap.mmap(uvm, p, OWN, 2 * PAGE_SIZE, RW) == vas[100]
    )  # first fit skips the 1-page hole
    assert await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW) == vas[7]
    assert await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW) == vas[-1] + PAGE_SIZE
    assert (
        await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW, va=vas[50]) == vas[-1] + 2 * PAGE_SIZE
    )  # a hint
    await clean(uvm)


# -- limits -----------------------------------------------------------------------------


async def test_vsize_limit_gives_enomem_and_a_forked_child_inherits_the_size(
    vm: tuple[Uvm, Mmu],
) -> None:
    uvm, mmu = vm
    uvm.limits = Limits(vsize=16 * PAGE_SIZE)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 10 * PAGE_SIZE, RW)
    await cpu_store(uvm, mmu, p, va, b"x")
    before = state(uvm, mmu)
    with pytest.raises(UserError) as ei:
        await mmap.mmap(uvm, p, OWN, 7 * PAGE_SIZE, RW)
    assert ei.value.errno == "ENOMEM"
    assert state(uvm, mmu) == before
    await clean(uvm)
    c = await mmap.fork(uvm, p, OWN)
    assert uvm.spaces[c].map.size == uvm.spaces[p].map.size == 10 * PAGE_SIZE
    with pytest.raises(UserError) as ei:
        await mmap.mmap(uvm, c, OWN, 7 * PAGE_SIZE, RW)
    assert ei.value.errno == "ENOMEM"
    await mmap.mmap(uvm, c, OWN, 6 * PAGE_SIZE, RW)  # exactly at the limit
    await mmap.munmap(uvm, p, OWN, va, 4 * PAGE_SIZE)  # unmapping makes room again
    await mmap.mmap(uvm, p, OWN, 10 * PAGE_SIZE, RW)
    await clean(uvm)


async def test_map_entries_limit_gives_enomem_at_mmap_and_at_every_clip(
    vm: tuple[Uvm, Mmu],
) -> None:
    uvm, mmu = vm
    uvm.limits = Limits(map_entries=3)
    p = await mmap.spawn(uvm, OWN)
    vas = [await mmap.mmap(uvm, p, OWN, 4 * PAGE_SIZE, RW) for _ in range(3)]
    await cpu_store(uvm, mmu, p, vas[0] + PAGE_SIZE, b"keep")
    await wiring.mlock(uvm, p, OWN, vas[1], 4 * PAGE_SIZE)  # a whole entry: no split
    before = state(uvm, mmu)
    refused: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("mmap", lambda: mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW)),
        ("mprotect", lambda: mmap.mprotect(uvm, p, OWN, vas[0] + PAGE_SIZE, PAGE_SIZE, Prot.READ)),
        ("mlock", lambda: wiring.mlock(uvm, p, OWN, vas[0], PAGE_SIZE)),
        ("munlock", lambda: wiring.munlock(uvm, p, OWN, vas[1] + PAGE_SIZE, PAGE_SIZE)),
        ("munmap", lambda: mmap.munmap(uvm, p, OWN, vas[0] + PAGE_SIZE, PAGE_SIZE)),
    ]
    for what, call in refused:
        with pytest.raises(UserError) as ei:
            await call()
        assert ei.value.errno == "ENOMEM", what
        assert state(uvm, mmu) == before, what
        await clean(uvm)
    assert await cpu_load(uvm, mmu, p, vas[0] + PAGE_SIZE, 4) == b"keep"  # still mapped
    # a munmap that splits one entry but removes another leaves fewer: allowed
    await mmap.munmap(uvm, p, OWN, vas[1] + PAGE_SIZE, 7 * PAGE_SIZE)
    assert len(uvm.spaces[p].map.entries) == 2
    await mmap.mprotect(uvm, p, OWN, vas[0] + PAGE_SIZE, 3 * PAGE_SIZE, Prot.READ)  # one split: 3
    assert len(uvm.spaces[p].map.entries) == 3
    with pytest.raises(UserError):  # two splits would make 5
        await mmap.mprotect(uvm, p, OWN, vas[0] + 2 * PAGE_SIZE, PAGE_SIZE, Prot.NONE)
    await clean(uvm)


async def test_procs_limit_gives_eagain_at_spawn_and_fork_and_leaks_no_asid(
    vm: tuple[Uvm, Mmu],
) -> None:
    uvm, mmu = vm
    uvm.limits = Limits(procs=2)
    p = await mmap.spawn(uvm, OWN)
    await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW)
    c = await mmap.fork(uvm, p, OWN)
    before = state(uvm, mmu)
    for call in (lambda: mmap.spawn(uvm, OWN), lambda: mmap.fork(uvm, p, OWN)):
        with pytest.raises(UserError) as ei:
            await call()
        assert ei.value.errno == "EAGAIN"
        assert state(uvm, mmu) == before  # no space, no pmap
    other = await mmap.spawn(uvm, OTHER)  # another session has its own count
    assert other == c + 1  # no asid was spent on the refusals
    await mmap.exit(uvm, c, OWN)
    assert await mmap.spawn(uvm, OWN) == other + 1
    assert uvm.procs.held == {OWN: 2, OTHER: 1}
    await clean(uvm)


async def test_maxproc_bounds_the_machine_whatever_the_sessions(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    uvm.limits = Limits(procs=10, maxproc=3)
    p = await mmap.spawn(uvm, OWN)
    await mmap.spawn(uvm, OTHER)
    await mmap.spawn(uvm, OTHER + 1)
    before = state(uvm, mmu)
    for call in (lambda: mmap.spawn(uvm, OTHER + 2), lambda: mmap.fork(uvm, p, OWN)):
        with pytest.raises(UserError) as ei:
            await call()
        assert ei.value.errno == "EAGAIN"
        assert "machine" in ei.value.detail
        assert state(uvm, mmu) == before
    await mmap.exit(uvm, p, OWN)
    await mmap.spawn(uvm, OTHER + 2)  # an exit made room
    await clean(uvm)


async def test_files_limit_gives_emfile_and_opens_nothing(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    uvm, mmu = vm
    uvm.limits = Limits(files=2)
    h1, _ = files.open(uvm, OWN, "a.bin", True, PAGE_SIZE)
    files.open(uvm, OWN, "b.bin", True, PAGE_SIZE)
    before = state(uvm, mmu)
    with pytest.raises(UserError) as ei:
        files.open(uvm, OWN, "c.bin", True, PAGE_SIZE)
    assert ei.value.errno == "EMFILE"
    with pytest.raises(UserError) as ei:
        files.open(uvm, OWN, "a.bin", False, None)  # the same file again is one more handle
    assert ei.value.errno == "EMFILE"
    assert state(uvm, mmu) == before
    assert not (tmp_path / "disk" / "c.bin").exists()  # nothing created
    files.open(uvm, OTHER, "c.bin", True, PAGE_SIZE)  # another session has its own count
    await files.close(uvm, OWN, h1)
    files.open(uvm, OWN, "a.bin", False, None)
    await clean(uvm)


async def test_the_uvm_role_enforces_the_limits_it_is_booted_with() -> None:
    limits = Limits(procs=1, files=1)
    async with SimMachine.boot(seed=9, limits=limits, latency_s=(0.0, 0.0)) as sim:
        vm = sim.service("uvm").vm  # type: ignore[attr-defined]
        assert vm.limits == limits
        async with sim.attach() as m:
            await m.spawn()
            with pytest.raises(RequestError) as ei:
                await m.spawn()
            assert ei.value.errno is Errno.EAGAIN


# -- the machine's map entries (maxentries) -----------------------------------------------


async def test_maxentries_bounds_the_machine_at_mmap_clip_and_fork(vm: tuple[Uvm, Mmu]) -> None:
    """Red team: 2000 one-page mmaps x 400 forks grew uvm by 147 MiB, every process within
    its own map_entries. The machine's entries are one budget; each refusal changes nothing."""
    uvm, mmu = vm
    uvm.limits = Limits(maxentries=8)
    p = await mmap.spawn(uvm, OWN)
    vas = [await mmap.mmap(uvm, p, OWN, 4 * PAGE_SIZE, RW) for _ in range(3)]
    await cpu_store(uvm, mmu, p, vas[0] + PAGE_SIZE, b"keep")
    await wiring.mlock(uvm, p, OWN, vas[1], 4 * PAGE_SIZE)  # a whole entry: no split
    c = await mmap.fork(uvm, p, OWN)  # 6 entries
    o = await mmap.spawn(uvm, OTHER)
    await mmap.mmap(uvm, o, OTHER, PAGE_SIZE, RW)  # 7
    await mmap.mprotect(uvm, c, OWN, vas[2], PAGE_SIZE, Prot.READ)  # one split: 8, the limit
    assert uvm.entry_pool.nentries == 8
    await clean(uvm)
    before = state(uvm, mmu)
    refused: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("mmap", lambda: mmap.mmap(uvm, o, OTHER, PAGE_SIZE, RW)),  # another session's, too
        ("fork", lambda: mmap.fork(uvm, p, OWN)),  # the child's 3 entries are charged first
        ("fork of one entry", lambda: mmap.fork(uvm, o, OTHER)),
        ("mprotect", lambda: mmap.mprotect(uvm, p, OWN, vas[0] + PAGE_SIZE, PAGE_SIZE, Prot.READ)),
        ("mlock", lambda: wiring.mlock(uvm, p, OWN, vas[0], PAGE_SIZE)),
        ("munlock", lambda: wiring.munlock(uvm, p, OWN, vas[1] + PAGE_SIZE, PAGE_SIZE)),
        ("munmap of a middle", lambda: mmap.munmap(uvm, p, OWN, vas[0] + PAGE_SIZE, PAGE_SIZE)),
    ]
    for what, call in refused:
        with pytest.raises(UserError) as ei:
            await call()
        assert ei.value.errno == "ENOMEM", what
        assert "maxentries" in ei.value.detail, what
        assert state(uvm, mmu) == before, what
        await clean(uvm)
    assert await cpu_load(uvm, mmu, p, vas[0] + PAGE_SIZE, 4) == b"keep"
    # unmapping the end of an entry splits nothing; a whole entry gives one back
    await mmap.munmap(uvm, p, OWN, vas[1] + 3 * PAGE_SIZE, PAGE_SIZE)
    await mmap.munmap(uvm, c, OWN, vas[1], 4 * PAGE_SIZE)
    assert uvm.entry_pool.nentries == 7
    await mmap.mmap(uvm, o, OTHER, PAGE_SIZE, RW)  # room again, for anyone
    await clean(uvm)
    await mmap.exit(uvm, c, OWN)  # exit gives back every entry of the child (3)
    assert uvm.entry_pool.nentries == 5
    assert await mmap.fork(uvm, o, OTHER)  # 2 more: 7
    assert uvm.entry_pool.nentries == 7
    await clean(uvm)


async def test_a_fork_charges_its_childs_entries_before_the_child_exists(
    vm: tuple[Uvm, Mmu], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a fork waits for the mmu (write-protecting the parent), another space's mmap
    must not take the entries the child is about to get (reserved, not merely checked)."""
    uvm, mmu = vm
    uvm.limits = Limits(maxentries=7)
    p = await mmap.spawn(uvm, OWN)
    for _ in range(3):
        va = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW)
        await cpu_store(uvm, mmu, p, va, b"w")  # writable + an amap: fork protects it
    o = await mmap.spawn(uvm, OTHER)
    entered, gate = asyncio.Event(), asyncio.Event()
    real_protect = uvm.pmap.protect

    async def slow_protect(asid: int, sva: int, eva: int, prot: int) -> int:
        entered.set()
        await gate.wait()
        return await real_protect(asid, sva, eva, prot)

    monkeypatch.setattr(uvm.pmap, "protect", slow_protect)
    fork = asyncio.ensure_future(mmap.fork(uvm, p, OWN))
    await asyncio.wait_for(entered.wait(), 5)
    # the first child entry is in (inserted before the write-protect it waits for), the
    # other two still reserved
    assert (uvm.entry_pool.nentries, uvm.entry_pool.reserved) == (4, 2)
    await mmap.mmap(uvm, o, OTHER, PAGE_SIZE, RW)  # 3 + 3 reserved + 1: the last one
    with pytest.raises(UserError) as ei:
        await mmap.mmap(uvm, o, OTHER, PAGE_SIZE, RW)
    assert ei.value.errno == "ENOMEM"
    gate.set()
    c = await asyncio.wait_for(fork, 5)
    assert len(uvm.spaces[c].map.entries) == 3
    assert (uvm.entry_pool.nentries, uvm.entry_pool.reserved) == (7, 0)
    await clean(uvm)


async def test_a_fork_that_cannot_copy_wired_memory_leaves_no_half_child(
    vm: tuple[Uvm, Mmu],
) -> None:
    """amap_cow_now out of frames: ENOMEM, no child, no leaked anon, frame or reservation."""
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 20 * PAGE_SIZE, RW)  # copied by reference (COW)...
    for i in range(20):
        await cpu_store(uvm, mmu, p, va + i * PAGE_SIZE, b"cow")
    wva = await mmap.mmap(uvm, p, OWN, 24 * PAGE_SIZE, RW)  # ...then a wired one, copied now
    uvm.wiredmax = 64  # more than the default third of RAM; and the process may wire it all
    wiring.setrlimit(uvm, p, OWN, RLIMIT_MEMLOCK, 64 * PAGE_SIZE, 64 * PAGE_SIZE)
    await wiring.mlock(uvm, p, OWN, wva, 24 * PAGE_SIZE)
    before = state(uvm, mmu)
    asids = sorted(uvm.spaces)
    with pytest.raises(UserError) as ei:
        await mmap.fork(uvm, p, OWN)  # 64 frames: 44 used, too few left for 24 copies
    assert ei.value.errno == "ENOMEM"
    assert sorted(uvm.spaces) == asids
    assert state(uvm, mmu) == before
    await clean(uvm)
    await cpu_store(uvm, mmu, p, va, b"COW")  # the parent's COW entry still works
    assert await cpu_load(uvm, mmu, p, va + PAGE_SIZE, 3) == b"cow"
    await clean(uvm)


async def test_the_auditor_catches_an_entry_count_that_drifted(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    p = await mmap.spawn(uvm, OWN)
    await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW)
    await clean(uvm)
    uvm.entry_pool.nentries += 1
    assert any(problem.startswith("E1") for problem in await audit(uvm))
    uvm.entry_pool.nentries -= 1
    uvm.spaces[p].map.pool = type(uvm.entry_pool)()
    assert any("another entry pool" in problem for problem in await audit(uvm))


async def test_an_entry_costs_uvm_what_the_default_maxentries_assumes(
    vm: tuple[Uvm, Mmu],
) -> None:
    """Measured bytes per entry x the default maxentries stays near 200 MiB, for plain
    entries (fork of many mappings) and for entries that each hold an amap with an anon
    (a child clipping every inherited entry); forks stop with ENOMEM at the limit."""
    uvm, mmu = vm
    uvm.limits = Limits(maxentries=6000, procs=1 << 20, maxproc=1 << 20)
    p = await mmap.spawn(uvm, OWN)
    vas = [await mmap.mmap(uvm, p, OWN, 2 * PAGE_SIZE, RW) for _ in range(1000)]

    async def fork_to_the_limit() -> None:
        for _ in range(5):  # 1000 + 5 x 1000 entries
            await mmap.fork(uvm, p, OWN)
        with pytest.raises(UserError) as ei:
            await mmap.fork(uvm, p, OWN)
        assert ei.value.errno == "ENOMEM"

    _, plain, _ = await measured(fork_to_the_limit)
    assert uvm.entry_pool.nentries == 6000
    for a in [a for a in uvm.spaces if a != p]:
        await mmap.exit(uvm, a, OWN)
    uvm.limits = Limits(procs=1 << 20, maxproc=1 << 20)
    for va in vas[:20]:  # 20 entries of 2 anons each, inherited; clipped: 40 entries
        await cpu_store(uvm, mmu, p, va, b"a")
        await cpu_store(uvm, mmu, p, va + PAGE_SIZE, b"b")

    async def fork_and_clip() -> None:
        for _ in range(20):
            c = await mmap.fork(uvm, p, OWN)
            for va in vas[:20]:
                await mmap.mprotect(uvm, c, OWN, va + PAGE_SIZE, PAGE_SIZE, Prot.READ)

    _, amapped, _ = await measured(fork_and_clip)
    per_plain = plain / 5000
    per_amapped = (amapped - 20 * 980 * per_plain) / (20 * 40)
    assert per_plain < 200, per_plain
    assert per_amapped < 900, per_amapped
    assert Limits().maxentries * per_amapped < 240 << 20
    await clean(uvm)
