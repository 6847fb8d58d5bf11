"""Fault-ahead: map resident neighbours of a faulting page, as uvm_fault does.

NetBSD's uvm_fault looks a few pages behind and ahead of the faulting one
(uvmadvice[MADV_NORMAL]: 3 back, 4 forward, within the same map entry) and
maps those already resident (uvm_fault_upper_neighbor / _lower_neighbor),
so sequential access faults once per few pages rather than once per page.

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
  * the page queues are not touched (a neighbour was not accessed; NetBSD
    does not activate it either) and the mmu enters a neighbour only where
    its pmap has no translation (PMAP_CANFAIL);
  * each neighbour is BUSY from here until the trap's answer is sent
    (machine.uvm.trap), like the faulting page.
cf. NetBSD sys/uvm/uvm_fault.c, uvmfault_anonflush / uvm_fault_*_neighbor.
"""

from __future__ import annotations

from machine.params import PAGE_SIZE
from machine.proto.types import EnterFlags, Prot
from machine.uvm.fault import Resolved
from machine.uvm.page import NIL, PageFlag
from machine.uvm.state import Uvm, VmSpace

NBACK = 3
NFORW = 4


_BUSY = int(PageFlag.BUSY)
_READ = int(Prot.READ)
_WRITE = int(Prot.WRITE)


def neighbours(uvm: Uvm, sp: VmSpace, r: Resolved, access: int) -> list[Resolved]:
    """The resident neighbours of r's page to map read-only, each made BUSY.
    => [] for a write or wiring fault (see the module doc)."""
    if access & _WRITE or r.flags & EnterFlags.WIRED:
        return []
    e = sp.map.lookup(r.va)
    eprot = int(e.prot) if e is not None else 0
    if e is None or not eprot & _READ:
        return []
    prot = eprot & ~_WRITE
    flags = uvm.pages.flags
    amap, obj = e.amap, e.obj
    out: list[Resolved] = []
    lo = max(e.start, r.va - NBACK * PAGE_SIZE)
    hi = min(e.end, r.va + (NFORW + 1) * PAGE_SIZE)
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
    return out
