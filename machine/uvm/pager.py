"""The pagers' put side: writing pages back to their store and freeing them.

  flush_object(obj, lo, hi)   pgo_put(PGO_CLEANIT) on a vnode object's range:
      every resident page that is dirty (PG_CLEAN clear, or the mmu's modified
      bit set — read and cleared in one batched pmap.attrs) is written to the
      file, one pwrite per run of consecutive dirty pages, and marked clean.
      Used by msync (without the fsync for MS_ASYNC), by munmap/exit of a
      shared file mapping, by the last close, and at shutdown.
  pageout(asid, va)           "page out this page" (the kernel's uvm.pageout,
      used by tests and, later, by the page daemon's decisions): revoke every
      mapping of the page (pmap.page_protect NONE), write it if dirty (anon
      and aobj pages to swap, in the slot they have or a new one; vnode pages
      to the file), and free the frame. Refused (EBUSY) for a busy or wired
      page: a wired page never leaves RAM. Swap full -> ENOMEM.
The page daemon's pageouts (machine.uvm.pdops.finish) write through
machine.uvm.cluster first (contiguous swap slots per cluster, one pwrite per
run) and then evict page by page with the data already on its store.
busy_and_revoke / free_tabled: the two steps of pgo_put(PGO_FREE) on chosen pages of
an object (msync's MS_INVALIDATE and a truncation, machine.uvm.files and setsize).
Data paged out comes back through the fault handler (swap: fltanget;
file: fltget).
cf. NetBSD sys/uvm/uvm_pager.c, uvm_vnode.c, uvm_aobj.c, uvm_swap.c.
"""

from __future__ import annotations

from machine.proto import Errno, UserError
from machine.proto.pageinfo import MODIFIED, PFN_BATCH
from machine.proto.types import Prot
from machine.uvm.anon import Anon
from machine.uvm.cluster import runs
from machine.uvm.object import UvmObject, VnodeObject
from machine.uvm.page import NIL, PQ, PageFlag
from machine.uvm.state import Uvm


async def flush_object(uvm: Uvm, obj: UvmObject, lo: int, hi: int, sync: bool = True) -> int:
    """Write back the dirty resident pages of obj in page offsets [lo, hi). => pages written.

    => sync (PGO_SYNCIO): the host file is fsync'd after the writes; without it the
       writes are left to the host (msync's MS_ASYNC)."""
    pfns = sorted((pg, pfn) for pg, pfn in obj.pages.items() if lo <= pg < hi)
    if not pfns:
        return 0
    bits: list[int] = []
    for i in range(0, len(pfns), PFN_BATCH):  # one pmap.attrs per batch of frames
        bits += await uvm.pmap.attrs([pfn for _, pfn in pfns[i : i + PFN_BATCH]], False, True)
    dirty = [
        (pg, pfn)
        for (pg, pfn), b in zip(pfns, bits, strict=True)
        if b & MODIFIED or not uvm.pages.flags[pfn] & PageFlag.CLEAN
    ]
    if isinstance(obj, VnodeObject) and obj.file is not None:
        for first, run in runs(dirty):  # one pwrite per run of consecutive pages
            obj.file.put_run(first, uvm.ram, run)
    else:
        for pg, pfn in dirty:
            obj.pgops.put(uvm, obj, pg, pfn, True)
    for _, pfn in dirty:
        uvm.pages.flags[pfn] |= PageFlag.CLEAN
    n = len(dirty)
    if n and sync and isinstance(obj, VnodeObject) and obj.file is not None:
        obj.file.sync()
    uvm.stats.flushes += n
    return n


def _owner_of(uvm: Uvm, pfn: int) -> tuple[Anon | None, UvmObject | None, int]:
    pages = uvm.pages
    if pages.flags[pfn] & PageFlag.ANON:
        return uvm.anons[pages.uanon[pfn]], None, 0
    obj_id = pages.uobject[pfn]
    return None, uvm.objects.get(obj_id) if obj_id != NIL else None, int(pages.offset[pfn])


