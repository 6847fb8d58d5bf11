"""The page daemon's pass: snapshot, scan with the policy, claim, revoke, finish.

One pass (uvmpd_scan, in a separate process):
  1. snapshot the queues from uvm (a view that is stale as soon as it arrives);
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
A pass sends a fixed number of messages whatever the number of pages: one
snapshot, pmap.attrs and pmap.page_protect per PFN_BATCH frames (one
page_protect per kind of action), one claim, one finish. PageInfo rows are
frozen, so the same (pfn, bits) row is built once and shared across passes.
"""

from __future__ import annotations

from typing import Any, Protocol

from machine.pdaemon.policy import PageInfo, PagePolicy, Snapshot
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


def to_snapshot(d: dict[str, Any]) -> Snapshot:
    return Snapshot(
        active=[_info(r) for r in d["active"]],
        inactive=[_info(r) for r in d["inactive"]],
        free=d["free"],
        npages=d["npages"],
        paging=d["paging"],
        swpages=d["swpages"],
        swpginuse=d["swpginuse"],
        swpgonly=d["swpgonly"],
    )


async def run_pass(ops: DaemonOps, policy: PagePolicy, settings: Settings) -> dict[str, int]:
    """One scan. => counters of what was done (empty when no scan was needed)."""
    snap = to_snapshot(await ops.snapshot(PD_SCAN_LIMIT))
    t = policy.tune(snap.npages)
    if not policy.needs_scan(snap, t):
        return {}
    inactive = [pg.pfn for pg in snap.inactive]
    ref = (
        dict(zip(inactive, await ops.attrs(inactive, False, False), strict=True))
        if inactive
        else {}
    )
    res = policy.scan(snap, lambda pfn: bool(ref.get(pfn, 0) & REFERENCED), t, settings)
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
