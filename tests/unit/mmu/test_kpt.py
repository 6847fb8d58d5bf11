"""The kernel's page table in shared memory (machine.kpt): the pmap writes it, the reader
protocol, the shootdown rule (a reader inside a frame delays the revocation's reply, no
reader uses the old frame after it), and the shm path with real processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import secrets
import time

import pytest

from machine.ipc.inmemory import InMemoryTransport
from machine.kpt import BASE_VPN, KPT_PAGES, KernelPageTable
from machine.mmu.pmap import Mmu
from machine.mmu.service import MmuService
from machine.params import PAGE_SHIFT, PAGE_SIZE
from machine.proto import (
    Header,
    PmapCountReply,
    PmapKremoveRanges,
    PmapPageProtect,
    Reply,
    Request,
    Scope,
    encode,
)
from machine.proto.types import Prot
from machine.ram import Ram

K = BASE_VPN << PAGE_SHIFT  # the first loan KVA page
H = Header(msg_id=1, sender="pdaemon", incarnation=0)


def _mmu(mode: str = "unmanaged") -> Mmu:
    ram = Ram.anonymous(64 * PAGE_SIZE)
    return Mmu(ram, mode, "remove", ram.kpt)


def test_kenter_writes_the_table_and_every_kernel_removal_clears_it() -> None:
    mmu = _mmu("managed")  # 1999's managed kenter: page_protect(NONE) revokes it
    kpt = mmu.kpt
    assert kpt is not None
    mmu.kenter(K, [5, 6, 7], Prot.READ)
    assert [kpt.lookup(BASE_VPN + i) for i in range(3)] == [5, 6, 7]
    assert mmu.check() == []
    mmu.page_protect([6], Prot.NONE, "pdaemon", "deactivate")  # the 1999 bug's path
    assert kpt.lookup(BASE_VPN + 1) is None
    assert mmu.check() == []
    mmu.kremove(K, 3)
    assert [kpt.lookup(BASE_VPN + i) for i in range(3)] == [None] * 3
    assert mmu.check() == []
    assert not mmu.kpt_hits  # nobody was reading


def test_a_page_protect_read_leaves_the_entry_and_unmanaged_kenter_survives_none() -> None:
    mmu = _mmu("unmanaged")
    assert mmu.kpt is not None
    mmu.kenter(K, [5], Prot.READ)
    mmu.page_protect([5], Prot.NONE)  # unmanaged: no pv entry, untouched
    assert mmu.kpt.lookup(BASE_VPN) == 5


def test_kernel_va_outside_the_window_is_not_in_the_table_and_k1_sees_a_stale_entry() -> None:
    mmu = _mmu()
    kpt = mmu.kpt
    assert kpt is not None
    mmu.kenter(K - PAGE_SIZE, [3], Prot.READ)  # below the loan arena (uvm's own kenter)
    assert not kpt.covers(BASE_VPN - 1, 1)
    assert kpt.enter(BASE_VPN - 1, 1) is None  # the reader asks the mmu instead
    assert not kpt.covers(BASE_VPN + KPT_PAGES - 1, 2)
    assert mmu.check() == []
    kpt.put(BASE_VPN + 9, 4)  # a translation the pmap does not hold
    assert any(p.startswith("K1") for p in mmu.check())


def test_a_reader_sees_the_frames_and_a_cleared_entry_is_a_fault_with_nothing_announced() -> None:
    kpt = KernelPageTable.anonymous()
    kpt.put(BASE_VPN, 3)
    kpt.put(BASE_VPN + 1, 4)
    got = kpt.enter(BASE_VPN, 2)
    assert isinstance(got, tuple)
    assert got[0] == [3, 4]
    assert kpt.inside({BASE_VPN, BASE_VPN + 1})
    assert kpt.leave(BASE_VPN, got[1])
    assert not kpt.inside({BASE_VPN, BASE_VPN + 1})  # K4
    kpt.clear(BASE_VPN + 1)
    assert kpt.enter(BASE_VPN, 2) == BASE_VPN + 1  # the fault, at the page
    assert not kpt.inside({BASE_VPN, BASE_VPN + 1})


def test_a_copy_that_overlapped_a_revocation_is_discarded_and_no_reader_sees_the_old_pfn() -> None:
    ram = bytearray(8 * PAGE_SIZE)
    ram[3 * PAGE_SIZE : 4 * PAGE_SIZE] = b"A" * PAGE_SIZE
    kpt = KernelPageTable.anonymous()
    kpt.put(BASE_VPN, 3)
    got = kpt.enter(BASE_VPN, 1)
    assert isinstance(got, tuple)
    assert kpt.clear(BASE_VPN) is True  # a reader is inside: the revoker must wait
    assert kpt.leave(BASE_VPN, got[1]) is False  # K2: the copy is not used
    assert kpt.enter(BASE_VPN, 1) == BASE_VPN  # after the revocation: the fault
    assert kpt.read(memoryview(ram), BASE_VPN, 1, 0, 16) == BASE_VPN
    kpt.put(BASE_VPN, 3)
    assert kpt.read(memoryview(ram), BASE_VPN, 1, 8, 16) == b"A" * 16


async def _call(svc: MmuService, msg: Request) -> Reply:
    return await svc.dispatch(encode(msg), Scope.KERNEL)


@pytest.mark.parametrize("how", ["kremove", "page_protect"])
async def test_a_reader_inside_a_frame_delays_the_revocations_reply(how: str) -> None:
    mmu = _mmu("managed")
    kpt = mmu.kpt
    assert kpt is not None
    svc = MmuService(InMemoryTransport(1), mmu=mmu, rng=random.Random(1))
    mmu.kenter(K, [5, 6], Prot.READ)
    got = kpt.enter(BASE_VPN + 1, 1)  # a DMA inside frame 6
    assert isinstance(got, tuple)
    msg: Request = (
        PmapKremoveRanges(h=H, ranges=[(K, 2)])
        if how == "kremove"
        else PmapPageProtect(h=H, pfns=[6], prot=int(Prot.NONE), why="deactivate")
    )
    revoke = asyncio.ensure_future(_call(svc, msg))
    await asyncio.sleep(0.01)
    assert not revoke.done()  # the shootdown waits for the reader
    assert kpt.lookup(BASE_VPN + 1) is None  # applied at once: no new reader gets frame 6
    assert kpt.enter(BASE_VPN + 1, 1) == BASE_VPN + 1
    assert kpt.leave(BASE_VPN + 1, got[1]) is False  # the reader leaves; its copy is void
    rep = await asyncio.wait_for(revoke, 2)
    assert isinstance(rep, PmapCountReply)
    assert svc.counters()["kpt_shootdowns"] == 1
    other = await _call(svc, PmapKremoveRanges(h=H, ranges=[(K, 2)]))
    assert isinstance(other, PmapCountReply)  # nobody inside: answered at once
    assert svc.counters()["kpt_shootdowns"] == 1


# -- the shm path, with real processes -------------------------------------------------

NPAGES = 64
ROUNDS = 300


def _reader(name: str, size: int, ready: object, stop: object, out: object) -> None:
    """A DMA engine in another process: read the loan KVA pages over and over; every copy
    returned must be the mapped pattern, never the reuse scribble."""
    ram = Ram.attach(name, size)
    kpt = ram.kpt
    reads = faults = bad = 0
    try:
        while not stop.is_set():  # type: ignore[attr-defined]
            got = kpt.read(ram.view, BASE_VPN, NPAGES, 0, NPAGES * PAGE_SIZE)
            if isinstance(got, bytes):
                reads += 1
                bad += got != b"A" * len(got)
                ready.set()  # type: ignore[attr-defined]
            elif got is not None:
                faults += 1
    finally:
        out.put((reads, faults, bad))  # type: ignore[attr-defined]
        ram.close()


def test_real_processes_a_reader_never_uses_a_frame_after_its_revocation() -> None:
    """The mmu side here revokes, waits for the reader (the shootdown), scribbles the frames
    (uvm reusing them) and maps them again, while a reader process copies from them."""
    name = f"uvm-machine-test-{os.getpid()}-{secrets.token_hex(4)}"
    size = 128 * PAGE_SIZE
    ram = Ram.create(name, size)
    try:
        kpt = ram.kpt
        pfns = list(range(2, 2 + NPAGES))
        span = slice(2 * PAGE_SIZE, (2 + NPAGES) * PAGE_SIZE)
        ram.view[span] = b"A" * NPAGES * PAGE_SIZE
        for i, p in enumerate(pfns):
            kpt.put(BASE_VPN + i, p)
        ctx = multiprocessing.get_context("spawn")
        ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=_reader, args=(name, size, ready, stop, out))
        proc.start()
        try:
            assert ready.wait(60), "the reader process never read"
            deadline = time.monotonic() + 60
            waited = 0
            for _ in range(ROUNDS):
                vpns = {BASE_VPN + i for i in range(NPAGES)}
                hit = [kpt.clear(v) for v in sorted(vpns)]
                while kpt.inside(vpns):  # the shootdown: no reader left inside
                    assert time.monotonic() < deadline, "a reader never left"
                    time.sleep(0)
                waited += any(hit)
                ram.view[span] = b"X" * NPAGES * PAGE_SIZE  # reused: other bytes
                ram.view[span] = b"A" * NPAGES * PAGE_SIZE
                for i, p in enumerate(pfns):
                    kpt.put(BASE_VPN + i, p)
                time.sleep(0.0005)
        finally:
            stop.set()
            reads, _faults, bad = out.get(timeout=30)
            proc.join(30)
        assert bad == 0, f"{bad} copies held bytes of a revoked frame"
        assert reads > 0, "the reader never read"
        assert proc.exitcode == 0
        assert not kpt.inside({BASE_VPN + i for i in range(NPAGES)})  # K4
    finally:
        ram.close()
    assert not os.path.exists(f"/dev/shm/{name}.kpt")  # the owner unlinked both
