"""uvm's side of the page daemon: the snapshot it scans, the claim that re-checks, and
the finish that carries its decisions out.

The daemon runs in its own process, so everything it knows is a snapshot and
a little stale. Before it acts on a page it claims it: uvm re-checks the
page's current state under the profile's rules and marks it BUSY, or refuses
(the page moved, was freed, is busy, or the rules forbid the action). Only
claimed pages are then revoked at the mmu by the daemon and finished here;
finish unbusies every page it was given, and a page its owner freed in the
meantime (PG_RELEASED) is freed then. Finish first does the I/O of all its
pageouts, clustered (machine.uvm.cluster: contiguous swap slots per cluster,
one pwrite per run), then the per-page bookkeeping in the policy's order, so
the queues change exactly as page-by-page pageouts would change them; last it
wakes uvm_wait sleepers (wakeup(&uvmexp.free)).

Claim rules (the concurrency the project exists to show):
  * FREE / PAGEOUT: on the inactive queue, not wired (a wired page never
    leaves RAM), owned.
  * DEACTIVATE: on the active queue. Unless the era's claim re-checks wiring
    (rules.claim_rechecks_wiring, modern), it trusts "active => not wired" and
    lets a wired page through (1999 and 2002: the thread's bug, reachable when
    the queue invariant is broken).
  * REACTIVATE: on the inactive queue. DROPSWAP: any queued page.

Snapshot wire format: up to `limit` rows of each queue from its head (the daemon asks
for a prefix) and each queue's length; per page [pfn, bits], the bits of machine.proto.pageinfo
(SWAP_BACKED | CLEAN | BUSY | WIRED | LOANED | OWNED | HAS_ANON | SWSLOT); operations
are its PdOp.
"""

from __future__ import annotations

from typing import Any

from machine.proto import UserError
from machine.proto.pageinfo import (
    BUSY,
    CLEAN,
    HAS_ANON,
    LOANED,
    MODIFIED,
    OWNED,
    SWAP_BACKED,
    SWSLOT,
    WIRED,
    PdOp,
)
from machine.uvm.cluster import pageout_io
from machine.uvm.object import AObj
from machine.uvm.page import NIL, PQ, PageFlag
from machine.uvm.pager import evict
from machine.uvm.state import Uvm


def _bits(uvm: Uvm, pfn: int) -> int:
    p = uvm.pages
    f = p.flags[pfn]
    b = 0
    anon = uvm.anons.get(p.uanon[pfn]) if p.uanon[pfn] != NIL else None
    obj = uvm.objects.get(p.uobject[pfn]) if p.uobject[pfn] != NIL else None
    if f & PageFlag.ANON or isinstance(obj, AObj):
        b |= SWAP_BACKED
    if f & PageFlag.CLEAN:
        b |= CLEAN
    if f & PageFlag.BUSY:
        b |= BUSY
    if p.wire_count[pfn]:
        b |= WIRED
    if p.loan_count[pfn]:
        b |= LOANED
    if f & (PageFlag.ANON | PageFlag.TABLED):
        b |= OWNED
    if anon is not None:
        b |= HAS_ANON
    if (anon is not None and anon.swslot) or (
        isinstance(obj, AObj) and int(p.offset[pfn]) in obj.swslots
    ):
        b |= SWSLOT
    return b


def snapshot(uvm: Uvm, limit: int) -> dict[str, Any]:
    """The queues as the daemon sees them: up to `limit` pages of each, from the head, and
    their lengths (nactive, ninactive)."""
    p = uvm.pages
    out: dict[str, Any] = {"free": p.free.count, "npages": p.npages, "paging": 0}
    out |= {"nactive": p.active.count, "ninactive": p.inactive.count}
    for name, q in (("inactive", p.inactive), ("active", p.active)):
        rows: list[list[int]] = []
        pfn = q.head
        while pfn != NIL and len(rows) < limit:
            rows.append([pfn, _bits(uvm, pfn)])
            pfn = p.nxt[pfn]
        out[name] = rows
    sw = uvm.swap
    out |= {
        "swpages": sw.swpages if sw else 0,
        "swpginuse": sw.swpginuse if sw else 0,
        "swpgonly": sw.swpgonly if sw else 0,
    }
    return out


