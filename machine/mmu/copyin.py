"""copyin(9)'s translation on the mmu's side: pmap.uhold (see machine.mmu.hold).

Invariants: a range is held all or nothing (a Fault holds nothing); only the
owner's session may hold frames of a user space (EPERM otherwise, and always for
the kernel's); every frame held is marked referenced, as a load would.
"""

from __future__ import annotations

from machine.mmu.pmap import Fault, Mmu
from machine.params import KERNEL_ASID, PAGE_SHIFT
from machine.proto import Errno, UserError
from machine.proto.pageinfo import REFERENCED
from machine.proto.types import Prot

_READ = int(Prot.READ)


def uhold(mmu: Mmu, asid: int, owner: int, va: int, npages: int) -> tuple[int, list[int]] | Fault:
    """copyin's translation: hold the frames of [va, va + npages pages) of asid (owned by
    session owner). => (hold, pfns); the Fault at the first page without a readable
    translation (nothing held); EPERM for the kernel's or another session's space.
    Like a load, every frame held is marked referenced."""
    pm = mmu._pmap(asid)
    if asid == KERNEL_ASID or pm.owner != owner:
        raise UserError(Errno.EPERM, f"address space {asid} belongs to another client")
    ptes = pm.ptes
    first = va >> PAGE_SHIFT
    pfns = []
    for vpn in range(first, first + npages):
        pte = ptes.get(vpn)
        if pte is None or not pte.prot & _READ:  # plain ints (an IntFlag & is slow)
            mmu.stats.traps += 1
            why = "no translation" if pte is None else "protection"
            return Fault(vpn << PAGE_SHIFT, Prot.READ, why)
        pfns.append(pte.pfn)
    attrs = mmu.attrs
    for vpn in range(first, first + npages):
        pte = ptes[vpn]
        if pte.managed:
            attrs[pte.pfn] |= REFERENCED
    mmu.stats.loads += 1
    return mmu.holds.hold(pfns), pfns
