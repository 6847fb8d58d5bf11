"""uvm-semantics.md section 14, the page-daemon scenarios on a whole uvm + pmap (in
process): the daemon's pass decides, claims through uvm, revokes at the pmap, and uvm
finishes. 15 clean reclaim, 16 referenced page, 17 dirty anon pageout with clustering."""

from __future__ import annotations

from pathlib import Path

from machine.params import PAGE_SIZE
from machine.pdaemon.daemon import run_pass
from machine.pdaemon.scan1999 import Scan1999
from machine.uvm import files, mmap
from machine.uvm.audit import audit
from machine.uvm.page import KERNEL, PQ
from machine.uvm.state import Uvm
from tests.unit.pdaemon.test_daemon_pass import LocalOps
from tests.unit.uvm.localpmap import make_uvm, settings_of
from tests.unit.uvm.test_core import OWN, RW, cpu_load, cpu_store

KNOBS = settings_of({"DIAGNOSTIC": True, "PD_WIRED_CHECK": "none"})


def _squeeze(uvm: Uvm, leave: int) -> list[int]:
    """Take free frames away (as kernel memory would) until `leave` remain."""
    taken = []
    while uvm.pages.free.count > leave:
        taken.append(uvm.pages.alloc(obj=10**6, who=KERNEL))
    return taken


def _unsqueeze(uvm: Uvm, taken: list[int]) -> None:
    for pfn in taken:
        uvm.pages.flags[pfn] = 0
        uvm.pages.free_page(pfn)


async def test_15_clean_inactive_page_is_reclaimed(tmp_path: Path) -> None:
    uvm, mmu = make_uvm(256, tmp_path)
    (tmp_path / "disk" / "c.bin").write_bytes(b"clean" * 1000)
    h, _ = files.open(uvm, OWN, "c.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW, handle=h, shared=True)
    assert await cpu_load(uvm, mmu, p, va, 5) == b"clean"
    obj = uvm.handles[(OWN, h)]
    pfn = obj.pages[0]
    uvm.pages.deactivate(pfn)
    mmu.get_attrs([pfn], True, False)  # not referenced since
    _squeeze(uvm, 10)  # free < freetarg
    out = await run_pass(LocalOps(uvm, mmu), Scan1999(), KNOBS)
    assert out["pdfreed"] == 1
    assert 0 not in obj.pages  # removed from its object
    assert uvm.pages.pqflags[pfn] == PQ.FREE
    assert mmu.extract(p, va) is None  # pmap_page_protect(NONE) came first
    assert await cpu_load(uvm, mmu, p, va, 5) == b"clean"  # read back from the file


async def test_16_referenced_inactive_page_is_reactivated(tmp_path: Path) -> None:
    uvm, mmu = make_uvm(256, tmp_path)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW)
    await cpu_store(uvm, mmu, p, va, b"hot")
    e = uvm.spaces[p].map.lookup(va)
    assert e is not None
    assert e.amap is not None
    pfn = e.amap.used()[0][1].page
    uvm.pages.deactivate(pfn)
    await cpu_load(uvm, mmu, p, va, 3)  # referenced while inactive
    _squeeze(uvm, 10)
    out = await run_pass(LocalOps(uvm, mmu), Scan1999(), KNOBS)
    assert out.get("pdreact", 0) >= 1
    assert out.get("pdfreed", 0) == 0
    assert uvm.pages.pqflags[pfn] in (PQ.ACTIVE, PQ.INACTIVE)  # still resident


async def test_17_dirty_anon_pages_are_paged_out_and_come_back(tmp_path: Path) -> None:
    uvm, mmu = make_uvm(256, tmp_path, swap_pages=256)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 20 * PAGE_SIZE, RW)
    for i in range(20):
        await cpu_store(uvm, mmu, p, va + i * PAGE_SIZE, bytes([i + 1]) * 32)
    for pfn in list(uvm.pages.walk(uvm.pages.active)):
        uvm.pages.deactivate(pfn)
        mmu.get_attrs([pfn], True, False)
    taken = _squeeze(uvm, 10)
    out = await run_pass(LocalOps(uvm, mmu), Scan1999(), KNOBS)
    _unsqueeze(uvm, taken)
    assert out["pdpageouts"] == 20
    assert uvm.swap is not None
    assert uvm.swap.swpgonly == 20  # slots set, pages freed
    assert await audit(uvm) == []
    for i in range(20):
        assert await cpu_load(uvm, mmu, p, va + i * PAGE_SIZE, 32) == bytes([i + 1]) * 32
