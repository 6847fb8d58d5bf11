"""uvm_fault: resolve a trap, for every case of NetBSD's two-layer fault handler.

    fault_locked(space, va, access, wire)
      1. lookup: no entry -> SIGSEGV; access beyond the entry's protection ->
         SIGSEGV. A wiring fault (mlock), and any fault in a wired entry, uses the
         entry's full protection (section 6: wiring a writable COW range resolves
         the COW now; mlock resolves it wherever the entry's maximum protection
         allows a write, as NetBSD's uvm_fault_wire with UVM_FAULT_MAXPROT does).
      2. NEEDSCOPY: a write (or wiring) through an entry whose amap is shared
         after fork first gets the entry its own amap (amap_copy).
      3. upper layer, when the amap has an anon for the page (fault_upper):
           not resident -> read back from swap (fltanget);
           write and anon.ref > 1 -> copy-on-write: a new anon with a copy
           (flt_acow), the old anon losing the slot's reference through
           anon_unref, its ref read after the copy's wait for a frame (the other
           sharers may have exited meanwhile: then it is freed); else map it
           (flt_anon), read-only while shared.
      4. lower layer otherwise (fault_lower):
           no object -> zero-fill a new anon (flt_przero);
           object page not resident -> pgo_get (vnode: read the file; aobj:
           swap or zero) (fltget); a vnode page wholly beyond the file's end ->
           SIGBUS (BusError: NetBSD's pager answers EINVAL, trap() sends
           SIGBUS/BUS_ADRERR), for a wiring fault too; an anon the process
           already has there (a private copy) is still served (upper layer);
           write through a COW entry -> promote: copy into a new anon
           (flt_prcopy); else map the object page (flt_obj), read-only
           through a COW entry so a later write faults and promotes.
      Loans (section 5): a read of a loaned page maps it read-only (5.1). A
  write (or wiring) of a loaned page the process owns alone breaks the loan
  (5.2): the owner gets a fresh copy, the old page is revoked
  (pmap_page_protect NONE, which on a managed-kenter port also removes the
  kernel's loan mapping: the 1999 chain's step 4b) and left to its loans as
  an orphan.
  5. wiring -> uvm_pagewire, PG_CLEAN cleared, the anon's swap slot
         dropped; otherwise uvm_pageactivate; in a wired entry the mapping is
         entered wired and a page nobody wires yet is wired. The result is a `Resolved`:
         the mapping to enter (WIRED for wiring; CLEAN when the frame was just
         read from its backing store), the page still BUSY.
    An amap shared with other entries (AMAP_SHARED, minherit SHARE): a new anon
    in a slot first revokes every mapping of the page the slot showed (the
    sharers refault onto it), and a zero-fill that finds the slot filled while
    it waited for a page drops its own and starts over.
    A page found BUSY (another fault or the pager is working on it across an
    await) is waited for (fltpgwait) and the fault starts over, as NetBSD's
    refault does. The page stays BUSY until its mapping is entered: by
    `enter_resolved` (pmap.enter, awaited: uvm.fault, kernel faults, wiring)
    or by the trap path (machine.uvm.trap), which sends the mapping to the
    mmu on the ordered pmap connection and unbusies once it is sent.
cf. NetBSD sys/uvm/uvm_fault.c (concepts only).
"""

from __future__ import annotations

from dataclasses import dataclass

from machine.params import PAGE_SHIFT, PAGE_SIZE
from machine.proto import BadAddress, BusError, Errno, UserError
from machine.proto.types import EnterFlags, Prot
from machine.uvm.amap import Amap
from machine.uvm.anon import Anon
from machine.uvm.loan import adopt, break_anon_loan, break_obj_loan
from machine.uvm.map import MapEntry
from machine.uvm.object import VnodeObject
from machine.uvm.page import NIL, PageFlag
from machine.uvm.resident import anon_get, obj_get
from machine.uvm.state import Uvm, VmSpace


