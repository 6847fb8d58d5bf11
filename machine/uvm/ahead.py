"""Fault-ahead: map resident neighbours of a faulting page, as uvm_fault does.

NetBSD's uvm_fault looks a few pages behind and ahead of the faulting one,
within the same map entry, as the entry's advice says (uvmadvice: NORMAL 3
back and 4 forward, RANDOM none, SEQUENTIAL 8 back and 7 forward), and maps
those already resident (uvm_fault_upper_neighbor / _lower_neighbor), so
sequential access faults once per few pages rather than once per page.
Under MADV_SEQUENTIAL the pages behind are not mapped but deactivated
(uvmfault_anonflush, pgo_put PGO_DEACTIVATE: they will not be used again),
for every fault but a wiring one; busy, loaned and wired pages are left.
Counters: fltnamap / fltnomap (anon / object neighbours mapped), fltbehind
(pages behind deactivated).

Rules kept here (conservative where ours must stay exact):
  * only for a read fault (a store's neighbours, mapped read-only, would
    fault again on their first store; NetBSD maps them writable where it may,
    which our dirty tracking does not allow) and never for a wiring fault;
  * only pages that are resident and not BUSY: an anon's page in the entry's
    amap, else the object's page (for an entry with an object); never a fill
    (no zero-fill, no pager I/O, no copy);
  * read-only always (the entry's protection without WRITE): a store still
    faults, so copy-on-write, loan breaks and PG_CLEAN stay exactly the
    fault handler's decisions; and only where the entry allows READ;
  * a neighbour's queue is not touched (it was not accessed; NetBSD does not
    activate it either) and the mmu enters a neighbour only where its pmap
    has no translation (PMAP_CANFAIL);
  * each neighbour is BUSY from here until the trap's answer is sent
    (machine.uvm.trap), like the faulting page.
cf. NetBSD sys/uvm/uvm_fault.c, uvmfault_anonflush / uvm_fault_*_neighbor.
"""

from __future__ import annotations

from machine.params import PAGE_SHIFT, PAGE_SIZE
from machine.proto import MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL
from machine.proto.types import EnterFlags, Prot
from machine.uvm.fault import Resolved
from machine.uvm.map import MapEntry
from machine.uvm.page import NIL, PQ, PageFlag
from machine.uvm.state import Uvm, VmSpace

#: uvmadvice (uvm_fault.c): pages (behind, ahead) of a fault, per MADV_* advice.
UVMADVICE = {MADV_NORMAL: (3, 4), MADV_RANDOM: (0, 0), MADV_SEQUENTIAL: (8, 7)}
NBACK, NFORW = UVMADVICE[MADV_NORMAL]


_BUSY = int(PageFlag.BUSY)
_READ = int(Prot.READ)
_WRITE = int(Prot.WRITE)


def neighbours(uvm: Uvm, sp: VmSpace, r: Resolved, access: int) -> list[Resolved]:
    """The resident neighbours of r's page to map read-only, each made BUSY, within the
    window of the entry's advice. => [] for a write or wiring fault (see the module doc).
    Under MADV_SEQUENTIAL the pages behind are deactivated first (a write fault too)."""
    if r.flags & EnterFlags.WIRED:
        return []
    e = sp.map.lookup(r.va)
    if e is None:
        return []
    nback, nforw = UVMADVICE.get(e.advice, (NBACK, NFORW))
    if e.advice == MADV_SEQUENTIAL:
        _deactivate_behind(uvm, e, r.va, nback)
        nback = 0
    eprot = int(e.prot)
    if access & _WRITE or not eprot & _READ:
        return []
    prot = eprot & ~_WRITE
    flags = uvm.pages.flags
    amap, obj = e.amap, e.obj
    out: list[Resolved] = []
    lo = max(e.start, r.va - nback * PAGE_SIZE)
    hi = min(e.end, r.va + (nforw + 1) * PAGE_SIZE)
    for va in range(lo, hi, PAGE_SIZE):
        if va == r.va:
            continue
        anon = amap.lookup(e.slot(va)) if amap is not None else None
        if anon is not None:
            pfn = anon.page
        elif obj is not None:
            pgoff = e.pgoff(va)
            pfn = obj.pages.get(pgoff, NIL) if pgoff < obj.npages else NIL
        else:
            continue
        if pfn == NIL or flags[pfn] & _BUSY:
            continue
        flags[pfn] |= _BUSY  # uvm.busy(pfn), known not busy
        out.append(Resolved(va, pfn, prot, 0))
        if anon is not None:
            uvm.stats.fltnamap += 1
        else:
            uvm.stats.fltnomap += 1
    return out


def _deactivate_behind(uvm: Uvm, e: MapEntry, va: int, nback: int) -> None:
    """MADV_SEQUENTIAL: deactivate the resident pages of the nback pages behind va in e,
    anon layer and object layer (uvmfault_anonflush; pgo_put(PGO_DEACTIVATE))."""
    p = uvm.pages
    lo = max(e.start, va - nback * PAGE_SIZE)
    pfns = [a.page for _, a in e.anons((lo - e.start) >> PAGE_SHIFT, (va - e.start) >> PAGE_SHIFT)]
    if e.obj is not None:
        pages = e.obj.pages
        pfns += [pages.get(e.pgoff(a), NIL) for a in range(lo, va, PAGE_SIZE)]
    for pfn in pfns:
        if pfn == NIL or p.flags[pfn] & _BUSY or p.wire_count[pfn] or p.loan_count[pfn]:
            continue
        if p.pqflags[pfn] == PQ.ACTIVE:
            p.deactivate(pfn)
            uvm.stats.fltbehind += 1
