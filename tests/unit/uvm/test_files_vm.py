"""Files as NetBSD programs use them, on the uvm core with a local pmap: open modes and
their errnos, the maximum protection of a file mapping, ftruncate (shrink, grow, the
partial last page, SIGBUS with the faulting address, two processes, private copies,
wired pages, the races with a fault) and the auditor's O3 (no page beyond the end)."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from machine.kassert import KernelPanic
from machine.limits import Limits
from machine.mmu.pmap import Mmu
from machine.params import PAGE_SIZE
from machine.proto import O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY, UserError
from machine.proto.types import Prot
from machine.uvm import files, loan, mmap, wiring
from machine.uvm.audit import audit
from machine.uvm.fault import fault
from machine.uvm.page import NIL, PQ
from machine.uvm.state import Uvm
from machine.uvm.vnode import FREAD, FWRITE
from tests.unit.uvm.localpmap import make_uvm
from tests.unit.uvm.test_core import OWN, RW, cpu_load, cpu_store

P = PAGE_SIZE


@pytest.fixture
def vm(tmp_path: Path) -> tuple[Uvm, Mmu]:
    return make_uvm(128, tmp_path, swap_pages=64)


def disk(uvm: Uvm) -> Path:
    assert uvm.disk is not None
    return uvm.disk


def pattern(npages: int) -> bytes:
    return b"".join(bytes([0x41 + i]) * P for i in range(npages))


async def clean(uvm: Uvm) -> None:
    assert await audit(uvm) == []


async def errno_of(coro: object) -> str:
    with pytest.raises(UserError) as ei:
        await coro  # type: ignore[misc]
    return str(ei.value.errno)


def open_errno(uvm: Uvm, name: str, create: bool, size: int | None, flags: int) -> str:
    with pytest.raises(UserError) as ei:
        files.open(uvm, OWN, name, create, size, flags)
    return str(ei.value.errno)


async def mapped(
    uvm: Uvm, h: int, npages: int, shared: bool = True, prot: Prot = RW
) -> tuple[int, int]:
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, npages * P, prot, handle=h, shared=shared)
    return p, va


# -- open modes -------------------------------------------------------------------------


async def test_open_records_the_access_of_each_mode(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    (disk(uvm) / "f").write_bytes(pattern(1))
    for flags, access in ((O_RDONLY, FREAD), (O_WRONLY, FWRITE), (O_RDWR, FREAD | FWRITE)):
        h, size = files.open(uvm, OWN, "f", False, None, flags)
        assert size == P
        assert uvm.handles[(OWN, h)].opens[(OWN, h)] == access
    await clean(uvm)


async def test_bad_open_flags_are_einval_and_make_nothing(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    assert open_errno(uvm, "new", True, None, 3) == "EINVAL"  # O_ACCMODE: neither
    assert open_errno(uvm, "new", True, None, O_RDWR | 0x8) == "EINVAL"  # O_APPEND: not ours
    assert open_errno(uvm, "new", True, None, -1) == "EINVAL"
    assert open_errno(uvm, "new", True, P, O_RDONLY) == "EINVAL"  # a size needs writing
    assert not (disk(uvm) / "new").exists()
    assert uvm.handles == {}
    await clean(uvm)


async def test_o_creat_and_o_excl(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    assert open_errno(uvm, "c", False, None, O_RDWR) == "ENOENT"
    h, _ = files.open(uvm, OWN, "c", False, None, O_RDWR | O_CREAT)  # create is O_CREAT
    assert (disk(uvm) / "c").exists()
    assert open_errno(uvm, "c", False, None, O_RDWR | O_CREAT | O_EXCL) == "EEXIST"
    assert open_errno(uvm, "c", True, None, O_RDWR | O_EXCL) == "EEXIST"
    h2, _ = files.open(uvm, OWN, "c", False, None, O_RDWR | O_EXCL)  # O_EXCL alone: ignored
    h3, _ = files.open(uvm, OWN, "d", False, None, O_RDWR | O_CREAT | O_EXCL)
    assert len({h, h2, h3}) == 3
    await clean(uvm)


async def test_o_trunc_truncates_even_a_read_only_open_as_netbsd_does(
    vm: tuple[Uvm, Mmu],
) -> None:
    uvm, _ = vm
    (disk(uvm) / "t").write_bytes(pattern(3))
    h, size = await files.vn_open(uvm, OWN, "t", False, None, O_RDONLY | O_TRUNC)
    assert size == 0
    assert (disk(uvm) / "t").stat().st_size == 0
    assert await errno_of(files.ftruncate(uvm, OWN, h, P)) == "EINVAL"  # still read-only
    _h2, size = await files.vn_open(uvm, OWN, "t", False, 2 * P, O_RDWR | O_TRUNC)
    assert size == 2 * P  # truncated, then grown to the size asked
    assert (disk(uvm) / "t").read_bytes() == bytes(2 * P)
    await clean(uvm)
    with pytest.raises(KernelPanic):  # the synchronous open cannot await a truncation
        files.open(uvm, OWN, "t", False, None, O_RDWR | O_TRUNC)


async def test_o_trunc_of_a_file_mapped_elsewhere_revokes_its_pages(
    vm: tuple[Uvm, Mmu],
) -> None:
    uvm, mmu = vm
    (disk(uvm) / "m").write_bytes(pattern(2))
    h, _ = files.open(uvm, OWN, "m", False, None)
    p, va = await mapped(uvm, h, 2)
    assert await cpu_load(uvm, mmu, p, va + P, 1) == b"B"
    await files.vn_open(uvm, OWN, "m", False, None, O_RDWR | O_TRUNC)
    assert mmu.extract(p, va + P) is None
    assert uvm.handles[(OWN, h)].pages == {}
    with pytest.raises(UserError) as ei:
        await cpu_load(uvm, mmu, p, va + P, 1)
    assert ei.value.errno == "SIGBUS"
    await clean(uvm)


# -- maximum protection ----------------------------------------------------------------


async def test_maximum_protection_follows_the_open_mode(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    (disk(uvm) / "ro").write_bytes(pattern(1))
    ro, _ = files.open(uvm, OWN, "ro", False, None, O_RDONLY)
    wo, _ = files.open(uvm, OWN, "ro", False, None, O_WRONLY)
    p = await mmap.spawn(uvm, OWN)
    # A shared writable mapping of a read-only file: EACCES (vn_mmap), nothing mapped.
    assert await errno_of(mmap.mmap(uvm, p, OWN, P, RW, handle=ro, shared=True)) == "EACCES"
    assert uvm.spaces[p].map.entries == []
    # Shared read-only: fine, and mprotect cannot raise it beyond READ|EXECUTE.
    va = await mmap.mmap(uvm, p, OWN, P, Prot.READ, handle=ro, shared=True)
    assert uvm.spaces[p].map.lookup(va).max_prot == Prot.READ | Prot.EXECUTE  # type: ignore[union-attr]
    assert await errno_of(mmap.mprotect(uvm, p, OWN, va, P, RW)) == "EACCES"
    await mmap.mprotect(uvm, p, OWN, va, P, Prot.READ | Prot.EXECUTE)
    # Private: WRITE stays in max_prot (it never writes the file); a store promotes.
    pva = await mmap.mmap(uvm, p, OWN, P, RW, handle=ro, shared=False)
    await cpu_store(uvm, mmu, p, pva, b"mine")
    assert await cpu_load(uvm, mmu, p, pva, 4) == b"mine"
    assert (disk(uvm) / "ro").read_bytes() == pattern(1)
    # Write-only: no READ in max_prot; asking READ is EACCES, WRITE alone maps (NetBSD).
    assert await errno_of(mmap.mmap(uvm, p, OWN, P, RW, handle=wo, shared=True)) == "EACCES"
    assert await errno_of(mmap.mmap(uvm, p, OWN, P, Prot.READ, handle=wo)) == "EACCES"
    wva = await mmap.mmap(uvm, p, OWN, P, Prot.WRITE, handle=wo, shared=True)
    assert uvm.spaces[p].map.lookup(wva).max_prot == Prot.WRITE | Prot.EXECUTE  # type: ignore[union-attr]
    assert await errno_of(mmap.mprotect(uvm, p, OWN, wva, P, Prot.READ)) == "EACCES"
    assert await errno_of(mmap.mmap(uvm, p, OWN, P, Prot.READ, handle=999)) == "EBADF"
    await clean(uvm)


# -- ftruncate ---------------------------------------------------------------------------


async def test_ftruncate_errnos_change_nothing(
    vm: tuple[Uvm, Mmu], monkeypatch: pytest.MonkeyPatch
) -> None:
    uvm, _ = vm
    (disk(uvm) / "e").write_bytes(pattern(2))
    rw, _ = files.open(uvm, OWN, "e", False, None)
    ro, _ = files.open(uvm, OWN, "e", False, None, O_RDONLY)
    assert await errno_of(files.ftruncate(uvm, OWN, 999, 0)) == "EBADF"
    assert await errno_of(files.ftruncate(uvm, OWN + 1, rw, 0)) == "EBADF"  # another session
    assert await errno_of(files.ftruncate(uvm, OWN, ro, 0)) == "EINVAL"
    assert await errno_of(files.ftruncate(uvm, OWN, rw, -1)) == "EINVAL"
    uvm.limits = Limits(filesize=4 * P)
    assert await errno_of(files.ftruncate(uvm, OWN, rw, 4 * P + 1)) == "EFBIG"

    def refuse(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(os, "ftruncate", refuse)
    assert await errno_of(files.ftruncate(uvm, OWN, rw, P)) == "EIO"
    monkeypatch.undo()
    assert (disk(uvm) / "e").read_bytes() == pattern(2)
    assert uvm.handles[(OWN, rw)].file.size == 2 * P  # type: ignore[union-attr]
    assert uvm.stats.truncations == 0
    await files.ftruncate(uvm, OWN, rw, 4 * P)  # at the limit: fine
    await clean(uvm)


async def test_shrink_revokes_every_mapping_and_access_beyond_is_sigbus(
    vm: tuple[Uvm, Mmu],
) -> None:
    uvm, mmu = vm
    (disk(uvm) / "s").write_bytes(pattern(4))
    h, _ = files.open(uvm, OWN, "s", False, None)
    obj = uvm.handles[(OWN, h)]
    p1, va1 = await mapped(uvm, h, 4)
    p2, va2 = await mapped(uvm, h, 4)
    for i in range(4):
        await cpu_load(uvm, mmu, p1, va1 + i * P, 1)
        await cpu_load(uvm, mmu, p2, va2 + i * P, 1)
    doomed = [obj.pages[2], obj.pages[3]]
    free0 = uvm.pages.free.count
    await files.ftruncate(uvm, OWN, h, P + P // 2)
    assert sorted(obj.pages) == [0, 1]
    assert uvm.pages.free.count == free0 + 2
    assert all(uvm.pages.pqflags[pfn] == PQ.FREE for pfn in doomed)
    for p, va in ((p1, va1), (p2, va2)):
        assert mmu.extract(p, va + 2 * P) is None
        assert mmu.extract(p, va + 3 * P) is None
        for bad in (va + 2 * P + 5, va + 3 * P):
            with pytest.raises(UserError) as ei:
                await fault(uvm, p, OWN, bad, Prot.READ)
            assert ei.value.errno == "SIGBUS"
            assert f"{bad & ~(P - 1):#x}" in ei.value.detail
        assert mmu.load(p, va + 2 * P, 1).va == va + 2 * P  # type: ignore[union-attr]
    # The partial last page reads zeros past the end, in both processes.
    assert await cpu_load(uvm, mmu, p2, va2 + P, P) == b"B" * (P // 2) + bytes(P // 2)
    assert uvm.stats.truncations == 1
    assert uvm.stats.truncpages == 2
    assert uvm.stats.sigbus == 4
    assert (disk(uvm) / "s").stat().st_size == P + P // 2
    await clean(uvm)


async def test_the_tail_past_the_end_never_reaches_the_file(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    (disk(uvm) / "t").write_bytes(pattern(2))
    h, _ = files.open(uvm, OWN, "t", False, None)
    p, va = await mapped(uvm, h, 2)
    await files.ftruncate(uvm, OWN, h, 100)
    await cpu_store(uvm, mmu, p, va + 50, b"x" * 200)  # straddles the end
    await files.msync(uvm, p, OWN, va, P)
    assert (disk(uvm) / "t").read_bytes() == b"A" * 50 + b"x" * 50
    # Growing again reads zeros where the store went past the old end.
    await files.ftruncate(uvm, OWN, h, 2 * P)
    assert await cpu_load(uvm, mmu, p, va, 300) == b"A" * 50 + b"x" * 50 + bytes(200)
    assert await cpu_load(uvm, mmu, p, va + P, P) == bytes(P)  # the new page: zeros
    await files.msync(uvm, p, OWN, va, 2 * P)
    assert (disk(uvm) / "t").read_bytes() == b"A" * 50 + b"x" * 50 + bytes(2 * P - 100)
    await clean(uvm)


async def test_private_copies_beyond_the_end_stay_the_processs_own(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    (disk(uvm) / "c").write_bytes(pattern(3))
    h, _ = files.open(uvm, OWN, "c", False, None)
    p, va = await mapped(uvm, h, 3, shared=False)
    await cpu_store(uvm, mmu, p, va + 2 * P, b"own")  # promoted: an anon of p
    await cpu_load(uvm, mmu, p, va + P, 1)  # the object's page, mapped read-only
    await files.ftruncate(uvm, OWN, h, P)
    assert await cpu_load(uvm, mmu, p, va + 2 * P, 3) == b"own"
    with pytest.raises(UserError) as ei:
        await cpu_load(uvm, mmu, p, va + P, 1)
    assert ei.value.errno == "SIGBUS"
    await clean(uvm)


async def test_wired_pages_in_a_truncated_range_are_freed_as_netbsd_does(
    vm: tuple[Uvm, Mmu],
) -> None:
    """genfs_do_putpages(PGO_FREE) does not skip wired pages: uvm_pagefree drops the
    wiring; the entry stays wired (munlock later finds nothing to unwire there)."""
    uvm, mmu = vm
    (disk(uvm) / "w").write_bytes(pattern(2))
    h, _ = files.open(uvm, OWN, "w", False, None)
    p, va = await mapped(uvm, h, 2)
    await wiring.mlock(uvm, p, OWN, va, 2 * P)
    assert uvm.pages.wired == 2
    await files.ftruncate(uvm, OWN, h, P)
    assert uvm.pages.wired == 1
    assert mmu.extract(p, va + P) is None
    await clean(uvm)
    await wiring.munlock(uvm, p, OWN, va, 2 * P)
    assert uvm.pages.wired == 0
    await clean(uvm)


async def test_a_loan_beyond_the_end_is_efault(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    (disk(uvm) / "l").write_bytes(pattern(2))
    h, _ = files.open(uvm, OWN, "l", False, None)
    p, va = await mapped(uvm, h, 2)
    await files.ftruncate(uvm, OWN, h, P)
    assert await errno_of(loan.loan_to_kernel(uvm, p, OWN, va, 2)) == "EFAULT"
    assert uvm.pages.npages - uvm.pages.loan_count.count(0) == 0  # all or nothing
    await clean(uvm)


async def test_an_aobj_has_no_file_end(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 2 * P, RW, shared=True)
    await cpu_store(uvm, mmu, p, va + P, b"aobj")
    assert await cpu_load(uvm, mmu, p, va + P, 4) == b"aobj"
    assert uvm.stats.sigbus == 0
    await clean(uvm)


# -- races -----------------------------------------------------------------------------


async def test_truncation_waits_for_a_busy_page_and_the_waiting_fault_gets_sigbus(
    vm: tuple[Uvm, Mmu],
) -> None:
    uvm, mmu = vm
    (disk(uvm) / "r").write_bytes(pattern(2))
    h, _ = files.open(uvm, OWN, "r", False, None)
    obj = uvm.handles[(OWN, h)]
    p, va = await mapped(uvm, h, 2)
    await cpu_load(uvm, mmu, p, va + P, 1)
    pfn = obj.pages[1]
    uvm.busy(pfn)  # the pager (or another fault) is at work on it
    flt = asyncio.create_task(fault(uvm, p, OWN, va + P, Prot.READ))
    trunc = asyncio.create_task(files.ftruncate(uvm, OWN, h, P))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not flt.done()
    assert not trunc.done()
    assert obj.npages == 1  # the end moved first
    uvm.unbusy(pfn)
    await trunc
    with pytest.raises(UserError) as ei:
        await flt
    assert ei.value.errno == "SIGBUS"
    assert 1 not in obj.pages
    assert uvm.pages.pqflags[pfn] == PQ.FREE
    await clean(uvm)


async def test_a_fault_that_waited_for_memory_while_the_file_shrank_gets_sigbus(
    tmp_path: Path,
) -> None:
    uvm, _mmu = make_uvm(24, tmp_path, swap_pages=0)
    uvm.alloc_wait_s = 0  # the hog's last fault gives up at once
    (disk(uvm) / "m").write_bytes(pattern(2))
    h, _ = files.open(uvm, OWN, "m", False, None)
    obj = uvm.handles[(OWN, h)]
    p, va = await mapped(uvm, h, 2)
    hog = await mmap.spawn(uvm, OWN)
    hva = await mmap.mmap(uvm, hog, OWN, 64 * P, RW)
    n = 0
    while True:  # take every frame a user may have
        try:
            await fault(uvm, hog, OWN, hva + n * P, Prot.WRITE)
        except UserError:
            break
        n += 1
    uvm.alloc_wait_s = 5.0  # this fault sleeps in uvm_wait until pages are freed
    flt = asyncio.create_task(fault(uvm, p, OWN, va + P, Prot.READ))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not flt.done()  # asleep in uvm_wait
    await files.ftruncate(uvm, OWN, h, P)
    await mmap.exit(uvm, hog, OWN)
    uvm.wakeup_free()
    with pytest.raises(UserError) as ei:
        await asyncio.wait_for(flt, 10)
    assert ei.value.errno == "SIGBUS"
    assert 1 not in obj.pages  # the page it allocated was dropped
    await clean(uvm)


async def test_the_auditor_finds_a_page_beyond_the_end(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    (disk(uvm) / "a").write_bytes(pattern(2))
    h, _ = files.open(uvm, OWN, "a", False, None)
    p, va = await mapped(uvm, h, 2)
    await cpu_load(uvm, mmu, p, va + P, 1)
    obj = uvm.handles[(OWN, h)]
    assert obj.file is not None
    obj.file.size = P  # a size change that forgot the pages (injected)
    problems = await audit(uvm)
    assert any(s.startswith("O3:") and "at 1" in s for s in problems), problems
    obj.file.size = 2 * P
    await clean(uvm)
    assert obj.pages.get(1, NIL) != NIL


async def test_a_mapping_longer_than_its_file_is_sigbus_past_the_end(
    vm: tuple[Uvm, Mmu],
) -> None:
    """SIGBUS, not SIGSEGV, and the fault-ahead of a read at the end maps nothing past it."""
    uvm, mmu = vm
    (disk(uvm) / "short").write_bytes(pattern(1)[:100])
    h, _ = files.open(uvm, OWN, "short", False, None)
    p, va = await mapped(uvm, h, 4)
    assert await cpu_load(uvm, mmu, p, va, 101) == b"A" * 100 + bytes(1)
    for i in (1, 3):
        assert mmu.extract(p, va + i * P) is None
        with pytest.raises(UserError) as ei:
            await cpu_store(uvm, mmu, p, va + i * P + 1, b"x")
        assert ei.value.errno == "SIGBUS"
    assert uvm.stats.segv == 0
    assert sorted(uvm.handles[(OWN, h)].pages) == [0]
    await clean(uvm)


async def test_a_pageout_under_way_finishes_first_and_writes_nothing_past_the_end(
    vm: tuple[Uvm, Mmu],
) -> None:
    """The page daemon claimed a dirty page beyond the new end (BUSY); the truncation
    waits for it; the pageout's write stops at the end (VnodeFile.put): the file keeps
    its new size and the page is gone."""
    from machine.proto.pageinfo import PdOp
    from machine.uvm import pdops

    uvm, mmu = vm
    (disk(uvm) / "pd").write_bytes(pattern(2))
    h, _ = files.open(uvm, OWN, "pd", False, None)
    obj = uvm.handles[(OWN, h)]
    p, va = await mapped(uvm, h, 2)
    await cpu_store(uvm, mmu, p, va + P, b"dirty")
    pfn = obj.pages[1]
    uvm.pages.deactivate(pfn)
    assert pdops.claim(uvm, [(PdOp.PAGEOUT, pfn)]) == [pfn]
    await uvm.revoke([pfn], "page daemon")
    trunc = asyncio.create_task(files.ftruncate(uvm, OWN, h, P))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not trunc.done()
    await pdops.finish(uvm, [(PdOp.PAGEOUT, pfn)])
    await trunc
    assert 1 not in obj.pages
    assert (disk(uvm) / "pd").read_bytes() == pattern(1)
    await clean(uvm)
