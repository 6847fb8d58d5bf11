"""Wiring (uvm_map_pageable, uvm_map_pageable_all, sys_mlock*): mlock, munlock,
mlockall, munlockall and the per-process RLIMIT_MEMLOCK.

A wired page never leaves RAM: the page daemon skips it (wire_count > 0) and a
wiring fault resolves copy-on-write at once (section 6 of uvm-semantics).
cf. NetBSD sys/uvm/uvm_map.c (uvm_map_pageable, uvm_map_pageable_all),
uvm_mmap.c (sys_mlock, sys_munlock, sys_mlockall, sys_munlockall) (concepts only).
"""

from __future__ import annotations

from machine.params import PAGE_SHIFT, PAGE_SIZE
from machine.proto import Errno, UserError
from machine.proto.types import Prot
from machine.uvm.fault import enter_resolved, fault_locked
from machine.uvm.mmap import _clip
from machine.uvm.state import Uvm


async def mlock(uvm: Uvm, asid: int, owner: int, va: int, length: int) -> None:
    """mlock: fault in and wire every page (a COW range is copied now, section 6)."""

    async with uvm.mapped_range(asid, owner, va, length, "mlock") as (sp, eva):
        if any(e.prot == Prot.NONE for e in sp.map.in_range(va, eva)):
            raise UserError(Errno.ENOMEM, "mlock of an inaccessible range")
        npages = sum(
            (min(eva, e.end) - max(va, e.start)) >> PAGE_SHIFT
            for e in sp.map.in_range(va, eva)
            if not e.wired_count
        )
        if npages + uvm.pages.wired > uvm.pages.npages:
            # sys_mlock's wiredmax check: it could never succeed; refuse before
            # faulting anything (and before looping over a huge range).
            raise UserError(Errno.EAGAIN, f"mlock of {npages} pages: more than RAM can wire")
        for e in _clip(uvm, sp, va, eva):
            e.wired_count += 1
            if e.wired_count == 1:
                for page in range(e.start, e.end, PAGE_SIZE):
                    await enter_resolved(
                        uvm, sp, await fault_locked(uvm, sp, page, e.prot, wire=True)
                    )
        uvm.stats.wirings += 1


async def munlock(uvm: Uvm, asid: int, owner: int, va: int, length: int) -> None:
    """munlock: the last unwiring of an entry puts its pages back on the queues."""
    async with uvm.mapped_range(asid, owner, va, length, "munlock") as (sp, eva):
        for e in _clip(uvm, sp, va, eva):
            if e.wired_count == 0:
                continue
            e.wired_count -= 1
            if e.wired_count:
                continue
            await uvm.pmap.unwire(asid, e.start, e.end)
            for pfn in uvm.resident_pages(e):
                if uvm.pages.wire_count[pfn]:
                    uvm.pages.unwire(pfn)


async def mlockall(uvm: Uvm, asid: int, owner: int, flags: int) -> None:
    """mlockall(2). => UserError EINVAL, ENOMEM, EAGAIN."""
    raise UserError(Errno.ENOSYS, "mlockall: not yet")


async def munlockall(uvm: Uvm, asid: int, owner: int) -> None:
    """munlockall(2)."""
    raise UserError(Errno.ENOSYS, "munlockall: not yet")


def getrlimit(uvm: Uvm, asid: int, owner: int, resource: int) -> tuple[int, int]:
    """getrlimit(2). => (cur, max)."""
    raise UserError(Errno.ENOSYS, "getrlimit: not yet")


def setrlimit(
    uvm: Uvm, asid: int, owner: int, resource: int, cur: int, max_: int
) -> tuple[int, int]:
    """setrlimit(2). => (cur, max) now."""
    raise UserError(Errno.ENOSYS, "setrlimit: not yet")
