"""A page-daemon policy of your own: FIFO, the clock without its second chance.

The clock (machine/pdaemon/clock.py) scans the inactive queue from its head and gives a
page whose reference bit is set a second chance: it goes back to the active queue. FIFO
takes the head of the inactive queue whether it was referenced or not, so a page in
constant use is paged out as soon as it reaches the head, and faulted straight back in.
Everything else is the clock's: the same targets, the same balancing of the active queue.

Invariants (every policy's, machine/pdaemon/policy.py): pure (it only returns wants; the
daemon claims each page through uvm, which re-checks it); never a wired or busy page; at
most 4 freetarg freed or paging per pass.

Use it with a profile whose PD_POLICY is "python:fifo:Fifo" (fifo.toml beside this file),
with this directory on the import path of the machine's processes:

    PYTHONPATH=examples/policies uvm-machine up --profile examples/policies/fifo.toml
"""

from __future__ import annotations

from machine.pdaemon.policy import CLUSTER, Action, Bits, ScanResult, Snapshot, Targets
from machine.profile import Settings
from machine.proto.pageinfo import PdOp
from machine.tuning import clock_targets


class Fifo:
    """First in, first out over the inactive queue."""

    name = "fifo"
    walks_prefix = True  # walks its queues from the head only: a prefix of each suffices

    def tune(self, npages: int) -> Targets:
        return clock_targets(npages)  # freemin, freetarg: the clock's

    def inactarg(self, snap: Snapshot, t: Targets) -> int:
        return max((snap.nactive + snap.ninactive) // 3, t.freetarg + 1)

    def needs_scan(self, snap: Snapshot, t: Targets) -> bool:
        return snap.free < t.freetarg or snap.ninactive < self.inactarg(snap, t)

    def scan(self, snap: Snapshot, referenced: Bits, t: Targets, settings: Settings) -> ScanResult:
        res = ScanResult()
        free, paging = snap.free, snap.paging
        swap_full = snap.swpages > 0 and snap.swpginuse >= snap.swpages
        cluster, in_cluster = 0, 0
        for pg in snap.inactive:
            if free + paging >= 4 * t.freetarg:
                break
            res.counters["pdscans"] = res.counters.get("pdscans", 0) + 1
            # the clock asks `referenced(pg.pfn)` here and reactivates; FIFO does not ask
            if pg.wire_count or pg.busy or (pg.swap_backed and not pg.clean and swap_full):
                continue
            if pg.clean:
                res.add(Action(PdOp.FREE, pg.pfn, revoke=True), "pdfreed")
                free += 1
                continue
            if pg.swap_backed:  # dirty anonymous memory: to swap, in clusters
                if in_cluster == CLUSTER:
                    cluster, in_cluster = cluster + 1, 0
                in_cluster += 1
                res.add(Action(PdOp.PAGEOUT, pg.pfn, revoke=True, cluster=cluster), "pdpageouts")
            else:  # a dirty file page: written back to its file
                res.add(Action(PdOp.PAGEOUT, pg.pfn, revoke=True), "pdpageouts")
            paging += 1
        shortage = self.inactarg(snap, t) - snap.ninactive
        for pg in snap.active:  # keep the inactive queue at its target, oldest first
            if shortage <= 0:
                break
            if pg.busy or pg.wire_count:
                continue
            res.add(Action(PdOp.DEACTIVATE, pg.pfn), "pddeact")
            shortage -= 1
        return res
