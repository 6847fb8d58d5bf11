"""Advice on address ranges (uvm_map_inherit, uvm_map_advice, uvm_map_willneed, the
deactivate and free of uvm_map_clean, sys_mincore): minherit, madvise, mincore.

Ranges are NetBSD's (sys_minherit, sys_madvise): va rounded down to its page, the
length up to cover the last byte; a range that wraps or leaves user space is EINVAL
(range_test). mincore differs, as sys_mincore does: va must be page aligned (EINVAL)
and anything unmapped, outside user space too, is ENOMEM.

  minherit   sets each entry's inheritance (machine.uvm.map.Inherit: SHARE, COPY,
             NONE, ZERO), clipping at the range's ends; unmapped parts are skipped
             (uvm_map_inherit). Another value, MAP_INHERIT_DONATE_COPY included, is
             EINVAL. fork (machine.uvm.mmap) honours it.
  madvise    NORMAL, RANDOM, SEQUENTIAL set each entry's advice, clipping, skipping
             holes (uvm_map_advice): the fault-ahead window (machine.uvm.ahead).
             WILLNEED reads the range's non-resident pages in without mapping any:
             the object's pages (the file's, or an aobj's from swap) where no anon
             hides them, and the swapped-out anons (NetBSD reads ahead only the
             object of an entry without an amap); holes are skipped; it stops at the
             page daemon's freemin, so it never causes pressure.
             DONTNEED and FREE are uvm_map_clean: a hole anywhere is EFAULT (NetBSD's
             errno), FREE of a wired entry EBUSY, both before anything changes.
             DONTNEED deactivates the resident pages of the range, anon and object
             (PGO_DEACTIVATE; dirty file pages are written first, PGO_CLEANIT); busy,
             wired and loaned pages are left alone.
             FREE frees the resident anons of the range when the entry's amap has no
             other reference (an amap shared by fork or minherit is only deactivated):
             the process's translations go first (pmap.remove), then each anon leaves
             its slot and loses a reference, its page and swap slot freed with its
             last (a loaned page is disowned and revoked, as at munmap); busy and wired
             pages stay, and so do anons only in swap (NetBSD's uvm_map_clean skips
             anons without a page). A read afterwards is zero-fill (or the file's page
             under a private file mapping). File pages of the range are written if
             dirty and freed (revoked everywhere first; PGO_FREE|PGO_CLEANIT); an
             aobj's are only deactivated (uao_put's CLEANIT|FREE case).
  mincore    one byte per page: 1 when the entry's anon for the page has a page,
             else when its object's page is resident (an anon swapped out over a
             resident object page counts as resident, as sys_mincore counts it).
             At most MINCORE_MAX_PAGES pages (EINVAL beyond); costs O(pages asked).
Counters (machine.uvm.stats): madv_willneed (pages read), madv_dontneed (pages
deactivated), madv_free (pages freed).
cf. NetBSD sys/uvm/uvm_map.c, uvm_mmap.c (concepts only).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from machine.params import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, USER_MIN, USER_TOP, round_page
from machine.proto import (
    MADV_DONTNEED,
    MADV_FREE,
    MADV_NORMAL,
    MADV_RANDOM,
    MADV_SEQUENTIAL,
    MADV_WILLNEED,
    MAP_INHERIT_COPY,
    MAP_INHERIT_NONE,
    MAP_INHERIT_SHARE,
    MAP_INHERIT_ZERO,
    MINCORE_MAX_PAGES,
    Errno,
    UserError,
)
from machine.proto.pageinfo import MODIFIED, PFN_BATCH
from machine.proto.types import Prot
from machine.uvm.map import Inherit, MapEntry
from machine.uvm.mmap import _clip
from machine.uvm.object import AObj, UvmObject
from machine.uvm.page import NIL, PQ, PageFlag
from machine.uvm.pager import flush_object
from machine.uvm.state import Uvm, VmSpace

_INHERIT = {
    MAP_INHERIT_SHARE: Inherit.SHARE,
    MAP_INHERIT_COPY: Inherit.COPY,
    MAP_INHERIT_NONE: Inherit.NONE,
    MAP_INHERIT_ZERO: Inherit.ZERO,
}
_ADVICE = (MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL)
_SKIP = PageFlag.BUSY  # a page someone works on is never touched here


def _range(va: int, length: int) -> tuple[int, int]:
    """NetBSD's rounding and range_test. => (start, end); UserError EINVAL."""
    start = va & ~PAGE_MASK
    end = round_page(va + length) if length >= 0 else -1
    if end < start or start < USER_MIN or end > USER_TOP:
        raise UserError(Errno.EINVAL, f"range at {va:#x} (+{length:#x}) outside user space")
    return start, end


