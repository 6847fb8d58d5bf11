"""Pageout clusters: one pwrite per run of contiguous swap slots or file pages, same bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from machine.params import PAGE_SIZE
from machine.pdaemon.clock import ClockPolicy
from machine.pdaemon.daemon import run_pass
from machine.proto.pageinfo import PdOp
from machine.proto.types import Prot
from machine.ram import Ram
from machine.uvm import pdops
from machine.uvm.audit import audit
from machine.uvm.page import NIL, PQ
from machine.uvm.vnode import VnodeFile
from tests.unit.pdaemon.test_daemon_pass import LocalOps, _fill
from tests.unit.uvm.localpmap import make_uvm, settings_of
from tests.unit.uvm.test_core import cpu_load


def _count_pwrites(monkeypatch: pytest.MonkeyPatch, fd: int) -> list[int]:
    """Record the length of every pwrite to fd."""
    sizes: list[int] = []
    real = os.pwrite

    def pwrite(f: int, data: bytes, off: int) -> int:
        if f == fd:
            sizes.append(len(data))
        return real(f, data, off)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return sizes


async def test_swap_pageouts_are_one_pwrite_per_cluster_and_come_back_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uvm, mmu = make_uvm(128, tmp_path, swap_pages=256)
    p, va = await _fill(uvm, mmu, 110)
    assert uvm.swap is not None
    writes = _count_pwrites(monkeypatch, uvm.swap.fd)
    ops, total = LocalOps(uvm, mmu), 0
    for _ in range(20):
        total += (await run_pass(ops, ClockPolicy(), settings_of())).get("pdpageouts", 0)
        assert await audit(uvm) == []
    assert total >= 16
    assert uvm.swap.pgswapout == total
    assert len(writes) < total  # clustered: fewer writes than pages
    assert max(writes) >= 2 * PAGE_SIZE
    assert sum(writes) == total * PAGE_SIZE  # each page written exactly once
    for i in range(110):
        assert await cpu_load(uvm, mmu, p, va + i * PAGE_SIZE, 64) == bytes([i % 251]) * 64
    assert await audit(uvm) == []


async def test_fragmented_swap_falls_back_to_single_slots_then_to_swap_full(
    tmp_path: Path,
) -> None:
    uvm, mmu = make_uvm(64, tmp_path, swap_pages=16)
    p, va = await _fill(uvm, mmu, 8)
    sw = uvm.swap
    assert sw is not None
    assert sw.alloc(16) == 1
    for slot in (3, 7, 11):  # three scattered free slots: no run of two
        sw.free(slot)
    pfns = [pfn for pfn in range(64) if uvm.pages.pqflags[pfn] == PQ.ACTIVE][:8]
    assert len(pfns) == 8
    for pfn in pfns:
        uvm.pages.deactivate(pfn)
    items = [(PdOp.PAGEOUT.value, pfn) for pfn in pfns]
    assert pdops.claim(uvm, items) == pfns
    mmu.page_protect(pfns, Prot.NONE, "pdaemon", "test")
    done = await pdops.finish(uvm, items)
    assert done == {PdOp.PAGEOUT: 3, PdOp.REACTIVATE: 5}  # the first three got a slot each
    assert sorted(a.swslot for a in uvm.anons.values() if a.swslot) == [3, 7, 11]
    assert [uvm.pages.pqflags[pfn] for pfn in pfns[:3]] == [PQ.FREE] * 3
    assert all(uvm.pages.pqflags[pfn] == PQ.ACTIVE for pfn in pfns[3:])
    for i in range(8):
        assert await cpu_load(uvm, mmu, p, va + i * PAGE_SIZE, 64) == bytes([i % 251]) * 64
    assert await audit(uvm) == []
    assert all(a.page != NIL for a in uvm.anons.values())


def test_put_run_writes_the_bytes_put_writes_page_by_page(tmp_path: Path) -> None:
    ram = Ram.anonymous(4 * PAGE_SIZE)
    for pfn in range(4):
        ram.frame(pfn)[:] = bytes([pfn + 1]) * PAGE_SIZE
    size = 3 * PAGE_SIZE + 100  # the run's last page is cut at EOF
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = VnodeFile.open(tmp_path / "a", "f", True, size)
    run = VnodeFile.open(tmp_path / "b", "f", True, size)
    try:
        for pg in range(4):
            one.put(pg, ram, pg)
        sizes: list[int] = []
        real = os.pwrite

        def pwrite(f: int, data: bytes, off: int) -> int:
            sizes.append(len(data))
            return real(f, data, off)

        os_pwrite, os.pwrite = os.pwrite, pwrite  # type: ignore[assignment]
        try:
            run.put_run(0, ram, [0, 1, 2, 3])
        finally:
            os.pwrite = os_pwrite
        assert sizes == [size]
        assert run.pgouts == one.pgouts == 4
        a = (tmp_path / "a" / "f").read_bytes()
        assert a == (tmp_path / "b" / "f").read_bytes()
        assert len(a) == size
    finally:
        one.close()
        run.close()
        ram.close()
