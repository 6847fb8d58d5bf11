"""The uvm core with an in-process pmap: mmap/munmap, faults, exit, conservation."""

from __future__ import annotations

import pytest

from machine.mmu.pmap import Mmu
from machine.params import PAGE_SIZE
from machine.proto import BadAddress, UserError
from machine.proto.types import EnterFlags, Prot
from machine.tuning import clock_targets
from machine.uvm import mmap
from machine.uvm.audit import audit
from machine.uvm.fault import fault
from machine.uvm.map import MapEntry, VmMap
from machine.uvm.page import RESERVE_KERNEL
from machine.uvm.state import WAIT_TRIES, Uvm
from tests.unit.uvm.localpmap import make_uvm

OWNER = 77


def make(nframes: int = 64) -> tuple[Uvm, Mmu, list[int]]:
    events: list[int] = []
    uvm, mmu = make_uvm(nframes, events=events)
    return uvm, mmu, events


async def test_zero_fill_fault_maps_a_zeroed_page() -> None:
    uvm, mmu, _ = make()
    asid = await mmap.spawn(uvm, OWNER)
    va = await mmap.mmap(uvm, asid, OWNER, 4 * PAGE_SIZE, Prot.READ | Prot.WRITE)
    uvm.ram.frame(0)[:8] = b"garbage!"  # the next page handed out must come back zeroed
    pfn = await fault(uvm, asid, OWNER, va + 5, Prot.WRITE)
    assert mmu.load(asid, va, 8) == bytes(8)
    assert mmu.extract(asid, va).pfn == pfn  # type: ignore[union-attr]
    assert uvm.stats.flt_przero == 1
    assert uvm.pages.active.count == 1
    assert await audit(uvm) == []
    # a second fault on the same page reuses the anon's page
    assert await fault(uvm, asid, OWNER, va, Prot.READ) == pfn
    assert uvm.stats.flt_anon == 1


async def test_faults_outside_mappings_or_against_protection_segfault() -> None:
    uvm, _, _ = make()
    asid = await mmap.spawn(uvm, OWNER)
    va = await mmap.mmap(uvm, asid, OWNER, PAGE_SIZE, Prot.READ)
    with pytest.raises(BadAddress, match="no mapping"):
        await fault(uvm, asid, OWNER, va + PAGE_SIZE, Prot.READ)
    with pytest.raises(BadAddress, match="-w- access"):
        await fault(uvm, asid, OWNER, va, Prot.WRITE)
    assert uvm.pages.free.count == 64
    assert uvm.stats.segv == 2