@dataclass(frozen=True, slots=True)
class Resolved:
    """A resolved fault: the mapping to enter. Its page is BUSY until then."""

    va: int
    pfn: int
    prot: int
    flags: int


async def fault(uvm: Uvm, asid: int, owner: int, va: int, access: Prot) -> int:
    """uvm.fault and copyin faults: resolve under the space's lock and enter the mapping.
    => the pfn now mapped at va."""
    sp = uvm.space(asid, owner)
    uvm.stats.faults += 1
    async with sp.lock:
        if sp.dead:
            raise UserError(Errno.ESRCH, f"process {asid} exited")
        return await enter_resolved(uvm, sp, await fault_locked(uvm, sp, va, access, wire=False))


async def enter_resolved(uvm: Uvm, sp: VmSpace, r: Resolved) -> int:
    """pmap.enter the resolved mapping (awaited), then unbusy its page. => its pfn."""
    try:
        await uvm.pmap.enter(sp.asid, r.va, r.pfn, r.prot, r.flags)
    finally:
        uvm.unbusy(r.pfn)
    return r.pfn


async def fault_locked(uvm: Uvm, sp: VmSpace, va: int, access: Prot, wire: bool) -> Resolved:
    """uvm_fault under the space's lock. => the mapping to enter, its page BUSY."""
    va &= ~(PAGE_SIZE - 1)
    while True:
        e = sp.map.lookup(va)
        if e is None:
            uvm.stats.segv += 1
            raise BadAddress(f"no mapping at {va:#x}")
        if wire:
            access = e.prot
        if access & ~e.prot or e.prot == Prot.NONE:
            uvm.stats.segv += 1
            raise BadAddress(
                f"{Prot(access).letters()} access to {va:#x} in a {e.prot.letters()} mapping"
            )
        if wire or e.wired_count:
            # Full access for wired (uvm_fault_check): copy-on-write and loans are resolved
            # now wherever the entry may be written; mlock asks its maximum protection.
            access = e.prot | ((e.max_prot if wire else e.prot) & Prot.WRITE)
        if e.needs_copy and (access & Prot.WRITE or wire):
            uvm.amap_copy(e)
        slot = e.slot(va)
        anon = e.amap.lookup(slot) if e.amap is not None else None
        if anon is not None:
            r = await _fault_upper(uvm, sp, e, va, slot, anon, access, wire)
        else:
            r = await _fault_lower(uvm, sp, e, va, slot, access, wire)
        if r is not None:  # None: refault (a page was busy; start over)
            return _in_wired_entry(uvm, r) if e.wired_count and not wire else r


def _finish(
    uvm: Uvm, sp: VmSpace, va: int, pfn: int, prot: Prot, wire: bool, clean_read: bool
) -> Resolved:
    """Wire or activate. => the mapping to enter; the page stays BUSY."""
    flags = EnterFlags.NONE
    if wire:
        _wire_page(uvm, pfn)
        flags |= EnterFlags.WIRED
    else:
        uvm.pages.activate(pfn)
    if clean_read:
        flags |= EnterFlags.CLEAN
    return Resolved(va, pfn, int(prot), int(flags))


def _wire_page(uvm: Uvm, pfn: int) -> None:
    """uvm_pagewire, PG_CLEAN cleared and the anon's swap slot dropped (it never leaves RAM)."""
    pages = uvm.pages
    pages.wire(pfn)
    pages.flags[pfn] &= ~PageFlag.CLEAN
    anon_id = pages.uanon[pfn]
    if anon_id != NIL and pages.flags[pfn] & PageFlag.ANON:
        anon = uvm.anons[anon_id]
        if anon.swslot:
            uvm.swap_free(anon.swslot)
            anon.swslot = 0


