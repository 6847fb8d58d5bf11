"""What fork gives the child of each map entry, by the entry's inheritance (uvmspace_fork's
uvm_mapent_forkshared, uvm_mapent_forkcopy, uvm_mapent_forkzero; minherit sets it).

  SHARE  the child's entry refers to the same object and, for a private entry, the
         same amap (AMAP_SHARED, machine.uvm.amap): one memory, stores of either seen
         by both (a NEEDSCOPY parent first gets an amap of its own to share).
  COPY   copy-on-write: the amap referenced by both with NEEDSCOPY, the parent's
         writable mappings write-protected; a wired entry's pages copied now
         (amap_cow_now: the parent never faults on wired memory); an amap shared with
         other processes copied now for the child, every sharer's mappings of it made
         read-only (NetBSD sets NEEDSCOPY on the parent too, which ends the parent's
         sharing at its next write; here the sharers keep sharing). COPY of a shared
         entry is a private copy-on-write entry over the same object.
  ZERO   fresh zero-fill private anonymous memory (no object, no amap).
  NONE   nothing (fork skips the entry).
The child's entry keeps prot, max_prot, inheritance and advice, and is never wired.
Invariant kept: the child's entry is inserted, and the amap's references taken, with no
await in between (AM2: an amap's references equal the entries that hold it).
cf. NetBSD sys/uvm/uvm_map.c (uvmspace_fork and its helpers; concepts only).
"""

from __future__ import annotations

from machine.kassert import kassert
from machine.proto import UserError
from machine.proto.types import Prot
from machine.uvm.amap import Amap
from machine.uvm.map import Inherit, MapEntry
from machine.uvm.page import NIL, PageFlag
from machine.uvm.state import Uvm, VmSpace


async def fork_entry(uvm: Uvm, sp: VmSpace, child: VmSpace, e: MapEntry) -> None:
    """The child's entry for e by its inheritance (uvm_mapent_fork{shared,copy,zero}),
    inserted into child's map on a reservation before any await (the amap's references
    always equal the entries that hold it, AM2).

    => UserError ENOMEM (amap_cow_now: no frame) with nothing of e's changed."""
    inh = e.inheritance
    if inh is Inherit.ZERO:  # fresh zero-fill private anonymous memory (MAP_INHERIT_ZERO)
        c = MapEntry(e.start, e.end, e.prot, e.max_prot, inh, advice=e.advice)
        child.map.insert(c, reserved=True)
        return
    c = MapEntry(e.start, e.end, e.prot, e.max_prot, inh, e.obj, e.offset, advice=e.advice)
    protect = Prot.NONE
    protect_pages: list[int] = []
    if inh is Inherit.SHARE:
        c.cow = e.cow
        if e.cow:  # one memory: the private entry's amap, shared (AMAP_SHARED)
            if e.needs_copy:
                uvm.amap_copy(e)  # an amap of its own to share
            elif e.amap is None:
                e.amap, e.aoff = Amap(e.npages), 0
            assert e.amap is not None
            e.amap.reference(e.aoff, e.npages, shared=True)
            c.amap, c.aoff = e.amap, e.aoff
        else:
            kassert(e.amap is None, "fork: shared entry with an amap")
    elif e.amap is not None and e.wired_count:
        c.amap = amap_cow_now(uvm, e)  # the parent never faults on wired memory
    elif e.amap is not None and e.amap.ref > 1 and not e.needs_copy:
        # The amap is shared with other processes (AMAP_SHARED): the child gets its copy
        # now, the sharers keep sharing; every sharer's mapping of the copied anons goes
        # read-only (their next write copies), as after any fork.
        c.amap = e.amap.copy(e.aoff, e.npages)
        protect_pages = [a.page for _, a in c.amap.used() if a.page != NIL]
    elif e.amap is not None:  # copy-on-write by reference (NEEDSCOPY on both)
        e.amap.reference(e.aoff, e.npages)
        c.amap, c.aoff, c.needs_copy = e.amap, e.aoff, True
        e.needs_copy = True
        protect = e.prot & Prot.WRITE
    else:
        c.needs_copy = True  # a private copy of whatever backs it (a shared entry too)
    if e.obj is not None:
        e.obj.refs += 1
    child.map.insert(c, reserved=True)
    if protect:
        await uvm.pmap.protect(sp.asid, e.start, e.end, int(e.prot & ~Prot.WRITE))
    if protect_pages:
        await uvm.pmap.page_protect(protect_pages, int(Prot.READ), "fork: copy of a shared amap")


def amap_cow_now(uvm: Uvm, e: MapEntry) -> Amap:
    """amap_cow_now for fork of a wired entry: the child's amap with every page copied.

    => UserError ENOMEM when a frame is missing, every copy made so far freed."""
    new = Amap(e.npages)
    for slot, anon in e.anons():
        if anon.page == NIL:
            # Not wired: a page another sharer of an AMAP_SHARED amap added and the page
            # daemon took. Shared copy-on-write, as after any fork.
            anon.ref += 1
            new.add(slot, anon)
            continue
        copy = uvm.new_anon()
        try:
            pfn = uvm.alloc_page(anon=copy)
        except UserError:
            del uvm.anons[copy.id]
            uvm.amap_unref(new)
            raise
        uvm.ram.frame(pfn)[:] = uvm.ram.frame(anon.page)
        uvm.pages.flags[pfn] &= ~PageFlag.CLEAN
        uvm.pages.activate(pfn)
        uvm.unbusy(pfn)
        new.add(slot, copy)
    return new
