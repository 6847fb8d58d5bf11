"""The page-replacement policies alone: uvm-semantics.md section 14 scenarios 12, 15-19,
Thorpe's skip, and the clock policy's deactivation without revocation."""

from __future__ import annotations

import pytest

from machine.kassert import KernelPanic
from machine.pdaemon.clock import ClockPolicy
from machine.pdaemon.policy import PageInfo, Snapshot
from machine.pdaemon.scan1999 import Scan1999
from machine.proto.pageinfo import PdOp
from tests.unit.uvm.localpmap import settings_of

KNOBS_1999 = settings_of({"ERA": "1999", "DIAGNOSTIC": True, "PD_WIRED_CHECK": "none"})


def never(_: int) -> bool:
    return False


def ops(res: object) -> list[tuple[PdOp, int]]:
    return [(a.op, a.pfn) for a in res.actions]  # type: ignore[attr-defined]


def test_19_targets_1999() -> None:
    t = Scan1999().tune(8192)  # 32 MiB of 4 KiB pages
    assert (t.freemin, t.freetarg, t.wiredmax) == (64, 85, 2730)
    snap = Snapshot(active=[PageInfo(i) for i in range(100)], inactive=[], free=1000, npages=8192)
    assert Scan1999().inactarg(snap, t) == 86  # max((100 + 0) / 3, freetarg + 1)


def test_15_a_clean_unreferenced_inactive_page_is_freed() -> None:
    p, t = Scan1999(), Scan1999().tune(8192)
    snap = Snapshot(
        active=[], inactive=[PageInfo(7, swap_backed=False, clean=True)], free=10, npages=8192
    )
    assert p.needs_scan(snap, t)
    res = p.scan(snap, never, t, KNOBS_1999)
    assert res.actions[0].op is PdOp.FREE
    assert res.actions[0].revoke  # pmap_page_protect(NONE) first
    assert res.counters["pdfreed"] == 1


def test_16_a_referenced_inactive_page_is_reactivated_not_freed() -> None:
    p, t = Scan1999(), Scan1999().tune(8192)
    snap = Snapshot(active=[], inactive=[PageInfo(7, clean=True)], free=10, npages=8192)
    res = p.scan(snap, lambda pfn: pfn == 7, t, KNOBS_1999)
    assert ops(res)[0] == (PdOp.REACTIVATE, 7)
    assert res.counters["pdreact"] == 1
    assert "pdfreed" not in res.counters


def test_17_dirty_anon_pages_page_out_in_clusters_of_16() -> None:
    p, t = Scan1999(), Scan1999().tune(8192)
    inactive = [PageInfo(i) for i in range(20)]  # dirty, swap-backed, no slot yet
    snap = Snapshot(active=[], inactive=inactive, free=10, npages=8192, swpages=1000)
    res = p.scan(snap, never, t, KNOBS_1999)
    outs = [a for a in res.actions if a.op is PdOp.PAGEOUT]
    assert len(outs) == 20
    assert all(a.revoke for a in outs)
    assert [a.cluster for a in outs] == [0] * 16 + [1] * 4


def test_18_swap_full_of_only_copies_reactivates_and_stops_after_16() -> None:
    p, t = Scan1999(), Scan1999().tune(8192)
    inactive = [PageInfo(i) for i in range(40)]
    snap = Snapshot(
        active=[], inactive=inactive, free=10, npages=8192, swpages=100, swpginuse=100, swpgonly=100
    )
    res = p.scan(snap, never, t, KNOBS_1999)
    react = [a for a in res.actions if a.op is PdOp.REACTIVATE]
    assert len(react) == 16  # UVMPD_NUMDIRTYREACTS
    assert not [a for a in res.actions if a.op is PdOp.PAGEOUT]


