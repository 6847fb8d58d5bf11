"""The 1999 page daemon (uvm-semantics.md 7.1; NetBSD uvm_pdaemon.c 1.19, concepts only).

tune:   freemin = npages/20 clamped to [16 KiB, 256 KiB] of pages; freetarg =
        4/3 freemin (>= freemin + 1); wiredmax = npages/3; inactarg = (active +
        inactive)/3 (>= freetarg + 1), computed each pass.
scan:   if free < freetarg or inactive < inactarg:
  loop 1, the inactive queue, until free + paging >= 4 freetarg or 16 dirty
          reactivations: referenced -> reactivate; busy -> skip; ownerless
          checks (DIAGNOSTIC panics); clean -> revoke and free; dirty and swap
          all "only copy" -> reactivate (a dirty reactivation); dirty and swap
          fully allocated -> drop its slot; else page it out, swap-backed pages
          in clusters of 16.
  loop 2, the active queue from its head, while inactive_shortage > 0 or
          swap_shortage > 0: busy -> skip; (PD_WIRED_CHECK=skip_wired, Thorpe's
          diff) wired -> skip; swap shortage -> drop the slot; inactive shortage
          -> pmap_page_protect(NONE) and deactivate, with NO wire-count check:
          the code trusts "active => not wired" (the 1999 bug's step 3).
"""

from __future__ import annotations

from machine.kassert import kassert
from machine.pdaemon.policy import (
    CLUSTER,
    NUMDIRTYREACTS,
    Action,
    Bits,
    ScanResult,
    Snapshot,
    Targets,
)
from machine.profile import Settings
from machine.proto.pageinfo import PdOp
from machine.tuning import scan1999_targets


class Scan1999:
    walks_prefix = True  # walks its queues from the head only (machine.pdaemon.daemon)
    name = "scan1999"

    def tune(self, npages: int) -> Targets:
        return scan1999_targets(npages)

    def inactarg(self, snap: Snapshot, t: Targets) -> int:
        return max((snap.nactive + snap.ninactive) // 3, t.freetarg + 1)

    def needs_scan(self, snap: Snapshot, t: Targets) -> bool:
        return snap.free < t.freetarg or snap.ninactive < self.inactarg(snap, t)

    def scan(self, snap: Snapshot, referenced: Bits, t: Targets, settings: Settings) -> ScanResult:
        res = ScanResult()
        diagnostic = settings.diagnostic
        free, paging, freed, dirtyreacts = snap.free, snap.paging, 0, 0
        swap_full = snap.swpages > 0 and snap.swpginuse >= snap.swpages
        swap_only = snap.swpages > 0 and snap.swpgonly >= snap.swpages
        cluster, in_cluster = 0, 0
        for pg in snap.inactive:  # loop 1
            if free + paging >= 4 * t.freetarg or dirtyreacts == NUMDIRTYREACTS:
                break
            res.counters["pdscans"] = res.counters.get("pdscans", 0) + 1
            if referenced(pg.pfn):
                res.add(Action(PdOp.REACTIVATE, pg.pfn), "pdreact")
                continue
            if not pg.owned and diagnostic:
                kassert(pg.has_anon, "pagedaemon: page with no anon or object detected")
                kassert(pg.loan_count > 0, "pagedaemon: non-loaned ownerless page detected")
            if pg.busy:
                res.counters["pdbusy"] = res.counters.get("pdbusy", 0) + 1
                continue
            if pg.clean:
                res.add(Action(PdOp.FREE, pg.pfn, revoke=True), "pdfreed")
                free += 1
                freed += 1
                continue
            if pg.swap_backed and swap_only:
                res.add(Action(PdOp.REACTIVATE, pg.pfn), "pdreact")
                dirtyreacts += 1
                continue
            if pg.swap_backed and swap_full:
                if pg.swslot:
                    res.add(Action(PdOp.DROPSWAP, pg.pfn))
                continue
            if pg.swap_backed:
                if in_cluster == CLUSTER:
                    cluster, in_cluster = cluster + 1, 0
                in_cluster += 1
                res.add(Action(PdOp.PAGEOUT, pg.pfn, revoke=True, cluster=cluster), "pdpageouts")
            else:
                res.add(Action(PdOp.PAGEOUT, pg.pfn, revoke=True), "pdpageouts")
            paging += 1
        inactive_shortage = self.inactarg(snap, t) - snap.ninactive
        swap_shortage = 0
        if free < t.freetarg and swap_full and not swap_only and freed == 0:
            swap_shortage = t.freetarg - free
        skip_wired = settings.pd_wired_check == "skip_wired"
        for pg in snap.active:  # loop 2
            if inactive_shortage <= 0 and swap_shortage <= 0:
                break
            res.counters["pdscans"] = res.counters.get("pdscans", 0) + 1
            if pg.busy:
                continue
            if skip_wired and pg.wire_count > 0:
                continue  # Thorpe's diff
            if swap_shortage > 0 and pg.swslot:
                res.add(Action(PdOp.DROPSWAP, pg.pfn))
                swap_shortage -= 1
            if inactive_shortage > 0:
                # no need to check wire_count as the page is "active" (1999)
                res.add(Action(PdOp.DEACTIVATE, pg.pfn, revoke=True), "pddeact")
                inactive_shortage -= 1
        return res
