"""Where mmap puts a mapping: an address without MAP_FIXED is a hint (uvm_map_findspace),
and MAP_FIXED replaces whatever is mapped in its range as one operation (uvm_mmap with
UVM_FLAG_FIXED|UVM_FLAG_UNMAP): resident, swapped, wired, loaned and file pages go as
munmap lets them go, the limits count what goes, and no request of the process sees
the hole in between. The auditor after each step."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from machine.limits import Limits
from machine.mmu.pmap import Mmu
from machine.params import PAGE_SIZE, USER_MIN, USER_TOP
from machine.proto import UserError
from machine.proto.types import Prot
from machine.uvm import files, mmap, wiring
from machine.uvm.audit import audit
from machine.uvm.fault import fault
from machine.uvm.loan import loan_to_kernel, unloan_pages
from machine.uvm.page import NIL, PQ
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


def used(uvm: Uvm) -> int:
    return uvm.pages.npages - uvm.pages.free.count


# -- hints ---------------------------------------------------------------------------------


async def test_a_hint_is_never_a_reason_to_fail(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    p = await mmap.spawn(uvm, OWN)
    base = 0x4000_0000
    assert await mmap.mmap(uvm, p, OWN, 2 * P, RW, va=base) == base  # free: taken as is
    # over an existing mapping: the first fit at or above the hint
    assert await mmap.mmap(uvm, p, OWN, P, RW, va=base + P) == base + 2 * P
    # unaligned: rounded up (uvm_mmap's round_page)
    assert await mmap.mmap(uvm, p, OWN, P, RW, va=base + 5 * P + 1) == base + 6 * P
    # outside user space: ignored (from the bottom)
    assert await mmap.mmap(uvm, p, OWN, P, RW, va=USER_TOP + P) == USER_MIN
    assert await mmap.mmap(uvm, p, OWN, P, RW, va=P // 2) == USER_MIN + P  # rounds to 0x1000
    # above the last free space: from the bottom
    top = await mmap.mmap(uvm, p, OWN, 2 * P, RW, va=USER_TOP - 2 * P)
    assert top == USER_TOP - 2 * P
    assert await mmap.mmap(uvm, p, OWN, 4 * P, RW, va=USER_TOP - 3 * P) == USER_MIN + 2 * P
    await clean(uvm)


async def test_fixed_errnos_change_nothing(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 2 * P, RW)
    await cpu_store(uvm, mmu, p, va, b"kept")
    before = [(e.start, e.end) for e in uvm.spaces[p].map.entries], used(uvm)
    for kw in (
        {"va": va + 1},  # unaligned
        {"va": 0},  # NetBSD's range_test: below the map's minimum page (user_va0_disable)
        {"va": USER_TOP - P, "length": 2 * P},  # past the top of user space
    ):
        args: dict[str, object] = {"length": P, "prot": RW, "fixed": True, **kw}
        with pytest.raises(UserError) as ei:
            await mmap.mmap(uvm, p, OWN, **args)  # type: ignore[arg-type]
        assert ei.value.errno == "EINVAL", kw
    assert ([(e.start, e.end) for e in uvm.spaces[p].map.entries], used(uvm)) == before
    assert await cpu_load(uvm, mmu, p, va, 4) == b"kept"


# -- MAP_FIXED replaces ---------------------------------------------------------------------


async def test_fixed_replaces_resident_swapped_and_partly_covered_pages(
    vm: tuple[Uvm, Mmu],
) -> None:
    uvm, mmu = vm
    assert uvm.swap is not None
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 6 * P, RW)
    for i in range(6):
        await cpu_store(uvm, mmu, p, va + i * P, b"old%d" % i)
    await pageout(uvm, p, va + 3 * P)  # only in swap
    n_before = used(uvm)
    got = await mmap.mmap(uvm, p, OWN, 3 * P, RW, va=va + 2 * P, fixed=True)
    assert got == va + 2 * P
    assert used(uvm) == n_before - 2  # pages 2 and 4 freed, page 3's slot freed
    assert uvm.swap.swpginuse == 0
    for i in range(2, 5):
        assert mmu.extract(p, va + i * P) is None
        assert await cpu_load(uvm, mmu, p, va + i * P, 4) == bytes(4)
    for i in (0, 1, 5):  # the pieces outside keep their data
        assert await cpu_load(uvm, mmu, p, va + i * P, 4) == b"old%d" % i
    assert [(e.start - va, e.end - va) for e in uvm.spaces[p].map.entries] == [
        (0, 2 * P),
        (2 * P, 5 * P),
        (5 * P, 6 * P),
    ]
    assert uvm.spaces[p].map.size == 6 * P
    await clean(uvm)


async def test_fixed_over_a_wired_range_unwires_it(vm: tuple[Uvm, Mmu]) -> None:
    """uvm_unmap_remove unwires a wired entry before it removes it; the new one is not."""
    uvm, _mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 2 * P, RW)
    await wiring.mlock(uvm, p, OWN, va, 2 * P)
    assert uvm.pages.wired == 2
    await mmap.mmap(uvm, p, OWN, 2 * P, RW, va=va, fixed=True)
    assert uvm.pages.wired == 0
    e = uvm.spaces[p].map.lookup(va)
    assert e is not None
    assert e.wired_count == 0
    await clean(uvm)


async def test_fixed_over_a_loaned_page_leaves_it_to_its_loan(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, P, RW)
    await cpu_store(uvm, mmu, p, va, b"on loan")
    [pfn] = await loan_to_kernel(uvm, p, OWN, va, 1)
    await mmap.mmap(uvm, p, OWN, P, RW, va=va, fixed=True)
    assert uvm.pages.uanon[pfn] == NIL
    assert uvm.pages.loan_count[pfn] == 1
    assert bytes(uvm.ram.frame(pfn)[:7]) == b"on loan"
    assert await cpu_load(uvm, mmu, p, va, 7) == bytes(7)
    await clean(uvm)
    unloan_pages(uvm, [pfn])
    assert uvm.pages.pqflags[pfn] == PQ.FREE
    await clean(uvm)


async def test_fixed_over_a_shared_file_mapping_writes_it_back(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    uvm, mmu = vm
    h, _ = files.open(uvm, OWN, "fx.bin", True, 2 * P)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 2 * P, RW, handle=h, shared=True)
    await cpu_store(uvm, mmu, p, va + P, b"to the file")
    await mmap.mmap(uvm, p, OWN, 2 * P, RW, va=va, fixed=True)  # anonymous over it
    assert (tmp_path / "disk" / "fx.bin").read_bytes()[P : P + 11] == b"to the file"
    assert await cpu_load(uvm, mmu, p, va + P, 2) == bytes(2)
    await clean(uvm)


async def test_fixed_is_one_operation_for_the_process(
    vm: tuple[Uvm, Mmu], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the old translations are being removed, a fault of the process waits for
    the space's lock; it then finds the new mapping, never the hole. Frames go only
    after the mmu's answer."""
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, P, RW)
    await cpu_store(uvm, mmu, p, va, b"old")
    old = mmu.extract(p, va)
    assert old is not None
    entered, gate = asyncio.Event(), asyncio.Event()
    real_remove = uvm.pmap.remove
    held: list[bool] = []  # was the old frame still allocated when the mmu removed it?

    async def gated_remove(asid: int, sva: int, eva: int) -> int:
        entered.set()
        await gate.wait()
        held.append(uvm.pages.pqflags[old.pfn] != PQ.FREE)
        return await real_remove(asid, sva, eva)

    monkeypatch.setattr(uvm.pmap, "remove", gated_remove)
    replace = asyncio.ensure_future(
        mmap.mmap(uvm, p, OWN, P, Prot.READ, va=va, fixed=True, shared=True)
    )
    await asyncio.wait_for(entered.wait(), 5)
    reader = asyncio.ensure_future(fault(uvm, p, OWN, va, Prot.READ))
    gate.set()
    await asyncio.wait_for(replace, 5)
    await asyncio.wait_for(reader, 5)
    assert held == [True]
    assert uvm.pages.pqflags[old.pfn] == PQ.FREE or uvm.pages.uanon[old.pfn] == NIL
    e = uvm.spaces[p].map.lookup(va)
    assert e is not None
    assert not e.cow
    assert e.prot == Prot.READ
    assert await cpu_load(uvm, mmu, p, va, 3) == bytes(3)
    await clean(uvm)


