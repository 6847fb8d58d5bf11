"""One run: a small workload is ok under modern and deterministic; bug1999's chain (a
loaned page revoked by the page daemon, the driver's read faulting) is found without a
hold of the link; and each check catches a fault injected for it."""

from __future__ import annotations

import pytest

from machine.explore.run import run_workload
from machine.explore.workload import Op, Workload

MIB = 1 << 20


def send(size: int, then: str = "", buf: str = "anon", **extra: bool) -> Op:
    return Op("send", {"size": size, "loan": size >= 4096, "buf": buf, "then": then, **extra})


def small() -> Workload:
    return Workload(
        ram=2 * MIB,
        swap=4 * MIB,
        features=("send_loan", "send_copy", "after_write", "after_fork", "file_shared", "mlock"),
        link_bps=0,
        link_latency_us=0,
        clients=(
            (send(16384, "write"), Op("map", {"pages": 2, "shared": True, "msync": True})),
            (send(300, "fork"), Op("mlock", {"pages": 2, "send": True}), send(70000)),
        ),
    )


def reclaim_while_loaned() -> Workload:
    """reclaim-while-loaned without its script: a loaned file page on a slow link, a hog,
    daemon wake-ups, small RAM -- nothing holds the link."""
    return Workload(
        ram=MIB,
        swap=4 * MIB,
        features=("send_loan", "file_shared", "hog", "small_ram", "slow_link", "pd_wakeup"),
        link_bps=10_000_000,
        link_latency_us=1000,
        clients=(
            (send(512 << 10, buf="shared"),),
            (Op("hog", {"pages": 384}),),
            (Op("wakeup", {}), Op("wakeup", {})),
        ),
    )


def one(*ops: Op) -> Workload:
    return Workload(MIB, 4 * MIB, ("send_loan",), 0, 0, (tuple(ops),))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", ["random", "pct"])
def test_a_small_workload_is_ok_under_modern_and_the_same_run_twice(strategy: str) -> None:
    a = run_workload(small(), "modern", 3, strategy)
    b = run_workload(small(), "modern", 3, strategy)
    assert a.outcome == "ok", a.message
    assert a.deliveries > 100
    assert a.virtual_s > 0
    assert (b.outcome, b.message, b.trace_hash, b.deliveries) == (
        a.outcome,
        a.message,
        a.trace_hash,
        a.deliveries,
    )
    assert run_workload(small(), "modern", 4, strategy).trace_hash != a.trace_hash


@pytest.mark.timeout(120)
def test_bug1999_the_page_daemon_revokes_a_loan_unaided_within_a_few_dozen_seeds() -> None:
    for seed in range(40):
        r = run_workload(reclaim_while_loaned(), "bug1999", seed)
        assert r.outcome in ("ok", "panic"), r.message
        if r.outcome == "panic" and r.revoker == "pdaemon":
            break
    else:
        pytest.fail("no panic with the page daemon as revoker in 40 schedules")
    assert "kernel page fault" in r.message  # the driver's access faulted
    assert "was revoked by pdaemon" in r.message
    assert "deactivate" in r.message
    # exact: the same schedule seed is the same failure
    again = run_workload(reclaim_while_loaned(), "bug1999", seed)
    assert (again.outcome, again.message, again.trace_hash) == (r.outcome, r.message, r.trace_hash)


@pytest.mark.timeout(60)
def test_reclaim_while_loaned_is_ok_under_modern() -> None:
    for seed in range(5):
        r = run_workload(reclaim_while_loaned(), "modern", seed)
        assert r.outcome == "ok", r.message


@pytest.mark.timeout(30)
def test_corruption_a_byte_the_model_expects_flipped() -> None:
    r = run_workload(one(send(16384, flip=True)), "modern", 1)
    assert r.outcome == "corruption", r.message
    assert "1 of 16384 bytes differ" in r.message
    assert "0x0" in r.message


@pytest.mark.timeout(30)
def test_leak_a_wired_page_never_unwired() -> None:
    r = run_workload(one(Op("leak", {"what": "noexit"})), "modern", 1)
    assert r.outcome == "leak", r.message
    assert "1 frames neither free nor kernel-owned" in r.message


@pytest.mark.timeout(30)
def test_leak_a_loan_never_returned() -> None:
    r = run_workload(one(Op("leak", {"what": "hold"}), send(16384)), "modern", 1)
    assert r.outcome == "leak", r.message
    assert "every loaned mbuf to be freed" in r.message
    assert "still loaned" in r.message


@pytest.mark.timeout(30)
def test_audit_the_injected_queue_violation_precedes_the_leak() -> None:
    """thorpe's QUEUE_INVARIANT=violated leaves a wired loaned page on the active queue
    (I1); its daemon skips wired pages, so nothing panics and the auditor must see it."""
    r = run_workload(one(Op("leak", {"what": "hold"}), send(16384)), "thorpe", 1)
    assert r.outcome == "audit", r.message
    assert "I1: wired page" in r.message


@pytest.mark.timeout(30)
def test_hang_a_tiny_virtual_time_limit() -> None:
    """A 64 KiB send on a 1 Mbit/s link takes half a second; the limit is 0.2 s."""
    w = Workload(MIB, 4 * MIB, ("send_loan", "slow_link"), 1_000_000, 0, ((send(65536),),))
    assert run_workload(w, "modern", 1).outcome == "ok"
    r = run_workload(w, "modern", 1, time_limit_s=0.2)
    assert r.outcome == "hang", r.message
    assert "SimulationTimeout" in r.message
    assert r.virtual_s == 0.2


@pytest.mark.timeout(30)
def test_error_an_op_the_client_does_not_know() -> None:
    r = run_workload(one(Op("bogus", {})), "modern", 1)
    assert r.outcome == "error", r.message
    assert "unknown op" in r.message
