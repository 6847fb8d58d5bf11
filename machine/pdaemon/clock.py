"""Today's clock policy (uvm-semantics.md 7.3; NetBSD uvm_pdpolicy_clock.c, concepts only).

tune:   freemin = npages/200 clamped to [128 KiB, 1 MiB] of pages (one CPU),
        freetarg = 4/3 freemin; inactarg = 33 % of active + inactive (>=
        freetarg + 1).
scan:   the inactive queue, until free + paging >= 4 freetarg or 16 dirty
        reactivations: referenced -> reactivate; wired or busy -> skip (a
        victim must be unwired); clean -> free; dirty file page -> pgo_put
        (clean and free); dirty swap-backed page -> swap full: reactivate,
        else page out in clusters. Then balance: walk the active queue while
        there is an inactive or swap shortage; deactivation only clears the
        reference bit (no pmap_page_protect).
"""

from __future__ import annotations

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
from machine.tuning import clock_targets

INACTIVEPCT = 33


class ClockPolicy:
    """The clock page-replacement policy (PD_POLICY "clock"). Not a time source: that is
    machine.ipc.transport.Clock."""

    walks_prefix = True  # walks its queues from the head only (machine.pdaemon.daemon)
    name = "clock"

    def tune(self, npages: int) -> Targets:
        return clock_targets(npages)

    def inactarg(self, snap: Snapshot, t: Targets) -> int:
        return max((snap.nactive + snap.ninactive) * INACTIVEPCT // 100, t.freetarg + 1)

    def needs_scan(self, snap: Snapshot, t: Targets) -> bool:
        return snap.free < t.freetarg or snap.ninactive < self.inactarg(snap, t)

    def scan(self, snap: Snapshot, referenced: Bits, t: Targets, settings: Settings) -> ScanResult:
        res = ScanResult()
        free, paging, dirtyreacts = snap.free, snap.paging, 0
        swap_full = snap.swpages > 0 and snap.swpginuse >= snap.swpages
        cluster, in_cluster = 0, 0
        for pg in snap.inactive:
            if free + paging >= 4 * t.freetarg or dirtyreacts == NUMDIRTYREACTS:
                break
            res.counters["pdscans"] = res.counters.get("pdscans", 0) + 1
            if referenced(pg.pfn):
                res.add(Action(PdOp.REACTIVATE, pg.pfn), "pdreact")
                continue
            if pg.wire_count or pg.busy:
                continue
            if pg.clean:
                res.add(Action(PdOp.FREE, pg.pfn, revoke=True), "pdfreed")
                free += 1
                continue
            if not pg.swap_backed:
                res.add(Action(PdOp.PAGEOUT, pg.pfn, revoke=True), "pdpageouts")
                paging += 1
                continue
            if swap_full:
                res.add(Action(PdOp.REACTIVATE, pg.pfn), "pdreact")
                dirtyreacts += 1
                continue
            if in_cluster == CLUSTER:
                cluster, in_cluster = cluster + 1, 0
            in_cluster += 1
            res.add(Action(PdOp.PAGEOUT, pg.pfn, revoke=True, cluster=cluster), "pdpageouts")
            paging += 1
        inactive_shortage = self.inactarg(snap, t) - snap.ninactive
        swap_shortage = t.freetarg - free if free < t.freetarg and swap_full else 0
        for pg in snap.active:  # uvmpdpol_balancequeue
            if inactive_shortage <= 0 and swap_shortage <= 0:
                break
            res.counters["pdscans"] = res.counters.get("pdscans", 0) + 1
            if pg.busy or pg.wire_count:
                continue
            if swap_shortage > 0 and pg.swslot:
                res.add(Action(PdOp.DROPSWAP, pg.pfn))
                swap_shortage -= 1
            if inactive_shortage > 0:
                res.add(Action(PdOp.DEACTIVATE, pg.pfn, revoke=False), "pddeact")
                inactive_shortage -= 1
        return res
