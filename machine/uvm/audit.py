"""The invariant auditor: uvm's own invariants, and uvm's agreement with the mmu.

audit() returns a list of problems (empty when all hold). It is run by the
`uvm.audit` message (tests, stress runs, the kernel debugger) and by the
model-based tests after every step. What it checks:

  * VmPages.check(): I1 (wired => unqueued), I2 (free pages are clean),
    I3 (allocated => owned or loaned), Q1 (queue counts and flags).
  * VmMap.check() for every space: M1 (sorted, aligned, disjoint), M2.
  * U1: every resident anon's page is owned by that anon (uanon, PG_ANON).
  * U2 conservation: free + resident anon pages == npages, and no frame is
    claimed by two anons.
  * U3 (uvm <-> mmu): every mapping the mmu holds for a user space points at
    the page of the anon at that address, with a protection no wider than
    the entry's.
"""

from __future__ import annotations

from machine.params import PAGE_SHIFT
from machine.uvm.page import PageFlag
from machine.uvm.vm import Uvm


async def audit(uvm: Uvm) -> list[str]:
    problems = uvm.pages.check()
    pages = uvm.pages
    owners: dict[int, str] = {}
    for asid, sp in uvm.spaces.items():
        problems += [f"asid {asid}: {p}" for p in sp.map.check()]
        for e in sp.map.entries:
            for vpn, anon in e.anons.items():
                if anon.page < 0:
                    continue
                where = f"asid {asid} va {vpn << PAGE_SHIFT:#x}"
                if anon.page in owners:
                    problems.append(
                        f"U2: frame {anon.page} held by {owners[anon.page]} and {where}"
                    )
                owners[anon.page] = where
                if pages.uanon[anon.page] != anon.id or not pages.flags[anon.page] & PageFlag.ANON:
                    problems.append(f"U1: {where}: page {anon.page} not owned by anon {anon.id}")
    if pages.free.count + len(owners) != pages.npages:
        problems.append(
            f"U2: conservation: {pages.free.count} free + {len(owners)} owned "
            f"!= {pages.npages} frames"
        )
    for asid, sp in uvm.spaces.items():
        for va, pfn, prot, _wired in await uvm.pmap.mappings(asid):
            entry = sp.map.lookup(va)
            found = entry.anons.get(va >> PAGE_SHIFT) if entry is not None else None
            if entry is None or found is None:
                problems.append(f"U3: asid {asid} maps {va:#x} -> {pfn} with no anon there")
            elif found.page != pfn:
                problems.append(f"U3: asid {asid} maps {va:#x} -> {pfn}, anon has {found.page}")
            elif prot & ~int(entry.prot):
                problems.append(f"U3: asid {asid} {va:#x} mapped wider than its entry")
    return problems