def evict(uvm: Uvm, pfn: int, dirty: bool) -> None:
    """Write one unmapped, unbusy frame to its store if dirty, and free it.

    => anon and aobj pages go to swap (the slot they have, or a new one: UserError
       ENOMEM "swap is full" and nothing changed); file pages to their file.
    """
    pages = uvm.pages
    anon, obj, pgoff = _owner_of(uvm, pfn)
    if anon is None and obj is None:
        raise UserError(Errno.EINVAL, f"page {pfn} has no owner to page out to")
    if anon is not None:
        if uvm.swap is None:
            raise UserError(Errno.ENOMEM, "no swap device")
        if not anon.swslot:
            anon.swslot = uvm.swap.alloc(1)
            if not anon.swslot:
                raise UserError(Errno.ENOMEM, "swap is full")
            dirty = True
        if dirty:
            uvm.swap.put(anon.swslot, uvm.ram, [pfn])
        anon.page = NIL
        uvm.swap_only(+1)
    else:
        assert obj is not None
        obj.pgops.put(uvm, obj, pgoff, pfn, dirty)  # pgo_put
        del obj.pages[pgoff]
        obj.pgops.released(uvm, obj, pgoff)
    pages.flags[pfn] &= ~PageFlag.CLEAN
    uvm.free_page(pfn)
    uvm.stats.pageouts += 1


async def pageout_page(uvm: Uvm, pfn: int) -> None:
    """Revoke every mapping of a frame, then evict it (see module doc)."""
    pages = uvm.pages
    if pages.flags[pfn] & PageFlag.BUSY or pages.wire_count[pfn]:
        raise UserError(Errno.EBUSY, f"page {pfn} is busy or wired")
    anon, obj, _ = _owner_of(uvm, pfn)
    if anon is None and obj is None:
        raise UserError(Errno.EINVAL, f"page {pfn} has no owner to page out to")
    uvm.busy(pfn)
    try:
        await uvm.pmap.page_protect([pfn], int(Prot.NONE))
        bits = (await uvm.pmap.attrs([pfn], True, True))[0]
    finally:
        uvm.unbusy(pfn)
    if pages.pqflags[pfn] == PQ.FREE:
        return  # its owner let it go while we waited: unbusy freed it
    try:
        evict(uvm, pfn, bool(bits & MODIFIED) or not pages.flags[pfn] & PageFlag.CLEAN)
    except UserError:
        pages.activate(pfn)
        raise


async def pageout(uvm: Uvm, asid: int, va: int) -> int:
    """Page out the page that backs va in asid (kernel request). => the pfn freed."""
    sp = uvm.spaces.get(asid)
    if sp is None:
        raise UserError(Errno.ESRCH, f"no process with asid {asid}")
    async with sp.lock:
        e = sp.map.lookup(va)
        if e is None:
            raise UserError(Errno.EFAULT, f"no mapping at {va:#x}")
        slot = e.slot(va)
        anon = e.amap.lookup(slot) if e.amap is not None else None
        if anon is not None:
            pfn = anon.page
        elif e.obj is not None:
            pfn = e.obj.pages.get(e.pgoff(va), NIL)
        else:
            pfn = NIL
        if pfn == NIL:
            raise UserError(Errno.ENOENT, f"nothing resident at {va:#x}")
        await pageout_page(uvm, pfn)
        return pfn


async def busy_and_revoke(uvm: Uvm, pfns: list[int], why: str) -> None:
    """pgo_put(PGO_FREE)'s first step: hold the pages BUSY and revoke every mapping of
    them (pmap_page_protect NONE). => on an exception the pages are unbusied again."""
    for pfn in pfns:
        uvm.busy(pfn)
    try:
        await uvm.revoke(pfns, why)
    except BaseException:
        for pfn in pfns:
            uvm.unbusy(pfn)
        raise


def free_tabled(uvm: Uvm, obj: UvmObject, pages: list[tuple[int, int]]) -> None:
    """pgo_put(PGO_FREE)'s last step: each (pgoff, pfn), BUSY, leaves obj, is unbusied (its
    waiters start over and find it gone) and freed (uvm_pagefree: a loaned page is only
    disowned, an orphan its loans keep)."""
    for pg, pfn in pages:
        del obj.pages[pg]
        uvm.unbusy(pfn)
        uvm.free_page(pfn)
