"""uvm_map_pageable: wiring and unwiring the entries of a locked address space, for
mlock, munlock, mlockall, munlockall and MCL_FUTURE (machine.uvm.wiring is the system
call layer above: rounding, limits, errnos; machine.uvm.mmap calls wire_future).

Counting, as NetBSD's uvm_map_pageable does it:
  * an entry's wired_count counts the wirings asked of it (each mlock and each
    mlockall(MCL_CURRENT) covering it: ++); only the first (0 -> 1) faults its pages
    in (uvm_fault_wire: copy-on-write and loans resolved now, wherever the entry's
    maximum protection allows a write) and wires each page once (page wire_count++),
    its mappings entered wired;
  * the user's unwiring (munlock, munlockall) sets wired_count to 0 whatever its value
    (POSIX: one munlock unlocks the range however often it was locked) and unwires
    every page the entry resolves to once (uvm_map_entry_unwire);
  * kernel wirings are page wirings, never an entry's: a 1999 loan wires its page
    (machine.uvm.loan) and its unloan unwires it; fork's amap_cow_now and the page
    daemon read wired_count and wire_count, never change them;
  * a fault in a wired entry enters its mapping wired, and wires a page nobody wires
    yet (machine.uvm.fault: a page new in the entry).
A wired entry stays wired across mprotect (even to PROT_NONE) and clipping (both
pieces keep the count); munmap and exit unwire what they drop (mmap._drop_entry).

MCL_FUTURE (VmMap.wirefuture, VM_MAP_WIREFUTURE; a fork's fresh map has it clear):
every mapping made later (mmap) with a protection other than PROT_NONE is wired as it
is made, and mprotect wires an entry whose protection rises from PROT_NONE; if that
cannot be done the mmap is undone (uvm_mmap unmaps it) and answers ENOMEM.

RLIMIT_MEMLOCK (VmSpace.memlock, bytes; a fork's child inherits it): the bytes of the
space's wired entries (NetBSD's pmap_wired_count) plus what a call would wire must not
pass the soft limit; the machine's wiredmax (uvmexp.wiredmax, a third of RAM) bounds
the wired pages of every process together, first come, as in NetBSD (not shared
fairly: machine.limits says why). All are checked before anything changes.

Invariants (audited, machine.uvm.audit):
  W1  every anon of a wired entry's amap has a resident, wired page; every mapping the
      mmu holds in a wired entry is a wired mapping (and only there: U3).
  W2  (eras whose loans neither wire nor take wired pages) every wired page is one a
      wired entry resolves to, or one a loan holds (a loan break or a truncation can
      replace a loaned page under a lock: the orphan keeps its wiring until its last
      unloan frees it): no other wiring outlives the lock that made it.
  W3  a map with all_locked (wirefuture, and every accessible entry wired when
      mlockall returned) has every entry wired but PROT_NONE ones; munlock and
      munlockall clear all_locked.
A page read in by another process's fault into a shared object a wired entry maps
(possible only after a truncation freed it) is wired when this entry faults on it.
cf. NetBSD sys/uvm/uvm_map.c (uvm_map_pageable, uvm_map_pageable_all), uvm_mmap.c
(uvm_mmap's VM_MAP_WIREFUTURE), uvm_fault.c (uvm_fault_wire) (concepts only).
"""

from __future__ import annotations

from collections.abc import Iterable

from machine.params import PAGE_SHIFT, PAGE_SIZE
from machine.proto import Errno, UserError
from machine.proto.types import Prot
from machine.uvm.fault import enter_resolved, fault_locked
from machine.uvm.map import MapEntry
from machine.uvm.page import NIL
from machine.uvm.state import Uvm, VmSpace


def memlock_default(uvm: Uvm) -> tuple[int, int]:
    """RLIMIT_MEMLOCK of a spawned process, as NetBSD's init_main sets proc0's (which every
    process inherits): (soft, hard) = (a third of RAM, all of RAM), in bytes."""
    ram = uvm.pages.npages * PAGE_SIZE
    return ram // 3, ram


def wired_bytes(sp: VmSpace) -> int:
    """The bytes of the space's wired entries (what RLIMIT_MEMLOCK bounds)."""
    return sum(e.end - e.start for e in sp.map.entries if e.wired_count)


