"""The daemon's pass against an in-process uvm: claims, revocations, pageouts, data intact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from machine.mmu.pmap import Mmu
from machine.params import PAGE_SIZE
from machine.pdaemon.clock import ClockPolicy
from machine.pdaemon.daemon import run_pass
from machine.pdaemon.scan1999 import Scan1999
from machine.proto.types import Prot
from machine.proto.vmcalls import RLIMIT_MEMLOCK
from machine.uvm import mmap, pdops, wiring
from machine.uvm.audit import audit
from machine.uvm.state import Uvm
from tests.unit.uvm.localpmap import make_uvm, settings_of
from tests.unit.uvm.test_core import OWN, RW, cpu_load, cpu_store


class LocalOps:
    def __init__(self, uvm: Uvm, mmu: Mmu) -> None:
        self.uvm, self.mmu = uvm, mmu

    async def snapshot(self, limit: int) -> dict[str, Any]:
        return pdops.snapshot(self.uvm, limit)

    async def claim(self, items: list[tuple[str, int]]) -> list[int]:
        return pdops.claim(self.uvm, items)

    async def finish(self, items: list[tuple[str, int]]) -> dict[str, int]:
        return await pdops.finish(self.uvm, items)

    async def attrs(self, pfns: list[int], clear_ref: bool, clear_mod: bool) -> list[int]:
        return self.mmu.get_attrs(pfns, clear_ref, clear_mod)

    async def page_protect(self, pfns: list[int], prot: int, why: str = "") -> int:
        return self.mmu.page_protect(pfns, Prot(prot), "pdaemon", why)


async def _fill(uvm: Uvm, mmu: Mmu, npages: int) -> tuple[int, int]:
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, npages * PAGE_SIZE, RW)
    for i in range(npages):
        await cpu_store(uvm, mmu, p, va + i * PAGE_SIZE, bytes([i % 251]) * 64)
    return p, va


async def test_clock_passes_reclaim_memory_and_the_data_comes_back(tmp_path: Path) -> None:
    uvm, mmu = make_uvm(128, tmp_path, swap_pages=256)
    p, va = await _fill(uvm, mmu, 110)
    ops, policy = LocalOps(uvm, mmu), ClockPolicy()
    total: dict[str, int] = {}
    for _ in range(20):
        for k, v in (await run_pass(ops, policy, settings_of())).items():
            total[k] = total.get(k, 0) + v
        assert await audit(uvm) == []
    assert total.get("pddeact", 0) > 0
    assert total.get("pdpageouts", 0) > 0
    assert uvm.pages.free.count >= policy.tune(128).freetarg
    for i in range(110):
        assert await cpu_load(uvm, mmu, p, va + i * PAGE_SIZE, 64) == bytes([i % 251]) * 64
    assert await audit(uvm) == []


async def test_1999_scan_revokes_on_deactivation(tmp_path: Path) -> None:
    uvm, mmu = make_uvm(128, tmp_path, swap_pages=256)
    p, _ = await _fill(uvm, mmu, 110)
    before = len(mmu.pmaps[p].ptes)
    out = await run_pass(LocalOps(uvm, mmu), Scan1999(), settings_of({"DIAGNOSTIC": True}))
    assert out["pddeact"] > 0
    assert len(mmu.pmaps[p].ptes) < before  # deactivation removed mappings (1999)
    assert await audit(uvm) == []


async def test_wired_pages_are_never_claimed_for_eviction(tmp_path: Path) -> None:
    uvm, mmu = make_uvm(64, tmp_path, swap_pages=128)
    p, va = await _fill(uvm, mmu, 40)
    uvm.wiredmax = 64  # beyond the default third of RAM, and the process may wire all of it
    wiring.setrlimit(uvm, p, OWN, RLIMIT_MEMLOCK, 64 * PAGE_SIZE, 64 * PAGE_SIZE)
    await wiring.mlock(uvm, p, OWN, va, 40 * PAGE_SIZE)
    ops = LocalOps(uvm, mmu)
    for pfn in range(64):
        assert (
            not pdops.claim(uvm, [("pageout", pfn), ("free", pfn)]) or not uvm.pages.wire_count[pfn]
        )
    for _ in range(5):
        await run_pass(ops, ClockPolicy(), settings_of())
    assert uvm.pages.wired == 40
    assert await audit(uvm) == []
