"""When the daemon scans: NetBSD's hysteresis (uvm_pageout's needsscan for the first pass of
a wakeup, uvm_kick_pdaemon's test for the following ones), so one pass frees many pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from machine.ipc.inmemory import run_simulation
from machine.mmu.pmap import Mmu
from machine.params import PAGE_SIZE
from machine.pdaemon import daemon
from machine.pdaemon.clock import ClockPolicy
from machine.pdaemon.daemon import kicked, run_pass
from machine.pdaemon.policy import PageInfo, Snapshot
from machine.pdaemon.scan1999 import Scan1999
from machine.proto.pageinfo import PD_SCAN_LIMIT
from machine.testing import SimMachine
from machine.uvm import pdops
from machine.uvm.audit import audit
from machine.uvm.state import Uvm
from tests.scenarios.test_pdaemon_scenarios import _squeeze, _unsqueeze
from tests.unit.pdaemon.test_daemon_pass import LocalOps, _fill
from tests.unit.uvm.localpmap import make_uvm, settings_of

MIB = 1 << 20


def _snap(free: int, active: int, inactive: int) -> Snapshot:
    return Snapshot(
        active=[PageInfo(i) for i in range(active)],
        inactive=[PageInfo(active + i) for i in range(inactive)],
        free=free,
        npages=1024,
    )


@pytest.mark.parametrize("policy", [ClockPolicy(), Scan1999()], ids=lambda p: p.name)
def test_kicked_is_uvm_kick_pdaemon(policy: ClockPolicy | Scan1999) -> None:
    t = policy.tune(1024)
    assert kicked(policy, _snap(t.freemin - 1, 600, 400), t)  # below freemin: always
    short = _snap(t.freetarg - 1, 900, 0)  # below freetarg, inactive short
    assert kicked(policy, short, t)
    enough = _snap(t.freetarg - 1, 100, 900)  # below freetarg, inactive at its target
    assert not kicked(policy, enough, t)
    high = _snap(t.freetarg, 900, 0)  # inactive short but free at its target: no kick
    assert policy.needs_scan(high, t)  # (a wakeup's first pass would scan)
    assert not kicked(policy, high, t)


async def test_a_following_pass_runs_only_when_kicked(tmp_path: Path) -> None:
    uvm, mmu = make_uvm(256, tmp_path, swap_pages=256)
    await _fill(uvm, mmu, 100)  # all active: inactive below its target, free above freetarg
    ops, policy = LocalOps(uvm, mmu), ClockPolicy()
    assert uvm.pages.free.count >= policy.tune(256).freetarg
    assert await run_pass(ops, policy, settings_of(), again=True) == {}
    assert uvm.pages.inactive.count == 0  # nothing done
    first = await run_pass(ops, policy, settings_of())  # a wakeup's first pass scans
    assert first["pddeact"] > 0
    taken = _squeeze(uvm, policy.tune(256).freemin - 1)  # now an allocation would kick it
    again = await run_pass(ops, policy, settings_of(), again=True)
    assert again.get("pdpageouts", 0) > 0
    _unsqueeze(uvm, taken)
    assert await audit(uvm) == []


def test_a_store_loop_over_more_than_ram_pages_out_in_few_passes() -> None:
    """A process storing 4 MiB into a 2 MiB machine: each pass pages out up to 4 freetarg
    pages and the daemon sleeps until free is back below freemin (before, it ran a pass
    per few pages allocated: free was kept at 4 freetarg, inactive one page short)."""

    async def main() -> dict[str, int]:
        boot = SimMachine.boot(seed=3, ram_bytes=2 * MIB, swap_bytes=16 * MIB)
        async with boot as sim, sim.attach() as m:
            p = await m.spawn()
            n = 4 * MIB // PAGE_SIZE
            va = await p.mmap(n * PAGE_SIZE, "rw")
            for i in range(n):
                await p.store(va + i * PAGE_SIZE, bytes([i % 251]) * 16)
            for i in range(0, n, 7):
                assert await p.load(va + i * PAGE_SIZE, 16) == bytes([i % 251]) * 16
            return dict((await m.stats())["roles"]["pdaemon"]["counters"])

    c = run_simulation(main(), limit_s=3600)
    assert c["pdpageouts"] >= 512
    assert c["pdrevs"] * 32 <= c["pdpageouts"]  # passes, each of many pages


class _Recording(LocalOps):
    def __init__(self, uvm: Uvm, mmu: Mmu) -> None:
        super().__init__(uvm, mmu)
        self.limits: list[int] = []
        self.claims: list[list[tuple[str, int]]] = []

    async def snapshot(self, limit: int) -> dict[str, Any]:
        self.limits.append(limit)
        return await super().snapshot(limit)

    async def claim(self, items: list[tuple[str, int]]) -> list[int]:
        self.claims.append(list(items))
        return await super().claim(items)


@pytest.mark.parametrize("policy", [ClockPolicy(), Scan1999()], ids=lambda p: p.name)
async def test_a_policy_that_walks_past_the_prefix_decides_on_the_whole_queues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: ClockPolicy | Scan1999
) -> None:
    uvm, mmu = make_uvm(256, tmp_path, swap_pages=512)
    await _fill(uvm, mmu, 200)
    settings = settings_of()
    await run_pass(LocalOps(uvm, mmu), policy, settings)  # fill the inactive queue
    taken = _squeeze(uvm, 10)
    whole = daemon.to_snapshot(pdops.snapshot(uvm, PD_SCAN_LIMIT))
    inactive = [pg.pfn for pg in whole.inactive]
    ref = {
        pfn for pfn, b in zip(inactive, mmu.get_attrs(inactive, False, False), strict=True) if b & 1
    }
    t = policy.tune(256)
    expected = [
        (a.op.value, a.pfn) for a in policy.scan(whole, ref.__contains__, t, settings).actions
    ]
    assert len(expected) > 16  # more than the prefix below
    monkeypatch.setattr(daemon, "PD_PREFIX", 8)
    ops = _Recording(uvm, mmu)
    out = await run_pass(ops, policy, settings)
    assert ops.limits == [8, PD_SCAN_LIMIT]  # the prefix, then the whole queues
    assert ops.claims == [expected]  # the decisions the whole queues give
    assert out["pdpageouts"] > 8
    _unsqueeze(uvm, taken)
    assert await audit(uvm) == []


async def test_a_pass_within_the_prefix_takes_one_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uvm, mmu = make_uvm(256, tmp_path, swap_pages=512)
    await _fill(uvm, mmu, 200)
    monkeypatch.setattr(daemon, "PD_PREFIX", 100)  # of 200 active pages
    head = [row[0] for row in pdops.snapshot(uvm, PD_SCAN_LIMIT)["active"]][:66]
    ops = _Recording(uvm, mmu)
    out = await run_pass(ops, ClockPolicy(), settings_of())  # deactivates 33 % of 200
    assert ops.limits == [100]  # one snapshot: the walk stayed inside the prefix
    assert ops.claims == [[("deactivate", pfn) for pfn in head]]
    assert out["pddeact"] == 66