def claim(uvm: Uvm, items: list[tuple[str, int]]) -> list[int]:
    """Re-check each (op, pfn) against the page's state now, under the era's rules
    (rules.claim_rechecks_wiring); mark the accepted BUSY."""
    p = uvm.pages
    claimed: list[int] = []
    seen: set[int] = set()
    for op, pfn in items:
        if pfn in seen or not 0 <= pfn < p.npages:
            continue
        q, f, wired = p.pqflags[pfn], p.flags[pfn], p.wire_count[pfn]
        if f & PageFlag.BUSY or q not in (PQ.ACTIVE, PQ.INACTIVE):
            continue
        if op in (PdOp.FREE, PdOp.PAGEOUT):
            ok = q == PQ.INACTIVE and not wired and bool(f & (PageFlag.ANON | PageFlag.TABLED))
        elif op == PdOp.DEACTIVATE:
            ok = q == PQ.ACTIVE and (not wired or not uvm.rules.claim_rechecks_wiring)
        elif op == PdOp.REACTIVATE:
            ok = q == PQ.INACTIVE
        else:
            ok = op == PdOp.DROPSWAP
        if ok:
            uvm.busy(pfn)
            claimed.append(pfn)
            seen.add(pfn)
    return claimed


async def finish(uvm: Uvm, items: list[tuple[str, int]]) -> dict[str, int]:
    """Carry out claimed actions (their pages were revoked by the daemon where needed)."""
    p = uvm.pages
    done: dict[str, int] = {}
    evictees = [pfn for op, pfn in items if op in (PdOp.FREE, PdOp.PAGEOUT)]
    mods: dict[int, int] = {}
    if evictees:
        bits = await uvm.pmap.attrs(evictees, True, True)
        mods = dict(zip(evictees, bits, strict=True))
    written = pageout_io(uvm, items, mods)  # clustered: one pwrite per run
    for op, pfn in items:
        if not p.flags[pfn] & PageFlag.BUSY:
            continue  # not claimed
        released = p.flags[pfn] & PageFlag.RELEASED
        uvm.unbusy(pfn)
        if released:
            continue  # its owner freed it meanwhile
        if op == PdOp.REACTIVATE:
            p.activate(pfn)
        elif op == PdOp.DEACTIVATE:
            p.deactivate(pfn)  # DIAGNOSTIC: panics on a wired page
        elif op == PdOp.DROPSWAP:
            _dropswap(uvm, pfn)
        else:
            dirty = bool(mods.get(pfn, 0) & MODIFIED) or not p.flags[pfn] & PageFlag.CLEAN
            dirty = dirty and pfn not in written
            try:
                evict(uvm, pfn, dirty)
            except UserError:
                p.activate(pfn)  # swap full: keep it
                op = PdOp.REACTIVATE
        done[op] = done.get(op, 0) + 1
    uvm.wakeup_free()
    return done


def _dropswap(uvm: Uvm, pfn: int) -> None:
    p = uvm.pages
    anon = uvm.anons.get(p.uanon[pfn]) if p.flags[pfn] & PageFlag.ANON else None
    if anon is not None and anon.swslot:
        uvm.swap_free(anon.swslot)
        anon.swslot = 0
        p.flags[pfn] &= ~PageFlag.CLEAN
    obj = uvm.objects.get(p.uobject[pfn]) if p.uobject[pfn] != NIL else None
    if isinstance(obj, AObj):
        slot = obj.swslots.pop(int(p.offset[pfn]), 0)
        if slot:
            uvm.swap_free(slot)
            p.flags[pfn] &= ~PageFlag.CLEAN
