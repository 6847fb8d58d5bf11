"""The pmap's audit: its invariants (machine.mmu.pmap P1-P3) and the shared table's K1.

check_pmaps(mmu) reads everything and changes nothing; it is run after every model
step and by pmap.check. K1 (machine.kpt): a page of the loan KVA window has a
translation in the shared kernel page table exactly when the kernel pmap maps it, to
the same frame.
"""

from __future__ import annotations

from typing import Any, Protocol

from machine.kpt import BASE_VPN, KPT_PAGES, KernelPageTable
from machine.params import KERNEL_ASID, PAGE_SHIFT
from machine.proto.types import Prot


class Mmu(Protocol):
    """What the audit reads of machine.mmu.pmap.Mmu (named here: no import circle)."""

    nframes: int
    pmaps: dict[int, Any]
    pv: dict[int, set[tuple[int, int]]]
    kpt: KernelPageTable | None


def check_pmaps(mmu: Mmu) -> list[str]:
    """=> the problems found (empty when consistent)."""
    problems: list[str] = []
    for asid, pm in mmu.pmaps.items():
        wired = 0
        for vpn, pte in pm.ptes.items():
            if not 0 <= pte.pfn < mmu.nframes:
                problems.append(f"P2: asid {asid} va {vpn << PAGE_SHIFT:#x} pfn {pte.pfn}")
            if pte.prot == Prot.NONE:
                problems.append(f"P2: asid {asid} va {vpn << PAGE_SHIFT:#x} has prot NONE")
            wired += pte.wired
            if pte.managed:
                if (asid, vpn) not in mmu.pv.get(pte.pfn, ()):
                    problems.append(f"P1: asid {asid} va {vpn << PAGE_SHIFT:#x} not in pv")
            elif asid != KERNEL_ASID:
                problems.append(f"P3: unmanaged mapping in asid {asid}")
        if wired != pm.wired_count:
            problems.append(f"asid {asid}: wired_count {pm.wired_count} != {wired}")
    for pfn, s in mmu.pv.items():
        for asid, vpn in s:
            owner = mmu.pmaps.get(asid)
            found = owner.ptes.get(vpn) if owner is not None else None
            if found is None or found.pfn != pfn or not found.managed:
                problems.append(f"P1: pv of {pfn} names ({asid}, {vpn << PAGE_SHIFT:#x})")
    return problems + check_kpt(mmu)


def check_kpt(mmu: Mmu) -> list[str]:
    """K1: the shared table holds exactly the kernel pmap's mappings of the window."""
    kpt = mmu.kpt
    if kpt is None:
        return []
    problems: list[str] = []
    ptes = mmu.pmaps[KERNEL_ASID].ptes
    want = {v: p.pfn for v, p in ptes.items() if 0 <= v - BASE_VPN < KPT_PAGES}
    for vpn, pfn in want.items():
        if kpt.lookup(vpn) != pfn:
            problems.append(f"K1: kernel va {vpn << PAGE_SHIFT:#x} -> {pfn}, table says "
                            f"{kpt.lookup(vpn)}")  # fmt: skip
    for vpn in kpt.written - want.keys():  # what this writer left in the table
        problems.append(f"K1: kernel va {vpn << PAGE_SHIFT:#x} unmapped, table says "
                        f"{kpt.lookup(vpn)}")  # fmt: skip
    return problems