async def minherit(uvm: Uvm, asid: int, owner: int, va: int, length: int, inherit: int) -> None:
    """minherit(2): the inheritance of every entry of the range (uvm_map_inherit).

    => UserError EINVAL (a value other than SHARE, COPY, NONE, ZERO; the range),
       ENOMEM (a split beyond map_entries or maxentries), ESRCH; nothing changed."""
    kind = _INHERIT.get(inherit)
    if kind is None:
        raise UserError(Errno.EINVAL, f"minherit: bad inheritance {inherit}")
    sp = uvm.space(asid, owner)
    start, end = _range(va, length)
    async with sp.lock:
        for e in _clip(uvm, sp, start, end):
            e.inheritance = kind


async def madvise(uvm: Uvm, asid: int, owner: int, va: int, length: int, advice: int) -> None:
    """madvise(2) (sys_madvise; see the module doc for each advice).

    => UserError EINVAL (MADV_SPACEAVAIL, an unknown value, the range), ENOMEM (a
       split beyond the limits: NORMAL, RANDOM, SEQUENTIAL), EFAULT (DONTNEED, FREE: a
       hole in the range), EBUSY (FREE: a wired entry), ESRCH; nothing changed."""
    if advice not in (*_ADVICE, MADV_WILLNEED, MADV_DONTNEED, MADV_FREE):
        raise UserError(Errno.EINVAL, f"madvise: bad advice {advice}")
    sp = uvm.space(asid, owner)
    start, end = _range(va, length)
    async with sp.lock:
        if advice in _ADVICE:
            for e in _clip(uvm, sp, start, end):
                e.advice = advice
            return
        if advice == MADV_WILLNEED:
            uvm.stats.madv_willneed += _willneed(uvm, sp, start, end)
            return
        if not sp.map.covers(start, end):
            raise UserError(Errno.EFAULT, f"madvise: a hole in the range at {start:#x}")
        if advice == MADV_FREE and any(e.wired_count for e in sp.map.in_range(start, end)):
            raise UserError(Errno.EBUSY, f"madvise(MADV_FREE) of wired memory at {start:#x}")
        for e in sp.map.in_range(start, end):
            lo, hi = max(start, e.start), min(end, e.end)
            if advice == MADV_DONTNEED:
                uvm.stats.madv_dontneed += await _dontneed(uvm, e, lo, hi)
            else:
                uvm.stats.madv_free += await _free(uvm, sp, e, lo, hi)


# -- WILLNEED ----------------------------------------------------------------------------


def _room(uvm: Uvm) -> bool:
    """May WILLNEED take one more frame without waking the page daemon?"""
    return uvm.pages.free.count > uvm.freemin


def _willneed(uvm: Uvm, sp: VmSpace, start: int, end: int) -> int:
    """Read the range's non-resident pages in, unmapped. => pages read.

    Costs O(used slots + the pages read + the object's resident pages in the range): the
    walk of a file's range stops when free frames run short and passes over resident
    pages only, of which there are at most RAM's frames."""
    n = 0
    for e in sp.map.in_range(start, end):
        i, j = (
            (max(start, e.start) - e.start) >> PAGE_SHIFT,
            (min(end, e.end) - e.start) >> PAGE_SHIFT,
        )
        for _, anon in e.anons(i, j):
            if anon.page != NIL or not anon.swslot:
                continue
            if not _room(uvm):
                return n
            pfn = uvm.alloc_page(anon=anon)
            uvm.swap_in(anon.swslot, pfn)
            n += _settle(uvm, pfn)
        for pg in _object_wanted(e, i, j):
            assert e.obj is not None
            if pg in e.obj.pages:
                continue
            if not _room(uvm):
                return n
            pfn = uvm.alloc_page(obj=e.obj, pgoff=pg)
            if not e.obj.pgops.get(uvm, e.obj, pg, pfn):
                uvm.pages.flags[pfn] &= ~PageFlag.CLEAN
            n += _settle(uvm, pfn)
    return n