def test_loop_2_deactivates_active_pages_with_revocation_even_when_wired() -> None:
    """The 1999 bug's step 3: 'no need to check wire_count as pg is active'."""
    p, t = Scan1999(), Scan1999().tune(8192)
    loaned = PageInfo(5, wire_count=1, loan_count=1)  # wrongly still on the active queue
    snap = Snapshot(active=[loaned, PageInfo(6)], inactive=[], free=2000, npages=8192)
    res = p.scan(snap, never, t, KNOBS_1999)
    assert (PdOp.DEACTIVATE, 5) in ops(res)
    assert next(a for a in res.actions if a.pfn == 5).revoke


def test_thorpe_skips_wired_pages_in_loop_2() -> None:
    p, t = Scan1999(), Scan1999().tune(8192)
    loaned = PageInfo(5, wire_count=1, loan_count=1)
    snap = Snapshot(active=[loaned, PageInfo(6)], inactive=[], free=2000, npages=8192)
    res = p.scan(snap, never, t, settings_of({"ERA": "1999", "PD_WIRED_CHECK": "skip_wired"}))
    assert (PdOp.DEACTIVATE, 5) not in ops(res)
    assert (PdOp.DEACTIVATE, 6) in ops(res)


@pytest.mark.parametrize(
    ("page", "message"),
    [
        (
            PageInfo(3, owned=False, has_anon=False, loan_count=0),
            "pagedaemon: page with no anon or object detected",
        ),
        (
            PageInfo(3, owned=False, has_anon=True, loan_count=0),
            "pagedaemon: non-loaned ownerless page detected",
        ),
    ],
)
def test_12_ownerless_page_checks(page: PageInfo, message: str) -> None:
    p, t = Scan1999(), Scan1999().tune(8192)
    snap = Snapshot(active=[], inactive=[page], free=10, npages=8192)
    with pytest.raises(KernelPanic, match=message):
        p.scan(snap, never, t, KNOBS_1999)
    # with a loan the page is legitimate (it will be adopted); without DIAGNOSTIC no panic
    ok = PageInfo(3, owned=False, has_anon=True, loan_count=1, clean=True)
    p.scan(Snapshot(active=[], inactive=[ok], free=10, npages=8192), never, t, KNOBS_1999)
    p.scan(snap, never, t, settings_of({"ERA": "1999", "DIAGNOSTIC": False}))


def test_the_clock_deactivates_by_clearing_reference_bits_only() -> None:
    c = ClockPolicy()
    t = c.tune(16384)
    assert (t.freemin, t.freetarg) == (81, 108)  # npages/200 within [128 KiB, 1 MiB]
    snap = Snapshot(active=[PageInfo(i) for i in range(300)], inactive=[], free=5000, npages=16384)
    res = c.scan(snap, never, t, settings_of())
    deact = [a for a in res.actions if a.op is PdOp.DEACTIVATE]
    assert len(deact) == c.inactarg(snap, t)
    assert not any(a.revoke for a in deact)


def test_the_clock_never_chooses_a_wired_victim_and_pages_out_file_pages() -> None:
    c = ClockPolicy()
    t = c.tune(16384)
    snap = Snapshot(
        active=[],
        inactive=[
            PageInfo(1, wire_count=1),
            PageInfo(2, swap_backed=False),
            PageInfo(3, clean=True),
        ],
        free=10,
        npages=16384,
    )
    res = c.scan(snap, never, t, settings_of())
    assert ops(res)[:2] == [(PdOp.PAGEOUT, 2), (PdOp.FREE, 3)]
    assert 1 not in [a.pfn for a in res.actions]


def test_a_users_own_policy_is_loaded_from_a_profile(tmp_path: object) -> None:
    from pathlib import Path

    from machine.pdaemon.service import load_policy
    from machine.profile import load_profile

    text = Path(__file__).parents[3].joinpath("machine/profiles/modern.toml").read_text()
    custom = Path(str(tmp_path)) / "mine.toml"
    custom.write_text(
        text.replace(
            'PD_POLICY = "clock"', 'PD_POLICY = "python:machine.pdaemon.scan1999:Scan1999"'
        )
    )
    prof = load_profile(str(custom))
    policy = load_policy(str(prof.knobs["PD_POLICY"]))
    assert policy.name == "scan1999"
