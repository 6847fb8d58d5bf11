"""The UVM core with an in-process pmap: COW fork, files, wiring, swap, mprotect, busy pages.

A tiny CPU (cpu_store / cpu_load) does what the client library does: access
through the mmu, and on a trap call the fault handler and retry.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from machine.mmu.pmap import Fault, Mmu
from machine.params import PAGE_SIZE
from machine.proto import BadAddress, UserError
from machine.proto.types import Prot
from machine.uvm import files, mmap, wiring
from machine.uvm.audit import audit
from machine.uvm.fault import fault
from machine.uvm.page import NIL, PQ, PageFlag
from machine.uvm.pager import flush_object, pageout
from machine.uvm.state import Uvm
from machine.uvm.swap import SwapDevice
from machine.uvm.vnode import VnodeError, VnodeFile, check_name
from tests.unit.uvm.localpmap import LocalPmap, make_uvm

OWN = 77  # the owning session
RW = Prot.READ | Prot.WRITE


async def cpu_store(uvm: Uvm, mmu: Mmu, asid: int, va: int, data: bytes) -> int:
    """Store like a CPU; returns the number of faults taken."""
    for n in range(16):
        f = mmu.store(asid, va, data)
        if f is None:
            return n
        await fault(uvm, asid, OWN, f.va, f.access)
    raise AssertionError("store keeps faulting")


async def cpu_load(uvm: Uvm, mmu: Mmu, asid: int, va: int, n: int) -> bytes:
    for _ in range(16):
        r = mmu.load(asid, va, n)
        if not isinstance(r, Fault):
            return r
        await fault(uvm, asid, OWN, r.va, r.access)
    raise AssertionError("load keeps faulting")


async def clean(uvm: Uvm) -> None:
    assert await audit(uvm) == []


@pytest.fixture
def vm(tmp_path: Path) -> tuple[Uvm, Mmu]:
    return make_uvm(128, tmp_path, swap_pages=64)


async def test_fork_is_copy_on_write_both_ways(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 4 * PAGE_SIZE, RW)
    for i in range(4):
        await cpu_store(uvm, mmu, p, va + i * PAGE_SIZE, b"parent%d" % i)
    used = uvm.pages.npages - uvm.pages.free.count
    c = await mmap.fork(uvm, p, OWN)
    await clean(uvm)
    assert uvm.pages.npages - uvm.pages.free.count == used  # nothing copied at fork
    pte = mmu.extract(p, va)
    assert pte is not None
    assert not pte.prot & Prot.WRITE  # the parent's mappings were write-protected
    assert await cpu_load(uvm, mmu, c, va, 7) == b"parent0"
    assert await cpu_store(uvm, mmu, c, va, b"child!!") == 1  # COW fault
    assert uvm.stats.flt_acow == 1
    assert await cpu_load(uvm, mmu, p, va, 7) == b"parent0"
    await cpu_store(uvm, mmu, p, va + PAGE_SIZE, b"PARENT1")
    assert await cpu_load(uvm, mmu, c, va + PAGE_SIZE, 7) == b"parent1"
    assert await cpu_load(uvm, mmu, c, va, 7) == b"child!!"
    await clean(uvm)
    await mmap.exit(uvm, c, OWN)
    await clean(uvm)
    assert await cpu_load(uvm, mmu, p, va + PAGE_SIZE, 7) == b"PARENT1"
    await mmap.exit(uvm, p, OWN)
    assert uvm.pages.free.count == uvm.pages.npages
    assert uvm.anons == {}


async def test_fork_twice_and_exit_in_any_order_conserves_frames(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 3 * PAGE_SIZE, RW)
    await cpu_store(uvm, mmu, p, va, b"x" * 3 * PAGE_SIZE)
    c1 = await mmap.fork(uvm, p, OWN)
    c2 = await mmap.fork(uvm, c1, OWN)
    await cpu_store(uvm, mmu, c2, va + 5, b"c2")
    await cpu_store(uvm, mmu, p, va + 5, b"pp")
    assert await cpu_load(uvm, mmu, c1, va + 5, 2) == b"xx"
    await clean(uvm)
    for a in (c1, p, c2):
        await mmap.exit(uvm, a, OWN)
        await clean(uvm)
    assert uvm.pages.free.count == uvm.pages.npages


async def test_a_cow_copy_whose_other_sharer_exits_meanwhile_frees_the_old_anon(
    vm: tuple[Uvm, Mmu],
) -> None:
    """The child's copy-on-write fault waits for a frame; meanwhile the parent exits and
    drops its reference to the anon being copied. The fault's reference was then the
    last: the old anon and its page are freed (uvm_anfree), not left with ref 0 holding a
    frame nobody maps (a modern stress run's one-frame leak: the sender's forked child
    wrote its buffer while its session detached)."""
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW)
    await cpu_store(uvm, mmu, p, va, b"parent")
    c = await mmap.fork(uvm, p, OWN)
    assert await cpu_load(uvm, mmu, c, va, 6) == b"parent"  # the child maps it read-only
    (old,) = uvm.anons.values()
    real_alloc = uvm.alloc_page_wait
    waiting, gate = asyncio.Event(), asyncio.Event()

    async def slow_alloc(*args: Any, **kwargs: Any) -> int:
        waiting.set()
        await gate.wait()
        return await real_alloc(*args, **kwargs)

    uvm.alloc_page_wait = slow_alloc  # type: ignore[method-assign]
    cow = asyncio.ensure_future(fault(uvm, c, OWN, va, Prot.WRITE))
    await waiting.wait()  # the copy waits for its frame
    await mmap.exit(uvm, p, OWN)
    assert old.ref == 1  # only the child's slot holds it now
    uvm.alloc_page_wait = real_alloc  # type: ignore[method-assign]
    gate.set()
    await cow
    assert old.id not in uvm.anons
    await clean(uvm)
    assert await cpu_load(uvm, mmu, c, va, 6) == b"parent"
    await mmap.exit(uvm, c, OWN)
    await clean(uvm)
    assert uvm.anons == {}
    assert uvm.pages.free.count == uvm.pages.npages


async def test_shared_anonymous_memory_stays_shared_across_fork(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 2 * PAGE_SIZE, RW, shared=True)
    await cpu_store(uvm, mmu, p, va, b"before")
    c = await mmap.fork(uvm, p, OWN)
    await cpu_store(uvm, mmu, c, va + 100, b"from child")
    assert await cpu_load(uvm, mmu, p, va + 100, 10) == b"from child"
    await cpu_store(uvm, mmu, p, va + PAGE_SIZE, b"from parent")
    assert await cpu_load(uvm, mmu, c, va + PAGE_SIZE, 11) == b"from parent"
    await clean(uvm)


async def test_shared_file_mapping_reaches_the_file(vm: tuple[Uvm, Mmu], tmp_path: Path) -> None:
    uvm, mmu = vm
    (tmp_path / "disk" / "f.bin").write_bytes(b"A" * PAGE_SIZE + b"B" * 100)
    h, size = files.open(uvm, OWN, "f.bin", False, None)
    assert size == PAGE_SIZE + 100
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 2 * PAGE_SIZE, RW, handle=h, shared=True)
    assert await cpu_load(uvm, mmu, p, va + PAGE_SIZE - 2, 4) == b"AABB"
    await cpu_store(uvm, mmu, p, va + 10, b"hello")
    assert await files.msync(uvm, p, OWN, va, 2 * PAGE_SIZE) == 1
    data = (tmp_path / "disk" / "f.bin").read_bytes()
    assert data[10:15] == b"hello"
    assert len(data) == PAGE_SIZE + 100  # the tail of the last page stays out of the file
    await cpu_store(uvm, mmu, p, va + PAGE_SIZE + 50, b"tail")
    await mmap.munmap(uvm, p, OWN, va, 2 * PAGE_SIZE)  # munmap writes back too
    assert (tmp_path / "disk" / "f.bin").read_bytes()[PAGE_SIZE + 50 : PAGE_SIZE + 54] == b"tail"
    with pytest.raises(BadAddress):
        await fault(uvm, p, OWN, va, Prot.READ)
    await clean(uvm)


async def test_private_file_mapping_never_changes_the_file(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    uvm, mmu = vm
    (tmp_path / "disk" / "g.bin").write_bytes(b"orig" * 1024)
    h, _ = files.open(uvm, OWN, "g.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    priv = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW, handle=h, shared=False)
    shared = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW, handle=h, shared=True)
    assert await cpu_load(uvm, mmu, p, priv, 4) == b"orig"
    assert uvm.stats.flt_obj == 1  # mapped the object page, read-only
    await cpu_store(uvm, mmu, p, priv, b"mine")
    assert uvm.stats.flt_prcopy == 1  # promoted into an anon
    assert await cpu_load(uvm, mmu, p, priv, 4) == b"mine"
    assert await cpu_load(uvm, mmu, p, shared, 4) == b"orig"
    await mmap.exit(uvm, p, OWN)
    await files.close(uvm, OWN, h)
    assert (tmp_path / "disk" / "g.bin").read_bytes() == b"orig" * 1024
    assert uvm.objects == {}
    assert uvm.pages.free.count == uvm.pages.npages


async def test_exit_writes_shared_file_pages_back(vm: tuple[Uvm, Mmu], tmp_path: Path) -> None:
    uvm, mmu = vm
    h, _ = files.open(uvm, OWN, "new.bin", True, 3 * PAGE_SIZE)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 3 * PAGE_SIZE, RW, handle=h, shared=True)
    await cpu_store(uvm, mmu, p, va + 2 * PAGE_SIZE + 1, b"last page")
    await mmap.exit(uvm, p, OWN)
    assert (tmp_path / "disk" / "new.bin").read_bytes()[2 * PAGE_SIZE + 1 :][:9] == b"last page"


async def test_wiring_a_private_file_mapping_copies_every_page_now(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    """Scenario 13: wire forces COW now."""
    uvm, mmu = vm
    (tmp_path / "disk" / "w.bin").write_bytes(bytes(range(256)) * 64)
    h, _ = files.open(uvm, OWN, "w.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 4 * PAGE_SIZE, RW, handle=h)  # private, never written
    await wiring.mlock(uvm, p, OWN, va, 4 * PAGE_SIZE)
    e = uvm.spaces[p].map.lookup(va)
    assert e is not None
    assert e.amap is not None
    assert e.amap.nused == 4
    assert uvm.stats.flt_prcopy == 4
    for _, anon in e.amap.used():
        pfn = anon.page
        assert uvm.pages.wire_count[pfn] == 1
        assert uvm.pages.pqflags[pfn] == 0  # off the paging queues
        assert not uvm.pages.flags[pfn] & PageFlag.CLEAN
        assert anon.swslot == 0
    assert await cpu_store(uvm, mmu, p, va + 3 * PAGE_SIZE, b"no fault") == 0
    await clean(uvm)
    await wiring.munlock(uvm, p, OWN, va, 4 * PAGE_SIZE)
    assert uvm.pages.wired == 0
    await clean(uvm)


async def test_fork_of_a_wired_entry_copies_at_once(vm: tuple[Uvm, Mmu]) -> None:
    """Scenario 14: the child gets copies now; the parent is never write-protected."""
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 3 * PAGE_SIZE, RW)
    await wiring.mlock(uvm, p, OWN, va, 3 * PAGE_SIZE)
    await cpu_store(uvm, mmu, p, va, b"wired data")
    used = uvm.pages.npages - uvm.pages.free.count
    c = await mmap.fork(uvm, p, OWN)
    assert uvm.pages.npages - uvm.pages.free.count == used + 3
    assert await cpu_store(uvm, mmu, p, va, b"WIRED DATA") == 0  # no fault in the parent
    assert await cpu_load(uvm, mmu, c, va, 10) == b"wired data"
    await clean(uvm)


async def test_anon_pages_go_to_swap_and_come_back(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    assert uvm.swap is not None
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 2 * PAGE_SIZE, RW)
    await cpu_store(uvm, mmu, p, va, b"swap me" * 100)
    free = uvm.pages.free.count
    await pageout(uvm, p, va)
    assert uvm.pages.free.count == free + 1
    assert uvm.swap.swpginuse == uvm.swap.swpgonly == 1
    assert mmu.extract(p, va) is None
    await clean(uvm)
    assert await cpu_load(uvm, mmu, p, va, 700) == b"swap me" * 100
    assert uvm.stats.fltanget == 1
    assert uvm.swap.swpgonly == 0
    assert uvm.swap.swpginuse == 1  # the clean copy keeps its slot
    await clean(uvm)
    await pageout(uvm, p, va)  # clean: no second write
    assert uvm.swap.pgswapout == 1
    await cpu_store(uvm, mmu, p, va, b"dirty")
    await pageout(uvm, p, va)
    assert uvm.swap.pgswapout == 2
    assert await cpu_load(uvm, mmu, p, va, 5) == b"dirty"
    await mmap.exit(uvm, p, OWN)
    assert uvm.swap.swpginuse == 0
    await clean(uvm)


async def test_swapped_out_cow_page_survives_fork(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW)
    await cpu_store(uvm, mmu, p, va, b"old")
    c = await mmap.fork(uvm, p, OWN)
    await pageout(uvm, p, va)
    await cpu_store(uvm, mmu, c, va, b"new")  # swap-in, then COW
    assert await cpu_load(uvm, mmu, p, va, 3) == b"old"
    await clean(uvm)


async def test_shared_anon_and_file_pages_page_out(vm: tuple[Uvm, Mmu], tmp_path: Path) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    sh = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW, shared=True)
    await cpu_store(uvm, mmu, p, sh, b"aobj")
    await pageout(uvm, p, sh)
    assert await cpu_load(uvm, mmu, p, sh, 4) == b"aobj"
    h, _ = files.open(uvm, OWN, "p.bin", True, PAGE_SIZE)
    fv = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW, handle=h, shared=True)
    await cpu_store(uvm, mmu, p, fv, b"file")
    await pageout(uvm, p, fv)
    assert (tmp_path / "disk" / "p.bin").read_bytes()[:4] == b"file"
    assert await cpu_load(uvm, mmu, p, fv, 4) == b"file"
    assert uvm.stats.fltget == 2
    await clean(uvm)


async def test_wired_pages_never_leave_ram(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW)
    await wiring.mlock(uvm, p, OWN, va, PAGE_SIZE)
    with pytest.raises(UserError) as ei:
        await pageout(uvm, p, va)
    assert ei.value.errno == "EBUSY"


async def test_swap_full_is_enomem_and_changes_nothing(tmp_path: Path) -> None:
    uvm, mmu = make_uvm(64, tmp_path, swap_pages=1)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 2 * PAGE_SIZE, RW)
    await cpu_store(uvm, mmu, p, va, b"a" * (PAGE_SIZE + 1))
    await pageout(uvm, p, va)
    with pytest.raises(UserError) as ei:
        await pageout(uvm, p, va + PAGE_SIZE)
    assert ei.value.errno == "ENOMEM"
    assert await cpu_load(uvm, mmu, p, va + PAGE_SIZE, 1) == b"a"
    await clean(uvm)


async def test_mprotect_lowers_at_once_and_raises_lazily(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 3 * PAGE_SIZE, RW)
    await cpu_store(uvm, mmu, p, va, b"x" * 3 * PAGE_SIZE)
    await mmap.mprotect(uvm, p, OWN, va + PAGE_SIZE, PAGE_SIZE, Prot.READ)
    assert len(uvm.spaces[p].map.entries) == 3
    with pytest.raises(BadAddress):
        await cpu_store(uvm, mmu, p, va + PAGE_SIZE, b"y")
    assert await cpu_load(uvm, mmu, p, va + PAGE_SIZE, 1) == b"x"
    await mmap.mprotect(uvm, p, OWN, va + PAGE_SIZE, PAGE_SIZE, RW)
    assert await cpu_store(uvm, mmu, p, va + PAGE_SIZE, b"y") == 1
    await clean(uvm)
    with pytest.raises(UserError) as ei:
        await mmap.mprotect(uvm, p, OWN, va, 8 * PAGE_SIZE, Prot.READ)
    assert ei.value.errno == "ENOMEM"


async def test_a_fault_on_a_busy_page_waits_and_starts_over(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    uvm, _ = vm
    assert isinstance(uvm.pmap, LocalPmap)
    gate = asyncio.Event()
    real_enter = uvm.pmap.enter

    async def slow_enter(asid: int, va: int, pfn: int, prot: int, flags: int) -> None:
        await gate.wait()
        await real_enter(asid, va, pfn, prot, flags)

    h, _ = files.open(uvm, OWN, "b.bin", True, PAGE_SIZE)
    a, b = await mmap.spawn(uvm, OWN), await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, a, OWN, PAGE_SIZE, RW, handle=h, shared=True)
    vb = await mmap.mmap(uvm, b, OWN, PAGE_SIZE, RW, handle=h, shared=True)
    uvm.pmap.enter = slow_enter  # type: ignore[method-assign]
    fa = asyncio.ensure_future(fault(uvm, a, OWN, va, Prot.READ))
    await asyncio.sleep(0)
    fb = asyncio.ensure_future(fault(uvm, b, OWN, vb, Prot.READ))
    await asyncio.sleep(0)
    assert uvm.stats.fltpgwait == 1  # b found the page busy (a is entering it)
    gate.set()
    assert await fa == await fb
    await clean(uvm)


def test_swap_device_slots_and_io(tmp_path: Path) -> None:
    from machine.ram import Ram

    ram = Ram.anonymous(8 * PAGE_SIZE)
    sw = SwapDevice(tmp_path / "s.img", 20)
    first = sw.alloc(16)
    assert first == 1
    assert sw.swpginuse == 16
    assert sw.alloc(5) == 0  # no 5 contiguous left
    ram.frame(2)[:3] = b"abc"
    sw.put(first + 3, ram, [2])
    sw.get(first + 3, ram, 5)
    assert bytes(ram.frame(5)[:3]) == b"abc"
    sw.free(first, 16)
    assert sw.swpginuse == 0
    assert sw.check() == []
    sw.close()


def test_vnode_files_are_confined_and_read_zeros_past_eof(tmp_path: Path) -> None:
    from machine.ram import Ram

    for bad in ("/etc/passwd", "../x", "a/../../x", ""):
        with pytest.raises(VnodeError):
            check_name(bad)
    ram = Ram.anonymous(4 * PAGE_SIZE)
    f = VnodeFile.open(tmp_path, "v.bin", True, 10)
    ram.frame(0)[:] = b"z" * PAGE_SIZE
    f.put(0, ram, 0)
    assert (tmp_path / "v.bin").read_bytes() == b"z" * 10
    f.get(0, ram, 1)
    assert bytes(ram.frame(1)[:12]) == b"z" * 10 + b"\0\0"
    f.close()
    with pytest.raises(VnodeError):
        VnodeFile.open(tmp_path, "missing.bin", False, None)


async def test_flush_writes_only_dirty_pages(vm: tuple[Uvm, Mmu], tmp_path: Path) -> None:
    uvm, mmu = vm
    h, _ = files.open(uvm, OWN, "d.bin", True, 4 * PAGE_SIZE)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 4 * PAGE_SIZE, RW, handle=h, shared=True)
    for i in range(4):
        await cpu_load(uvm, mmu, p, va + i * PAGE_SIZE, 1)
    await cpu_store(uvm, mmu, p, va + 2 * PAGE_SIZE, b"d")
    obj = uvm.handles[(OWN, h)]
    assert await flush_object(uvm, obj, 0, 4) == 1
    assert await flush_object(uvm, obj, 0, 4) == 0  # clean now
    assert uvm.pages.pqflags[obj.pages[0]] == PQ.ACTIVE
    assert NIL not in obj.pages.values()


async def test_aobj_swap_accounting_survives_pagein_and_exit(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    assert uvm.swap is not None
    p = await mmap.spawn(uvm, OWN)
    sh = await mmap.mmap(uvm, p, OWN, 2 * PAGE_SIZE, RW, shared=True)
    await cpu_store(uvm, mmu, p, sh, b"a" * (2 * PAGE_SIZE))
    await pageout(uvm, p, sh)
    await pageout(uvm, p, sh + PAGE_SIZE)
    assert uvm.swap.swpgonly == 2
    assert await cpu_load(uvm, mmu, p, sh, 1) == b"a"  # one page back in, its slot kept
    assert uvm.swap.swpgonly == 1
    await clean(uvm)
    await mmap.exit(uvm, p, OWN)
    assert uvm.swap.swpgonly == 0
    assert uvm.swap.swpginuse == 0
    await clean(uvm)
