"""The page daemon's pass: snapshot, scan with the policy, claim, revoke, finish.

One pass (uvmpd_scan, in a separate process):
  1. snapshot the queues from uvm (a view that is stale as soon as it arrives):
     the first PD_PREFIX pages of each and the queues' lengths; when the policy
     walks past the end of a prefix, a second snapshot of the whole queues (up
     to PD_SCAN_LIMIT) and the policy runs again on it, so a decision is always
     the one the whole queues would give (a policy not marked `walks_prefix`,
     e.g. a user's own, always gets the whole queues);
  2. read the referenced bits of the inactive pages from the mmu (one batch);
  3. let the policy decide (machine.pdaemon.scan1999 or .clock);
  4. claim the pages through uvm, which re-checks each under the profile's
     rules and marks it BUSY, or refuses;
  5. revoke the claimed pages' mappings where the policy asks
     (pmap_page_protect NONE, one batch) and clear the referenced bits of
     the pages being deactivated (one batch);
  6. have uvm finish: reactivate, deactivate, free, page out, drop swap.
It talks to uvm and the mmu through DaemonOps, so the same pass runs over
the kernel bus or, in tests, straight against an in-process uvm. The snapshot
rows' bits, the R/M bits and the operations' names are machine.proto.pageinfo's.

When a pass runs (hysteresis, as NetBSD's): the first pass of a wakeup scans
when the policy needs it (uvm_pageout: free < freetarg or inactive < inactarg,
policy.needs_scan); a following pass of the same wakeup runs only while
uvm_kick_pdaemon would have kicked the daemon again (`kicked`: free + paging <
freemin, or < freetarg with inactive < inactarg). So one pass frees up to
4 freetarg and the daemon then sleeps while free drifts down to freemin,
instead of one pass per page allocated.
A pass sends a fixed number of messages whatever the number of pages: one
snapshot (two when the policy walked past a prefix), pmap.attrs and
pmap.page_protect per PFN_BATCH frames (one page_protect per kind of action),
one claim, one finish. PageInfo rows are
frozen, so the same (pfn, bits) row is built once and shared across passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from machine.pdaemon.policy import PageInfo, PagePolicy, ScanResult, Snapshot, Targets
from machine.profile import Settings
from machine.proto.pageinfo import (
    BUSY,
    CLEAN,
    HAS_ANON,
    LOANED,
    OWNED,
    PD_SCAN_LIMIT,
    REFERENCED,
    SWAP_BACKED,
    SWSLOT,
    WIRED,
    PdOp,
)

PD_PREFIX = 512  # pages of each queue a pass asks for first (policies that walk_prefix)


class DaemonOps(Protocol):
    async def snapshot(self, limit: int) -> dict[str, Any]: ...

    async def claim(self, items: list[tuple[str, int]]) -> list[int]: ...

    async def finish(self, items: list[tuple[str, int]]) -> dict[str, int]: ...

    async def attrs(self, pfns: list[int], clear_ref: bool, clear_mod: bool) -> list[int]: ...

    async def page_protect(self, pfns: list[int], prot: int, why: str = "") -> int: ...


_INFOS: dict[tuple[int, int], PageInfo] = {}  # (pfn, bits) -> its (immutable) PageInfo
_INFOS_MAX = 1 << 16


def _info(row: list[int]) -> PageInfo:
    key = (row[0], row[1])
    info = _INFOS.get(key)
    if info is None:
        if len(_INFOS) >= _INFOS_MAX:
            _INFOS.clear()
        info = _INFOS[key] = _new_info(*key)
    return info


def _new_info(pfn: int, b: int) -> PageInfo:
    return PageInfo(
        pfn,
        swap_backed=bool(b & SWAP_BACKED),
        clean=bool(b & CLEAN),
        busy=bool(b & BUSY),
        wire_count=int(bool(b & WIRED)),
        loan_count=int(bool(b & LOANED)),
        owned=bool(b & OWNED),
        has_anon=bool(b & HAS_ANON),
        swslot=bool(b & SWSLOT),
    )


class _Prefix(list[PageInfo]):
    """The first rows of a queue of `total` pages; `walked_off` is set when a policy
    iterates to its end while the queue goes on."""

    def __init__(self, rows: list[PageInfo], total: int) -> None:
        super().__init__(rows)
        self.total = total
        self.walked_off = False

    def __iter__(self) -> Iterator[PageInfo]:
        yield from super().__iter__()
        self.walked_off = self.walked_off or len(self) < self.total


def to_snapshot(d: dict[str, Any]) -> Snapshot:
    nact = d.get("nactive", -1)
    ninact = d.get("ninactive", -1)
    active = [_info(r) for r in d["active"]]
    inactive = [_info(r) for r in d["inactive"]]
    return Snapshot(
        active=_Prefix(active, nact) if nact > len(active) else active,
        inactive=_Prefix(inactive, ninact) if ninact > len(inactive) else inactive,
        nactive=nact,
        ninactive=ninact,
        free=d["free"],
        npages=d["npages"],
        paging=d["paging"],
        swpages=d["swpages"],
        swpginuse=d["swpginuse"],
        swpgonly=d["swpgonly"],
    )


def kicked(policy: PagePolicy, snap: Snapshot, t: Targets) -> bool:
    """Would an allocation kick the daemon now? uvm_kick_pdaemon (modern; uvm_pagealloc's
    test in 1999): free + paging < freemin, or < freetarg while inactive < inactarg."""
    low = snap.free + snap.paging
    return low < t.freemin or (low < t.freetarg and snap.ninactive < policy.inactarg(snap, t))


async def _decide(
    ops: DaemonOps, policy: PagePolicy, snap: Snapshot, t: Targets, settings: Settings, last: bool
) -> ScanResult | None:
    """The policy's decisions on snap, with the inactive pages' referenced bits (one batch).
    => None when the policy walked past the end of a queue's prefix, unless `last`."""
    inactive = [pg.pfn for pg in snap.inactive]
    bits = await ops.attrs(inactive, False, False) if inactive else []
    ref = {pfn for pfn, b in zip(inactive, bits, strict=True) if b & REFERENCED}
    res = policy.scan(snap, ref.__contains__, t, settings)
    for q in (snap.active, snap.inactive):
        if isinstance(q, _Prefix) and q.walked_off and not last:
            return None
    return res


