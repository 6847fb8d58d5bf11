"""Wiring faults and the auditor's wiring invariants (machine.uvm.pageable, W1-W3): what
mlock faults in and copies, a fault in a locked entry, a wiring that fails half way, locks
across loans (by era) and across a truncation of the locked file, MCL_FUTURE and mprotect.
The calls and their errnos: test_wiring.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from machine.mmu.pmap import Mmu
from machine.proto import Errno, UserError
from machine.proto.types import Prot
from machine.proto.vmcalls import MCL_CURRENT, MCL_FUTURE, O_RDWR
from machine.uvm import files, loan, mmap, wiring
from machine.uvm.audit import audit
from machine.uvm.state import Uvm
from tests.unit.uvm.localpmap import make_uvm
from tests.unit.uvm.test_core import OWN, cpu_load, cpu_store
from tests.unit.uvm.test_wiring import (
    NFRAMES,
    RW,
    P,
    clean,
    touch,
    vm,
    wired_counts,
    wired_ptes,
)

__all__ = ["vm"]  # the fixture, shared


# -- wiring faults --------------------------------------------------------------------------


async def test_wiring_a_read_only_private_mapping_copies_now(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    """uvm_fault_wire with UVM_FAULT_MAXPROT: a private mapping may be written (its
    maximum protection), so wiring copies its pages now, even while it is read-only;
    later changes to the file are no longer seen through it."""
    uvm, mmu = vm
    (tmp_path / "disk" / "f").write_bytes(b"old!" * (P // 4))
    h, _ = files.open(uvm, OWN, "f", False, None, O_RDWR)
    p = await mmap.spawn(uvm, OWN)
    ro = await mmap.mmap(uvm, p, OWN, P, Prot.READ, handle=h)
    rw = await mmap.mmap(uvm, p, OWN, P, RW, handle=h, shared=True)
    await wiring.mlock(uvm, p, OWN, ro, P)
    e = uvm.spaces[p].map.lookup(ro)
    assert e is not None
    assert e.amap is not None
    assert e.amap.nused == 1
    await cpu_store(uvm, mmu, p, rw, b"new!")
    assert await cpu_load(uvm, mmu, p, ro, 4) == b"old!"
    await clean(uvm)


async def test_a_fault_in_a_wired_entry_maps_wired_and_wires_once(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 2 * P, Prot.READ)
    await wiring.mlock(uvm, p, OWN, va, 2 * P)
    await mmap.mprotect(uvm, p, OWN, va, 2 * P, RW)
    assert await cpu_store(uvm, mmu, p, va, b"w") == 1  # the mapping was read-only
    pfn = mmu.pmaps[p].ptes[va // P].pfn
    assert mmu.pmaps[p].ptes[va // P].wired
    assert uvm.pages.wire_count[pfn] == 1
    await clean(uvm)
    await wiring.munlock(uvm, p, OWN, va, 2 * P)
    assert uvm.pages.wired == 0
    await clean(uvm)


async def test_a_failed_wiring_leaves_nothing_wired(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    hog = await mmap.spawn(uvm, OWN)
    hva = await mmap.mmap(uvm, hog, OWN, NFRAMES * P, RW)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 16 * P, RW)
    with pytest.raises(UserError):  # take every frame there is (no page daemon here)
        await touch(uvm, mmu, hog, hva, NFRAMES)
    await mmap.munmap(uvm, hog, OWN, hva, 8 * P)  # 8 frames back: too few for 16
    for call in (wiring.mlock(uvm, p, OWN, va, 16 * P), wiring.mlockall(uvm, p, OWN, MCL_CURRENT)):
        with pytest.raises(UserError) as ei:
            await call
        assert ei.value.errno == Errno.ENOMEM
        # the pages faulted in stay (as NetBSD's), none of them wired
        assert wired_counts(uvm, p) == [(va, va + 16 * P, 0)]
        assert uvm.pages.wired == 0
        assert wired_ptes(mmu, p) == 0
        await clean(uvm)


# -- the auditor ------------------------------------------------------------------------------


async def test_the_auditor_checks_the_wiring_invariants(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 2 * P, RW)
    spare = await mmap.mmap(uvm, p, OWN, P, RW)
    await wiring.mlockall(uvm, p, OWN, MCL_CURRENT | MCL_FUTURE)
    await clean(uvm)
    e = uvm.spaces[p].map.lookup(va)
    assert e is not None
    pfn = uvm.resident_pages(e)[0]
    uvm.pages.unwire(pfn)  # W1: a page of a locked entry left unwired
    problems = await audit(uvm)
    assert any(x.startswith("W1") and "anon" in x for x in problems), problems
    assert any(x.startswith("W1") and f"maps {va:#x}" in x for x in problems), problems
    uvm.pages.wire(pfn)
    await clean(uvm)
    e.wired_count = 0  # W3 (and the mmu's wired mappings in an unwired entry)
    problems = await audit(uvm)
    assert any(x.startswith("W3") for x in problems), problems
    assert any("wired in an unwired entry" in x for x in problems), problems
    e.wired_count = 1
    await clean(uvm)
    await wiring.munlock(uvm, p, OWN, spare, P)
    s = uvm.spaces[p].map.lookup(spare)
    assert s is not None
    stale = uvm.resident_pages(s)[0]
    uvm.pages.wire(stale)  # W2: a wiring no lock holds
    assert any(x.startswith("W2") for x in await audit(uvm))
    uvm.pages.unwire(stale)
    await clean(uvm)


# -- wiring and loans, by era ---------------------------------------------------------------


@pytest.mark.parametrize("era", ["1999", "modern"])
async def test_a_loaned_page_written_through_a_wired_entry(era: str) -> None:
    """modern refuses to loan a wired page (EBUSY); 1999 loans it (a second wiring), and a
    store through the locked mapping breaks the loan: the process's new copy is wired in
    its place, and the orphan goes with its last unloan. Clean audits all along, and every
    frame comes back."""
    uvm, mmu = make_uvm(32, knobs={"ERA": era})
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, P, RW)
    await wiring.mlock(uvm, p, OWN, va, P)
    if era == "modern":
        with pytest.raises(UserError) as ei:
            await loan.loan_to_kernel(uvm, p, OWN, va, 1)
        assert ei.value.errno == Errno.EBUSY
        return
    [old] = await loan.loan_to_kernel(uvm, p, OWN, va, 1)
    assert uvm.pages.wire_count[old] == 2  # the lock's and the loan's
    await clean(uvm)
    assert await cpu_store(uvm, mmu, p, va, b"new") == 1  # loaned: write-protected
    new = mmu.pmaps[p].ptes[va // P].pfn
    assert new != old
    assert uvm.pages.wire_count[new] == 1
    assert mmu.pmaps[p].ptes[va // P].wired
    await clean(uvm)
    await wiring.munlock(uvm, p, OWN, va, P)
    assert uvm.pages.wire_count[new] == 0
    loan.unloan_pages(uvm, [old])
    await mmap.exit(uvm, p, OWN)
    assert uvm.pages.free.count == uvm.pages.npages
    await clean(uvm)


async def test_a_locked_file_mapping_across_a_truncation(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    """uvm_vnp_setsize frees the pages beyond the end, wired or not (genfs_do_putpages);
    the lock stays on the entry. When the file grows again and another process reads a
    page in first, the locked process's fault on it wires it: the audit holds all along."""
    uvm, mmu = vm
    (tmp_path / "disk" / "f").write_bytes(b"x" * (3 * P))
    h, _ = files.open(uvm, OWN, "f", False, None, O_RDWR)
    p = await mmap.spawn(uvm, OWN)
    q = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 3 * P, RW, handle=h, shared=True)
    vq = await mmap.mmap(uvm, q, OWN, 3 * P, RW, handle=h, shared=True)
    await wiring.mlock(uvm, p, OWN, va, 3 * P)
    assert uvm.pages.wired == 3
    await files.ftruncate(uvm, OWN, h, P)
    assert uvm.pages.wired == 1  # the two pages beyond the end are gone, wiring and all
    await clean(uvm)
    await files.ftruncate(uvm, OWN, h, 3 * P)
    assert await cpu_load(uvm, mmu, q, vq + 2 * P, 1) == b"\0"  # read in by q, unwired
    await clean(uvm)
    assert await cpu_load(uvm, mmu, p, va + 2 * P, 1) == b"\0"  # p's fault wires it
    assert uvm.pages.wired == 2
    await clean(uvm)
    await wiring.munlock(uvm, p, OWN, va, 3 * P)
    assert uvm.pages.wired == 0
    await clean(uvm)