async def test_munmap_splits_entries_and_frees_only_the_range() -> None:
    uvm, mmu, _ = make()
    asid = await mmap.spawn(uvm, OWNER)
    va = await mmap.mmap(uvm, asid, OWNER, 8 * PAGE_SIZE, Prot.READ | Prot.WRITE)
    for i in range(8):
        await fault(uvm, asid, OWNER, va + i * PAGE_SIZE, Prot.WRITE)
    await mmap.munmap(uvm, asid, OWNER, va + 2 * PAGE_SIZE, 3 * PAGE_SIZE)
    assert uvm.pages.free.count == 64 - 5
    starts = [(e.start - va) // PAGE_SIZE for e in uvm.spaces[asid].map.entries]
    ends = [(e.end - va) // PAGE_SIZE for e in uvm.spaces[asid].map.entries]
    assert (starts, ends) == ([0, 5], [2, 8])
    assert mmu.extract(asid, va + 3 * PAGE_SIZE) is None
    assert await audit(uvm) == []


async def test_exit_frees_every_frame_and_the_pmap() -> None:
    uvm, mmu, _ = make()
    asid = await mmap.spawn(uvm, OWNER)
    va = await mmap.mmap(uvm, asid, OWNER, 10 * PAGE_SIZE, Prot.READ | Prot.WRITE)
    for i in range(10):
        await fault(uvm, asid, OWNER, va + i * PAGE_SIZE, Prot.WRITE)
    await mmap.exit(uvm, asid, OWNER)
    assert uvm.pages.free.count == 64
    assert asid not in mmu.pmaps
    assert asid not in uvm.spaces
    assert await audit(uvm) == []


async def test_running_out_of_frames_is_enomem_and_pressure_is_reported() -> None:
    uvm, _, events = make(nframes=16)
    asid = await mmap.spawn(uvm, OWNER)
    va = await mmap.mmap(uvm, asid, OWNER, 32 * PAGE_SIZE, Prot.READ | Prot.WRITE)
    usable = 16 - RESERVE_KERNEL  # a user fault never takes the kernel's reserve
    for i in range(usable):
        await fault(uvm, asid, OWNER, va + i * PAGE_SIZE, Prot.WRITE)
    with pytest.raises(UserError) as ei:
        await fault(uvm, asid, OWNER, va + usable * PAGE_SIZE, Prot.WRITE)
    assert ei.value.errno == "ENOMEM"
    # each failed allocation woke the page daemon; none came (no daemon here), so after
    # WAIT_TRIES sleeps the fault gave up
    assert uvm.stats.fltnoram == 1 + WAIT_TRIES
    assert events == [RESERVE_KERNEL] * (1 + WAIT_TRIES)
    assert await audit(uvm) == []


async def test_ownership_is_checked() -> None:
    uvm, _, _ = make()
    asid = await mmap.spawn(uvm, OWNER)
    with pytest.raises(UserError) as other:
        await mmap.mmap(uvm, asid, OWNER + 1, PAGE_SIZE, Prot.READ)
    with pytest.raises(UserError) as unknown:
        await mmap.exit(uvm, asid + 100, OWNER)
    # Another session's space is answered as one that does not exist: no oracle.
    assert other.value.errno == unknown.value.errno == "ESRCH"
    assert other.value.detail.replace(str(asid), "N") == unknown.value.detail.replace(
        str(asid + 100), "N"
    )


async def test_audit_detects_disagreement_with_the_mmu() -> None:
    uvm, mmu, _ = make()
    asid = await mmap.spawn(uvm, OWNER)
    va = await mmap.mmap(uvm, asid, OWNER, 2 * PAGE_SIZE, Prot.READ | Prot.WRITE)
    pfn = await fault(uvm, asid, OWNER, va, Prot.WRITE)
    mmu.enter(asid, va + PAGE_SIZE, pfn, Prot.READ, EnterFlags.NONE)  # a mapping uvm never made
    problems = await audit(uvm)
    assert any(p.startswith("U3") for p in problems)


def test_tune_follows_the_modern_formula() -> None:
    t = clock_targets(16384)  # 64 MiB: npages/200, within [32, 256]; freetarg 4/3
    assert (t.freemin, t.freetarg) == (81, 108)
    assert clock_targets(262144).freemin == 256  # 1 GiB: clamped to 1 MiB worth of pages
    small = clock_targets(4096)
    assert small.freemin == 32
    assert small.freetarg == 42


def test_map_find_space_and_carve() -> None:
    m = VmMap()
    m.insert(MapEntry(0x1000, 0x3000, Prot.READ, Prot.READ))
    m.insert(MapEntry(0x5000, 0x7000, Prot.READ, Prot.READ))
    assert m.find_space(0x2000) == 0x3000
    assert m.find_space(0x3000) == 0x7000
    assert m.lookup(0x2FFF) is m.entries[0]
    assert m.lookup(0x3000) is None
    out = m.clip(0x2000, 0x6000)
    m.remove(out)
    assert [(e.start, e.end) for e in out] == [(0x2000, 0x3000), (0x5000, 0x6000)]
    assert [(e.start, e.end) for e in m.entries] == [(0x1000, 0x2000), (0x6000, 0x7000)]
    assert m.check() == []