async def test_fixed_limits_count_what_the_replace_removes(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 4 * P, RW)
    await cpu_store(uvm, mmu, p, va, b"x")
    uvm.limits = Limits(vsize=4 * P, map_entries=1, maxentries=1)
    # at every limit, replacing the whole mapping is fine: as much goes as comes
    await mmap.mmap(uvm, p, OWN, 4 * P, RW, va=va, fixed=True)
    assert len(uvm.spaces[p].map.entries) == 1
    assert uvm.entry_pool.reserved == 0
    for kw, what in (
        ({"va": va, "length": 5 * P}, "vsize"),  # one page more than goes
        ({"va": va + P, "length": P}, "map_entries"),  # a hole punched: 3 entries
    ):
        with pytest.raises(UserError) as ei:
            await mmap.mmap(uvm, p, OWN, prot=RW, fixed=True, **kw)  # type: ignore[arg-type]
        assert ei.value.errno == "ENOMEM", what
    uvm.limits = Limits(map_entries=8, maxentries=2)
    with pytest.raises(UserError) as ei:
        await mmap.mmap(uvm, p, OWN, P, RW, va=va + P, fixed=True)  # the machine's limit
    assert ei.value.errno == "ENOMEM"
    assert [(e.start, e.end) for e in uvm.spaces[p].map.entries] == [(va, va + 4 * P)]
    assert uvm.entry_pool.reserved == 0
    await clean(uvm)