async def test_mprotect_out_of_prot_none_beyond_the_limit_under_mcl_future(
    vm: tuple[Uvm, Mmu],
) -> None:
    """uvm_map_protect: the protection changes, the wiring cannot be had: ENOMEM, the
    entry stays unwired (so the map is no longer all locked)."""
    uvm, _mmu = vm
    p = await mmap.spawn(uvm, OWN)
    await wiring.mlockall(uvm, p, OWN, MCL_CURRENT | MCL_FUTURE)
    va = await mmap.mmap(uvm, p, OWN, 1 << 30, Prot.NONE)  # sparse: nothing to wire yet
    sp = uvm.spaces[p]
    assert sp.map.all_locked
    with pytest.raises(UserError) as ei:
        await mmap.mprotect(uvm, p, OWN, va, 1 << 30, RW)  # far beyond wiredmax
    assert ei.value.errno == Errno.ENOMEM
    e = sp.map.lookup(va)
    assert e is not None
    assert e.prot == RW
    assert not e.wired_count
    assert not sp.map.all_locked
    assert uvm.pages.wired == 0
    await clean(uvm)


async def test_map_fixed_over_a_locked_mapping_under_mcl_future(vm: tuple[Uvm, Mmu]) -> None:
    """MAP_FIXED replaces the locked pages (unwired with their entry), and the new mapping
    is wired as it is made."""
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    await wiring.mlockall(uvm, p, OWN, MCL_CURRENT | MCL_FUTURE)
    va = await mmap.mmap(uvm, p, OWN, 4 * P, RW)
    await cpu_store(uvm, mmu, p, va + P, b"old")
    assert uvm.pages.wired == 4
    assert await mmap.mmap(uvm, p, OWN, 2 * P, RW, va=va + P, fixed=True) == va + P
    assert uvm.pages.wired == 4  # two old pages gone, two new ones wired
    assert await cpu_load(uvm, mmu, p, va + P, 3) == b"\0\0\0"
    assert wired_counts(uvm, p) == [
        (va, va + P, 1),
        (va + P, va + 3 * P, 1),
        (va + 3 * P, va + 4 * P, 1),
    ]
    await clean(uvm)