async def run_pass(
    ops: DaemonOps, policy: PagePolicy, settings: Settings, *, again: bool = False
) -> dict[str, int]:
    """One scan. again: a following pass of the same wakeup, which runs only while
    `kicked`. => counters of what was done (empty when no scan was needed)."""
    prefix = getattr(policy, "walks_prefix", False)
    snap = to_snapshot(await ops.snapshot(PD_PREFIX if prefix else PD_SCAN_LIMIT))
    t = policy.tune(snap.npages)
    if not policy.needs_scan(snap, t) or (again and not kicked(policy, snap, t)):
        return {}
    res = await _decide(ops, policy, snap, t, settings, last=not prefix)
    while res is None:  # the policy went past a prefix: decide on the whole queues
        snap = to_snapshot(await ops.snapshot(PD_SCAN_LIMIT))
        res = await _decide(ops, policy, snap, t, settings, last=True)
    wanted = [(a.op.value, a.pfn) for a in res.actions]
    claimed = set(await ops.claim(wanted))
    items: list[tuple[str, int]] = []
    for op, pfn in wanted:
        if pfn in claimed:
            items.append((op, pfn))
            claimed.discard(pfn)  # one action per page per pass
    revoke = {a.pfn for a in res.actions if a.revoke} & {pfn for _, pfn in items}
    # one batch per kind, named for the evidence
    for op in (PdOp.DEACTIVATE, PdOp.FREE, PdOp.PAGEOUT):
        batch = sorted(pfn for o, pfn in items if o == op and pfn in revoke)
        if batch:
            await ops.page_protect(batch, 0, f"page daemon ({policy.name}): {op}")
    deact = [pfn for op, pfn in items if op == PdOp.DEACTIVATE]
    if deact:
        await ops.attrs(deact, True, False)
    done = await ops.finish(items)
    names: dict[str, str] = {
        PdOp.REACTIVATE: "pdreact",
        PdOp.DEACTIVATE: "pddeact",
        PdOp.FREE: "pdfreed",
        PdOp.PAGEOUT: "pdpageouts",
    }
    out = {names[k]: v for k, v in done.items() if k in names}
    out["pdscans"] = res.counters.get("pdscans", 0)  # pages examined
    out["pdrevs"] = 1  # passes
    out["pdbusy"] = len(wanted) - len(items)
    return out