def _in_wired_entry(uvm: Uvm, r: Resolved) -> Resolved:
    """A fault (not mlock's) in an mlock'ed entry: the mapping is entered wired, and a page
    nothing wires yet (new in the entry: a copy, a zero fill, a page read in again after
    its file shrank and grew) is wired, so the entry's resident pages stay wired (W1,
    machine.uvm.pageable). A page wired already is not wired twice: the entry counts
    once per page, as munlock unwires once per page."""
    if not uvm.pages.wire_count[r.pfn]:
        _wire_page(uvm, r.pfn)
    return Resolved(r.va, r.pfn, r.prot, r.flags | EnterFlags.WIRED)


async def _fault_upper(
    uvm: Uvm, sp: VmSpace, e: MapEntry, va: int, slot: int, anon: Anon, access: Prot, wire: bool
) -> Resolved | None:
    pages = uvm.pages
    got = await anon_get(uvm, anon)
    if got is None:
        return None
    pfn, clean_read = got
    if not clean_read:
        adopt(uvm, pfn)  # an orphan this anon borrowed becomes its own (5.4)
    prot = e.prot
    if access & Prot.WRITE and anon.ref > 1:
        # Copy-on-write: this entry gets its own anon with a copy of the page.
        assert e.amap is not None
        npfn = await _copy_to_new_anon(uvm, e.amap, slot, pfn, replace=anon)
        uvm.stats.flt_acow += 1
        return _finish(uvm, sp, va, npfn, prot, wire, False)
    if access & Prot.WRITE and pages.loan_count[pfn]:
        pfn = await break_anon_loan(uvm, anon, pfn, sp.asid, va)
    uvm.stats.flt_anon += 1
    if anon.ref > 1 or e.needs_copy or pages.loan_count[pfn]:
        prot &= ~Prot.WRITE  # still shared or loaned: a write must fault and copy
    if access & Prot.WRITE:
        pages.flags[pfn] &= ~PageFlag.CLEAN
        clean_read = False
    return _finish(uvm, sp, va, pfn, prot, wire, clean_read)


async def _copy_to_new_anon(
    uvm: Uvm, amap: Amap, slot: int, src: int, replace: Anon | None
) -> int:  # fmt: skip
    """Copy frame `src` into a new anon at amap[slot] (COW: in place of the anon
    `replace`, whose page src is; promotion: None), then unbusy src.

    COW: the replaced anon loses the slot's reference (anon_unref). Its ref is read after
    the wait for a frame, never assumed from before it: the other sharers (a fork's
    parent) may have exited meanwhile, and then this reference was its last: every
    mapping of src is revoked while src is still BUSY (uvm_anfree's
    pmap_page_protect(NONE)) and the anon freed with its page (disowned if loaned).

    => the new frame, BUSY, dirty. On ENOMEM nothing changed but src is unbusied.
    """
    new = uvm.new_anon()
    try:
        npfn = await uvm.alloc_page_wait(anon=new)
    except UserError:
        del uvm.anons[new.id]
        uvm.unbusy(src)
        raise
    uvm.ram.frame(npfn)[:] = uvm.ram.frame(src)
    uvm.pages.flags[npfn] &= ~(PageFlag.CLEAN | PageFlag.FAKE)
    amap.add(slot, new, replace=replace is not None)
    if amap.ref > 1:
        await _revoke_sharers(uvm, amap, slot, src)
    # ref 1: the replaced slot was its only holder; no amap holds it now, so nothing can
    # take a reference while the revocation is awaited.
    last = replace is not None and replace.ref == 1
    if last:
        await uvm.revoke([src], "uvm_anfree: the copy-on-write source's last reference")
    uvm.unbusy(src)
    if not uvm.pages.wire_count[src]:
        uvm.pages.activate(src)
    if replace is not None:
        doomed = len(uvm.doomed_loans)
        uvm.anon_unref(replace)
        # src, if loaned (only a last unref adds it): revoked above already; a later
        # revocation could hit the frame's next use once its loans end.
        del uvm.doomed_loans[doomed:]
    return npfn


