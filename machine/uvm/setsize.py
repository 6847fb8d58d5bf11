"""uvm_vnp_setsize: a vnode object's file changes size (ftruncate, open's O_TRUNC).

    setsize(obj, length)   under obj.sizelock, one size change at a time:
      shrink:  1. the host file is truncated and the object's size set, at once
                  (nothing awaits between): from here a fault beyond the end is
                  SIGBUS, a loan EFAULT, the fault-ahead skips it, and the pager
                  never writes past the end (VnodeFile.put);
               2. every page wholly beyond the new end leaves the object and every
                  mapping (uvn_put(PGO_FREE) from round_page(length)): a BUSY one
                  is waited for first (a fault or the pager at work: it finishes,
                  then the scan starts over), the rest are made BUSY, revoked
                  (pmap_page_protect NONE, through uvm.revoke, so PPP_WIRED=panic
                  applies) and freed (uvm_pagefree: a wired one loses its wiring,
                  as NetBSD's genfs_do_putpages frees wired pages too; a loaned one
                  is only disowned: an orphan its loans keep, with the bytes the
                  kernel borrowed);
               3. the last partial page, if resident, reads zeros past the end
                  (ufs_truncate's zeroing of the block's tail): a page loaned to
                  the kernel is first replaced by a copy (uvm_loanbreak), so the
                  loan keeps the bytes it lent; the zeros never reach the file
                  (it ends there).
      grow:    the old last page's bytes past the old end are zeroed the same way
               (a store through a mapping may have left some), then the host file
               grows: what grows reads zeros.
A fault that waited for memory while the file shrank finds its new page beyond the
end (machine.uvm.resident.obj_get drops it) and refaults: SIGBUS.
Private copies (anons) of pages beyond the end are the process's own and stay.

What each profile does with a page loaned to the kernel (a send in flight) that a
truncation takes away: modern and 2002 (unmanaged kenter) revoke only the user
mappings; the page becomes an orphan, the wire gets the bytes of send time, and the
last unloan frees it. 1999 on a managed-kenter port (bug1999, thorpe) is NetBSD 1.4's
uvn_flush(PGO_FREE): pmap_page_protect(NONE) on every page, which there also removes
the kernel's loan mapping (a pv entry like any other), so the driver's later read
faults in KVA that has no object: the panic of uvm-semantics section 1.3, step 4 by
a fourth path (Thorpe's diff only guards the page daemon). silvers (PPP_WIRED=panic)
panics at the revocation of the wired (loaned) page.
cf. NetBSD sys/uvm/uvm_vnode.c (uvm_vnp_setsize), miscfs/genfs/genfs_io.c
(genfs_do_putpages with PGO_FREE), ufs/ufs/ufs_inode.c (concepts only).
"""

from __future__ import annotations

from machine.params import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from machine.proto import UserError
from machine.uvm.loan import break_obj_loan
from machine.uvm.object import VnodeObject
from machine.uvm.page import NIL, PageFlag
from machine.uvm.pager import busy_and_revoke, free_tabled
from machine.uvm.state import Uvm
from machine.uvm.vnode import VnodeError


async def setsize(uvm: Uvm, obj: VnodeObject, length: int) -> None:
    """The file of obj is now `length` bytes (see the module doc).

    => UserError with the host's errno (EIO) when the host file cannot be resized:
       nothing changed; ENOMEM when a loaned last page cannot be copied (the size has
       changed, the tail is not zeroed)."""
    f = obj.file
    assert f is not None
    async with obj.sizelock:
        old = f.size
        if length == old:
            return
        if length > old:
            await _zero_tail(uvm, obj, old)
            _resize(obj, length)
        else:
            _resize(obj, length)
            await _free_beyond(uvm, obj, (length + PAGE_SIZE - 1) >> PAGE_SHIFT)
            await _zero_tail(uvm, obj, length)
        uvm.stats.truncations += 1


def _resize(obj: VnodeObject, length: int) -> None:
    assert obj.file is not None
    try:
        obj.file.resize(length)
    except VnodeError as e:
        raise UserError(e.errno, e.detail) from None


async def _free_beyond(uvm: Uvm, obj: VnodeObject, first: int) -> None:
    """uvn_put(PGO_FREE) of every page at or beyond page offset `first`."""
    pages = uvm.pages
    while obj.refs:  # the last close frees every page itself
        doomed = sorted((pg, pfn) for pg, pfn in obj.pages.items() if pg >= first)
        if not doomed:
            return
        busy = next((pfn for _, pfn in doomed if pages.flags[pfn] & PageFlag.BUSY), NIL)
        if busy != NIL:
            await uvm.wait_busy(busy)  # a fault or the pager at work: start over after
            continue
        pfns = [pfn for _, pfn in doomed]
        await busy_and_revoke(uvm, pfns, f"truncation of {obj.name!r} to {first} pages")
        free_tabled(uvm, obj, doomed)  # their waiters refault: SIGBUS
        uvm.stats.truncpages += len(doomed)
        return


async def _zero_tail(uvm: Uvm, obj: VnodeObject, size: int) -> None:
    """Zero the bytes past `size` of the page that holds the file's end, if resident."""
    off = size & PAGE_MASK
    if not off:
        return
    pg = size >> PAGE_SHIFT
    pages = uvm.pages
    zeros = bytes(PAGE_SIZE - off)
    while obj.refs:
        pfn = obj.pages.get(pg, NIL)
        if pfn == NIL:
            return
        if pages.flags[pfn] & PageFlag.BUSY:
            await uvm.wait_busy(pfn)
            continue
        if bytes(uvm.ram.frame(pfn)[off:]) == zeros:
            return  # nothing to zero: a loan need not be broken
        uvm.busy(pfn)
        if pages.loan_count[pfn]:
            # The kernel borrows these bytes: the object gets a copy (uvm_loanbreak);
            # the old page stays an orphan for its loans, unchanged.
            pfn = await break_obj_loan(uvm, obj, pg, pfn, "ftruncate zeroes the last page's tail")
            pages.activate(pfn)
            uvm.stats.truncloanbreaks += 1
        uvm.ram.frame(pfn)[off:] = zeros
        uvm.unbusy(pfn)
        return