def _object_wanted(e: MapEntry, i: int, j: int) -> Iterator[int]:
    """The object pages behind entry pages [i, j) that no anon hides and that hold data
    somewhere (a file's pages within its size; an aobj's pages with a swap slot)."""
    obj = e.obj
    if obj is None:
        return
    base = e.pgoff(e.start)
    first, last = base + i, min(base + j, obj.npages)
    if isinstance(obj, AObj):
        wanted: Iterable[int] = sorted(pg for pg in obj.swslots if first <= pg < last)
    else:
        wanted = range(first, max(first, last))
    for pg in wanted:
        if e.amap is None or e.amap.lookup(e.aoff + pg - base) is None:
            yield pg


def _settle(uvm: Uvm, pfn: int) -> int:
    """A page just read in (BUSY, FAKE): activated, unbusied, mapped nowhere. => 1."""
    uvm.pages.flags[pfn] &= ~PageFlag.FAKE
    uvm.pages.activate(pfn)
    uvm.unbusy(pfn)
    return 1


# -- DONTNEED ------------------------------------------------------------------------------


def _idle(uvm: Uvm, pfn: int) -> bool:
    """Resident, not busy, not wired, not loaned: a page advice may move or free."""
    p = uvm.pages
    return (
        pfn != NIL and not p.flags[pfn] & _SKIP and not p.wire_count[pfn] and not p.loan_count[pfn]
    )


def _deactivate(uvm: Uvm, pfns: list[int]) -> int:
    """uvm_pagedeactivate of the idle pages among pfns. => pages moved to inactive."""
    n = 0
    for pfn in pfns:
        if _idle(uvm, pfn) and uvm.pages.pqflags[pfn] != PQ.INACTIVE:
            uvm.pages.deactivate(pfn)
            n += 1
    return n


def _object_pages(obj: UvmObject, first: int, last: int) -> list[tuple[int, int]]:
    """(pgoff, pfn) of the object's resident pages in [first, last). O(resident pages)."""
    return sorted((pg, pfn) for pg, pfn in obj.pages.items() if first <= pg < last)


async def _dontneed(uvm: Uvm, e: MapEntry, lo: int, hi: int) -> int:
    """uvm_map_clean(PGO_DEACTIVATE) of [lo, hi) in entry e. => pages deactivated."""
    i, j = (lo - e.start) >> PAGE_SHIFT, (hi - e.start) >> PAGE_SHIFT
    n = _deactivate(uvm, [a.page for _, a in e.anons(i, j)])
    obj = e.obj
    if obj is not None:
        if obj.pgops.writes_back:  # PGO_CLEANIT: dirty file pages are written first
            await flush_object(uvm, obj, e.pgoff(lo), e.pgoff(hi))
        n += _deactivate(uvm, [pfn for _, pfn in _object_pages(obj, e.pgoff(lo), e.pgoff(hi))])
    return n


# -- FREE ------------------------------------------------------------------------------------


async def _free(uvm: Uvm, sp: VmSpace, e: MapEntry, lo: int, hi: int) -> int:
    """uvm_map_clean(PGO_FREE) of [lo, hi) in entry e. => pages freed."""
    i, j = (lo - e.start) >> PAGE_SHIFT, (hi - e.start) >> PAGE_SHIFT
    n = 0
    amap = e.amap
    if amap is not None and amap.ref > 1:  # other references: only deactivated
        uvm.stats.madv_dontneed += _deactivate(uvm, [a.page for _, a in e.anons(i, j)])
    elif amap is not None:
        n += await _free_anons(uvm, sp, e, i, j)
    obj = e.obj
    if obj is None:
        return n
    first, last = e.pgoff(lo), e.pgoff(hi)
    if not obj.pgops.writes_back:  # an aobj: uao_put(PGO_CLEANIT|PGO_FREE) deactivates
        pfns = [pfn for _, pfn in _object_pages(obj, first, last)]
        uvm.stats.madv_dontneed += _deactivate(uvm, pfns)
        return n
    await flush_object(uvm, obj, first, last)  # PGO_CLEANIT before PGO_FREE
    return n + await _free_object_pages(uvm, obj, first, last)