async def _revoke_sharers(uvm: Uvm, amap: Amap, slot: int, old: int) -> None:
    """amap_add into an amap other entries refer to (AMAP_SHARED): they may map the page
    the slot showed before (the object page under a promotion, the replaced anon's
    page); take those mappings away before the new page is entered, so every sharer
    refaults and sees the new anon. `old` is BUSY (held by the caller).

    => pmap_page_protect(NONE) of the old page, as NetBSD's amap_add and promotion do;
       for a wired page (NetBSD's "XXX: PAGE MIGHT BE WIRED!") only the sharers'
       mappings of the slot are removed, one pmap.remove each."""
    if not uvm.pages.wire_count[old]:
        await uvm.revoke([old], "amap_add into a shared amap")
        return
    for sp in list(uvm.spaces.values()):
        for e in sp.map.entries:
            if e.amap is amap and e.aoff <= slot < e.aoff + e.npages:
                va = e.start + ((slot - e.aoff) << PAGE_SHIFT)
                await uvm.pmap.remove(sp.asid, va, va + PAGE_SIZE)


def _ensure_amap(e: MapEntry) -> Amap:
    if e.amap is None:
        e.amap, e.aoff = Amap(e.npages), 0
    return e.amap


async def _fault_lower(
    uvm: Uvm, sp: VmSpace, e: MapEntry, va: int, slot: int, access: Prot, wire: bool
) -> Resolved | None:
    pages = uvm.pages
    obj = e.obj
    if obj is None:
        # Anonymous memory never touched: zero-fill a new anon in the amap.
        if e.needs_copy:
            uvm.amap_copy(e)
        amap = _ensure_amap(e)
        anon = uvm.new_anon()
        try:
            pfn = await uvm.alloc_page_wait(anon=anon)
        except UserError:
            del uvm.anons[anon.id]
            raise
        if amap.lookup(slot) is not None:
            # Another process sharing the amap (AMAP_SHARED) filled the slot while we
            # waited for the page: drop ours and refault onto theirs.
            uvm.anon_unref(anon)
            uvm.unbusy(pfn)
            return None
        uvm.ram.zero(pfn)
        pages.flags[pfn] &= ~(PageFlag.CLEAN | PageFlag.FAKE)
        amap.add(slot, anon)
        uvm.stats.zeropages += 1
        uvm.stats.flt_przero += 1
        prot = e.prot
        if e.needs_copy:
            prot &= ~Prot.WRITE
        return _finish(uvm, sp, va, pfn, prot, wire, False)

    pgoff = e.pgoff(va)
    if pgoff >= obj.npages:
        if isinstance(obj, VnodeObject):  # the pager's EINVAL: trap() sends SIGBUS
            uvm.stats.sigbus += 1
            raise BusError(
                f"{va:#x} is beyond the end of file {obj.name!r} "
                f"({obj.npages} pages, page {pgoff} asked)"
            )
        uvm.stats.segv += 1
        raise BadAddress(f"{va:#x} is beyond the end of the mapped object")
    got = await obj_get(uvm, obj, pgoff)
    if got is None:
        return None
    pfn, clean_read = got

    if e.cow and (access & Prot.WRITE or wire):
        # Promote: the private entry gets its own copy; the object is never written.
        npfn = await _copy_to_new_anon(uvm, _ensure_amap(e), slot, pfn, replace=None)
        uvm.stats.flt_prcopy += 1
        return _finish(uvm, sp, va, npfn, e.prot, wire, False)

    if access & Prot.WRITE and pages.loan_count[pfn]:
        pfn = await break_obj_loan(
            uvm, obj, pgoff, pfn, f"write fault by asid {sp.asid} at {va:#x}"
        )
    uvm.stats.flt_obj += 1
    prot = e.prot
    if e.cow or pages.loan_count[pfn]:
        prot &= ~Prot.WRITE  # private: the first write faults and promotes; loaned: breaks
    if access & Prot.WRITE:
        pages.flags[pfn] &= ~PageFlag.CLEAN
        clean_read = False
    return _finish(uvm, sp, va, pfn, prot, wire, clean_read)