def check_limits(uvm: Uvm, sp: VmSpace, size: int, errno: Errno, what: str) -> None:
    """=> UserError errno when wiring size more bytes would pass the machine's wiredmax
    (counted against every page wired now) or the space's RLIMIT_MEMLOCK (against the
    bytes of its wired entries). Nothing changes."""
    npages = size >> PAGE_SHIFT
    if npages + uvm.pages.wired > uvm.wiredmax:
        raise UserError(
            errno,
            f"{what}: {npages} pages more than the machine may wire "
            f"({uvm.pages.wired} wired, wiredmax {uvm.wiredmax})",
        )
    held, cur = wired_bytes(sp), sp.memlock[0]
    if size + held > cur:
        raise UserError(
            errno,
            f"{what}: {size} bytes more than RLIMIT_MEMLOCK allows ({held} wired, limit {cur})",
        )


def resolve(e: MapEntry, va: int) -> int:
    """The frame e resolves va to now (anon layer first, then object); NIL if none."""
    if e.amap is not None:
        anon = e.amap.lookup(e.slot(va))
        if anon is not None:
            return anon.page
    if e.obj is not None:
        return e.obj.pages.get(e.pgoff(va), NIL)
    return NIL


async def wire_entries(uvm: Uvm, sp: VmSpace, entries: Iterable[MapEntry]) -> None:
    """uvm_map_pageable (wire) of entries (sp locked; each accessible, clipped to the
    range by the caller): wired_count++; an entry wired for the first time has every
    page faulted in, wired once and mapped wired.

    => UserError ENOMEM when a page cannot be had (no frame; a page beyond the end of
       its file), with everything this call did undone: counts restored, the pages it
       wired unwired (the entries' clips stay; they change nothing a process sees)."""
    todo = list(entries)
    for e in todo:
        e.wired_count += 1
    fresh = [e for e in todo if e.wired_count == 1]
    wired: list[tuple[MapEntry, int, int]] = []  # (entry, va, pfn) this call wired
    try:
        for e in fresh:
            for va in range(e.start, e.end, PAGE_SIZE):
                r = await fault_locked(uvm, sp, va, e.prot, wire=True)
                wired.append((e, va, r.pfn))
                await enter_resolved(uvm, sp, r)
    except BaseException as err:
        for e in todo:
            e.wired_count -= 1
        await _unwind(uvm, sp, fresh, wired)
        if isinstance(err, UserError) and err.errno is not Errno.ENOMEM:
            raise UserError(Errno.ENOMEM, f"a page cannot be wired: {err.detail}") from err
        raise


async def _unwind(
    uvm: Uvm, sp: VmSpace, fresh: list[MapEntry], wired: list[tuple[MapEntry, int, int]]
) -> None:
    """Undo a wiring that failed: the fresh entries' mappings unwired, then each page the
    call wired and its entry still resolves to (a page freed meanwhile, by a truncation
    of its file, is no longer its) unwired once."""
    for e in fresh:
        await uvm.pmap.unwire(sp.asid, e.start, e.end)
    for e, va, pfn in wired:
        if pfn != NIL and resolve(e, va) == pfn and uvm.pages.wire_count[pfn]:
            uvm.pages.unwire(pfn)


async def unwire_entry(uvm: Uvm, sp: VmSpace, e: MapEntry) -> None:
    """uvm_map_entry_unwire: wired_count = 0, the entry's mappings unwired, and each
    page it resolves to unwired once (back on the paging queues when nothing else
    wires it). => sp locked."""
    e.wired_count = 0
    await uvm.pmap.unwire(sp.asid, e.start, e.end)
    for pfn in uvm.resident_pages(e):
        if uvm.pages.wire_count[pfn]:
            uvm.pages.unwire(pfn)


async def wire_future(uvm: Uvm, sp: VmSpace, e: MapEntry) -> None:
    """MCL_FUTURE for an entry just made or just made accessible: wire it (uvm_mmap's
    VM_MAP_WIREFUTURE). => UserError ENOMEM beyond wiredmax or RLIMIT_MEMLOCK (nothing
    wired) or when a page cannot be had (everything undone); the caller undoes the
    mapping (mmap) or keeps it unwired (mprotect, which then clears all_locked)."""
    if e.prot == Prot.NONE or e.wired_count:
        return
    check_limits(uvm, sp, e.end - e.start, Errno.ENOMEM, "MCL_FUTURE")
    await wire_entries(uvm, sp, [e])
