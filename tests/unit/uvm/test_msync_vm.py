"""msync(2) as NetBSD's sys___msync13 and uvm_map_clean: MS_SYNC, MS_ASYNC,
MS_INVALIDATE, the range rounding and every errno, on the uvm core with a local pmap."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from machine.mmu.pmap import Mmu
from machine.params import KERNEL_MIN, PAGE_SIZE, USER_TOP
from machine.proto import MS_ASYNC, MS_INVALIDATE, MS_SYNC, UserError
from machine.proto.types import Prot
from machine.uvm import files, loan, mmap, wiring
from machine.uvm.audit import audit
from machine.uvm.page import NIL, PQ
from machine.uvm.state import Uvm
from tests.unit.uvm.localpmap import make_uvm
from tests.unit.uvm.test_core import OWN, RW, cpu_load, cpu_store

P = PAGE_SIZE
K = KERNEL_MIN + (1 << 40)


@pytest.fixture
def vm(tmp_path: Path) -> tuple[Uvm, Mmu]:
    return make_uvm(128, tmp_path, swap_pages=64)


def host(uvm: Uvm, name: str) -> Path:
    assert uvm.disk is not None
    return uvm.disk / name


async def shared_file(uvm: Uvm, npages: int, shared: bool = True) -> tuple[int, int, int]:
    host(uvm, "m.bin").write_bytes(b"." * (npages * P))
    h, _ = files.open(uvm, OWN, "m.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, npages * P, RW, handle=h, shared=shared)
    return h, p, va


async def msync_errno(uvm: Uvm, p: int, va: int, n: int, flags: int) -> str:
    with pytest.raises(UserError) as ei:
        await files.msync(uvm, p, OWN, va, n, flags)
    return str(ei.value.errno)


async def test_bad_flags_are_einval(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    _, p, va = await shared_file(uvm, 1)
    for flags in (0, 0x8, MS_ASYNC | MS_SYNC, MS_ASYNC | MS_SYNC | MS_INVALIDATE, -1):
        assert await msync_errno(uvm, p, va, P, flags) == "EINVAL", flags
    assert await files.msync(uvm, p, OWN, va, P, MS_INVALIDATE) == 0  # alone: MS_SYNC too
    assert await audit(uvm) == []


async def test_range_rounding_and_errnos(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    _, p, va = await shared_file(uvm, 2)
    await cpu_store(uvm, mmu, p, va + P, b"second")
    # va rounds down to its page, the length up: this covers page 1 only.
    assert await files.msync(uvm, p, OWN, va + P + 100, 10) == 1
    assert host(uvm, "m.bin").read_bytes()[P : P + 6] == b"second"
    # Part of the range unmapped: EFAULT (uvm_map_clean; NetBSD's ATF t_msync asks for it).
    assert await msync_errno(uvm, p, va + P, 2 * P, MS_SYNC) == "EFAULT"
    assert await msync_errno(uvm, p, va + 4 * P, P, MS_SYNC) == "EFAULT"
    assert await msync_errno(uvm, p, 0, P, MS_SYNC) == "EINVAL"  # below user space
    assert await msync_errno(uvm, p, USER_TOP - P, 2 * P, MS_SYNC) == "EINVAL"
    assert await msync_errno(uvm, p + 99, va, P, MS_SYNC) == "ESRCH"
    # length 0 at an aligned va: the whole entry (the region containing addr).
    await cpu_store(uvm, mmu, p, va, b"first")
    assert await files.msync(uvm, p, OWN, va + P, 0) == 1
    assert host(uvm, "m.bin").read_bytes()[:5] == b"first"
    assert await msync_errno(uvm, p, va + 8 * P, 0, MS_SYNC) == "EINVAL"
    assert await audit(uvm) == []


async def test_ms_sync_fsyncs_and_ms_async_does_not(
    vm: tuple[Uvm, Mmu], monkeypatch: pytest.MonkeyPatch
) -> None:
    uvm, mmu = vm
    _, p, va = await shared_file(uvm, 1)
    fsyncs: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real(fd))[1])
    await cpu_store(uvm, mmu, p, va, b"async")
    assert await files.msync(uvm, p, OWN, va, P, MS_ASYNC) == 1
    assert host(uvm, "m.bin").read_bytes()[:5] == b"async"  # written, not waited for
    assert fsyncs == []
    await cpu_store(uvm, mmu, p, va, b"sync!")
    assert await files.msync(uvm, p, OWN, va, P, MS_SYNC) == 1
    assert host(uvm, "m.bin").read_bytes()[:5] == b"sync!"
    assert len(fsyncs) == 1
    assert await files.msync(uvm, p, OWN, va, P, MS_SYNC) == 0  # clean now
    assert await audit(uvm) == []


async def test_ms_invalidate_drops_the_cached_pages_after_writing_them(
    vm: tuple[Uvm, Mmu],
) -> None:
    uvm, mmu = vm
    h, p, va = await shared_file(uvm, 2)
    obj = uvm.handles[(OWN, h)]
    await cpu_store(uvm, mmu, p, va, b"dirty")
    await cpu_load(uvm, mmu, p, va + P, 1)
    free0 = uvm.pages.free.count
    assert await files.msync(uvm, p, OWN, va, 2 * P, MS_SYNC | MS_INVALIDATE) == 1
    assert obj.pages == {}
    assert uvm.pages.free.count == free0 + 2
    assert mmu.extract(p, va) is None
    assert host(uvm, "m.bin").read_bytes()[:5] == b"dirty"
    assert uvm.stats.msyncinval == 2
    # Later faults read the file again: a change made behind the cache is seen.
    with host(uvm, "m.bin").open("r+b") as f:
        f.seek(P)
        f.write(b"behind")
    assert await cpu_load(uvm, mmu, p, va + P, 6) == b"behind"
    assert await audit(uvm) == []


async def test_ms_invalidate_keeps_private_copies_and_deactivates_them(
    vm: tuple[Uvm, Mmu],
) -> None:
    uvm, mmu = vm
    h, p, va = await shared_file(uvm, 2, shared=False)
    obj = uvm.handles[(OWN, h)]
    await cpu_store(uvm, mmu, p, va, b"mine")  # promoted: an anon of p
    await cpu_load(uvm, mmu, p, va + P, 1)  # the object's page, under the private entry
    anon_pfn = mmu.extract(p, va).pfn  # type: ignore[union-attr]
    await files.msync(uvm, p, OWN, va, 2 * P, MS_INVALIDATE)
    assert uvm.pages.pqflags[anon_pfn] == PQ.INACTIVE  # deactivated, never freed
    assert await cpu_load(uvm, mmu, p, va, 4) == b"mine"
    assert 1 not in obj.pages  # the object's page under the private entry was freed
    assert mmu.extract(p, va + P) is None
    assert host(uvm, "m.bin").read_bytes() == b"." * (2 * P)  # a private copy never writes
    assert await audit(uvm) == []


async def test_msync_of_a_private_mapping_cleans_the_object_beneath(
    vm: tuple[Uvm, Mmu],
) -> None:
    """uvm_map_clean flushes the object of a private entry too: pages another process
    dirtied through a shared mapping reach the file."""
    uvm, mmu = vm
    h, p, va = await shared_file(uvm, 1, shared=False)
    q = await mmap.spawn(uvm, OWN)
    qva = await mmap.mmap(uvm, q, OWN, P, RW, handle=h, shared=True)
    await cpu_store(uvm, mmu, q, qva, b"shared")
    assert await files.msync(uvm, p, OWN, va, P) == 1
    assert host(uvm, "m.bin").read_bytes()[:6] == b"shared"
    assert await audit(uvm) == []


async def test_ms_invalidate_of_a_wired_range_is_ebusy(vm: tuple[Uvm, Mmu]) -> None:
    uvm, mmu = vm
    h, p, va = await shared_file(uvm, 2)
    await wiring.mlock(uvm, p, OWN, va + P, P)
    await cpu_store(uvm, mmu, p, va, b"kept")
    assert await msync_errno(uvm, p, va, 2 * P, MS_INVALIDATE) == "EBUSY"
    assert host(uvm, "m.bin").read_bytes()[:4] == b"...."  # nothing done
    assert await files.msync(uvm, p, OWN, va, 2 * P) == 2  # without: the writes happen
    # A page another process wired is kept by an invalidation of this one's range.
    q = await mmap.spawn(uvm, OWN)
    qva = await mmap.mmap(uvm, q, OWN, 2 * P, RW, handle=h, shared=True)
    await files.msync(uvm, q, OWN, qva, 2 * P, MS_INVALIDATE)
    obj = uvm.handles[(OWN, h)]
    assert list(obj.pages) == [1]
    assert uvm.pages.wire_count[obj.pages[1]] == 1
    assert await audit(uvm) == []


async def test_ms_invalidate_of_a_loaned_page_orphans_it_with_its_bytes(
    vm: tuple[Uvm, Mmu],
) -> None:
    uvm, mmu = vm
    _h, p, va = await shared_file(uvm, 1)
    await cpu_store(uvm, mmu, p, va, b"lent")
    [pfn] = await loan.loan_to_kernel(uvm, p, OWN, va, 1)
    mmu.kenter(K, [pfn], Prot.READ)
    await files.msync(uvm, p, OWN, va, P, MS_INVALIDATE)
    assert uvm.pages.uobject[pfn] == NIL
    assert uvm.pages.loan_count[pfn] == 1
    assert mmu.load(0, K, 4) == b"lent"
    assert host(uvm, "m.bin").read_bytes()[:4] == b"lent"
    assert await audit(uvm) == []
    mmu.kremove(K, 1)
    loan.unloan(uvm, [pfn], K, 1)
    assert uvm.pages.pqflags[pfn] == PQ.FREE
    assert await audit(uvm) == []
