"""Make a page resident: get it from its store, or wait while another holds it BUSY.

The one path every user of a page takes before it works on it: the fault's
two layers (machine.uvm.fault), loans (machine.uvm.loan). NetBSD's
uvmfault_anonget for the anon layer and pgo_get for the object layer.

    anon_get(anon)          the anon's page: swapped out -> a new frame read
                            back from its swap slot (fltanget); resident and
                            BUSY -> wait (fltpgwait), => None: start over.
    obj_get(obj, pgoff)     the object's page at pgoff: not resident -> a new
                            frame filled by the object's pager (pgo_get: the
                            file, the aobj's swap slot, or zeros); BUSY -> wait,
                            => None.

=> (pfn, from_store): the page is BUSY (the caller unbusies it, or enters a
   mapping and then unbusies); from_store is True when the frame was just
   read and equals its backing store (a clean read: the mapping may be entered
   CLEAN). None: the caller slept on a BUSY page and must look the page up
   again (its map, amap or object may have changed meanwhile), as NetBSD's
   fault handler refaults.
"""

from __future__ import annotations

from machine.kassert import kassert
from machine.uvm.anon import Anon
from machine.uvm.object import UvmObject
from machine.uvm.page import NIL, PageFlag
from machine.uvm.state import Uvm


async def anon_get(uvm: Uvm, anon: Anon) -> tuple[int, bool] | None:
    """uvmfault_anonget: the anon's page, resident and BUSY (module doc)."""
    if anon.page == NIL:
        kassert(uvm.swap is not None and anon.swslot, "uvmfault_anonget: anon %d lost", anon.id)
        pfn = await uvm.alloc_page_wait(anon=anon)
        uvm.swap_in(anon.swslot, pfn)
        uvm.pages.flags[pfn] &= ~PageFlag.FAKE
        return pfn, True
    pfn = anon.page
    if uvm.pages.flags[pfn] & PageFlag.BUSY:
        await uvm.wait_busy(pfn)
        return None
    uvm.busy(pfn)
    return pfn, False


async def obj_get(uvm: Uvm, obj: UvmObject, pgoff: int) -> tuple[int, bool] | None:
    """pgo_get: the object's page at pgoff, resident and BUSY (module doc).

    => the caller has checked pgoff < obj.npages. If the file shrank below pgoff
       while the allocation waited for memory (machine.uvm.setsize), the new page
       is dropped and None returned: the caller refaults and finds the end."""
    pages = uvm.pages
    pfn = obj.pages.get(pgoff, NIL)
    if pfn == NIL:
        pfn = await uvm.alloc_page_wait(obj=obj, pgoff=pgoff)
        if pgoff >= obj.npages:
            del obj.pages[pgoff]
            uvm.unbusy(pfn)  # still tabled: not freed by unbusy
            uvm.free_page(pfn)
            return None
        clean = obj.pgops.get(uvm, obj, pgoff, pfn)
        if not clean:
            pages.flags[pfn] &= ~PageFlag.CLEAN
        pages.flags[pfn] &= ~PageFlag.FAKE
        return pfn, clean
    if pages.flags[pfn] & PageFlag.BUSY:
        await uvm.wait_busy(pfn)
        return None
    uvm.busy(pfn)
    return pfn, False