async def _free_anons(uvm: Uvm, sp: VmSpace, e: MapEntry, i: int, j: int) -> int:
    """The resident anons of entry pages [i, j), its amap unshared: translations removed
    first, then each anon leaves its slot (amap_unadd) and loses a reference (uvm_anfree
    with the last). => anons freed."""
    p = uvm.pages
    doomed = [
        (k, a)
        for k, a in e.anons(i, j)
        if a.page != NIL and not p.flags[a.page] & _SKIP and not p.wire_count[a.page]
    ]
    if not doomed:
        return 0
    va = e.start + (doomed[0][0] << PAGE_SHIFT)
    eva = e.start + ((doomed[-1][0] + 1) << PAGE_SHIFT)
    await uvm.pmap.remove(sp.asid, va, eva)
    # sp locked and the amap this entry's alone: only the page daemon may have claimed
    # (BUSY) or paged out one meanwhile; a claimed page stays (as NetBSD skips it).
    assert e.amap is not None
    n = 0
    for k, anon in doomed:
        if anon.page != NIL and p.flags[anon.page] & _SKIP:
            continue
        e.amap.unadd(e.aoff + k)
        n += anon.ref == 1
        uvm.anon_unref(anon)
    doomed_loans, uvm.doomed_loans = uvm.doomed_loans, []
    await uvm.revoke(doomed_loans, "uvm_anfree of a loaned anon page (madvise MADV_FREE)")
    return n


async def _free_object_pages(uvm: Uvm, obj: UvmObject, first: int, last: int) -> int:
    """pgo_put(PGO_FREE) of a vnode's idle resident pages in [first, last): each held
    BUSY while every mapping of it is revoked, written if it got dirty meanwhile, then
    freed. => pages freed."""
    p = uvm.pages
    pages = [(pg, pfn) for pg, pfn in _object_pages(obj, first, last) if _idle(uvm, pfn)]
    if not pages:
        return 0
    pfns = [pfn for _, pfn in pages]
    for pfn in pfns:
        uvm.busy(pfn)
    bits: list[int] = []
    try:
        await uvm.pmap.page_protect(pfns, int(Prot.NONE), "madvise(MADV_FREE)")
        for k in range(0, len(pfns), PFN_BATCH):
            bits += await uvm.pmap.attrs(pfns[k : k + PFN_BATCH], True, True)
    finally:
        for pfn in pfns:
            uvm.unbusy(pfn)  # frees one its owner let go meanwhile (PG_RELEASED)
    n = 0
    for (pg, pfn), b in zip(pages, bits, strict=True):
        if p.pqflags[pfn] == PQ.FREE or obj.pages.get(pg) != pfn:
            continue  # let go while it was busy (truncated, the object freed)
        obj.pgops.put(uvm, obj, pg, pfn, bool(b & MODIFIED) or not p.flags[pfn] & PageFlag.CLEAN)
        del obj.pages[pg]
        obj.pgops.released(uvm, obj, pg)
        uvm.free_page(pfn)
        n += 1
    return n


# -- mincore -----------------------------------------------------------------------------------


async def mincore(uvm: Uvm, asid: int, owner: int, va: int, length: int) -> bytes:
    """mincore(2) (sys_mincore). => one byte per page, 1 resident, 0 not.

    => UserError EINVAL (va not page aligned, length 0 or wrapping, more than
       MINCORE_MAX_PAGES pages), ENOMEM (a page of the range not mapped, or outside
       user space), ESRCH."""
    if va & PAGE_MASK:
        raise UserError(Errno.EINVAL, f"mincore: address {va:#x} not page aligned")
    end = va + round_page(length)
    if end <= va:
        raise UserError(Errno.EINVAL, f"mincore: length {length} is empty or wraps")
    npages = (end - va) >> PAGE_SHIFT
    if npages > MINCORE_MAX_PAGES:
        raise UserError(Errno.EINVAL, f"mincore of {npages} pages: at most {MINCORE_MAX_PAGES}")
    sp = uvm.space(asid, owner)
    async with sp.lock:
        if va < USER_MIN or end > USER_TOP or not sp.map.covers(va, end):
            raise UserError(Errno.ENOMEM, f"mincore: the range at {va:#x} is not fully mapped")
        vec = bytearray(npages)
        for e in sp.map.in_range(va, end):
            amap, obj = e.amap, e.obj
            for a in range(max(va, e.start), min(end, e.end), PAGE_SIZE):
                anon = amap.lookup(e.slot(a)) if amap is not None else None
                if anon is not None and anon.page != NIL:
                    resident = True
                else:  # no anon, or one only in swap: the object's page (sys_mincore)
                    resident = obj is not None and e.pgoff(a) in obj.pages
                vec[(a - va) >> PAGE_SHIFT] = resident
        return bytes(vec)
