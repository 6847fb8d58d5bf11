"""outcome.py alone (pure): the verdict's order, thresholds, the panic record."""

from __future__ import annotations

from typing import Any

import pytest

from machine.stress.outcome import (
    EXIT_CORRUPTION,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PANIC,
    Record,
    Thresholds,
    verdict,
    verdict_line,
)


def summary(**kw: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "ops": 100,
        "corruption": 0,
        "panic": None,
        "user_errors": 0,
        "thresholds": Thresholds().judge(100, 0, 50.0, 3.0),
        "vm": {"frames_back": True},
    }
    s.update(kw)
    return s


@pytest.mark.timeout(10)
def test_the_worst_outcome_wins() -> None:
    assert verdict(summary()) == EXIT_OK
    missed = Thresholds(max_p99_ms=1.0).judge(100, 0, 50.0, 3.0)
    assert verdict(summary(thresholds=missed)) == EXIT_FAILED
    panic = {"role": "uvm", "message": "m", "dump": ""}
    assert verdict(summary(thresholds=missed, panic=panic)) == EXIT_PANIC
    assert verdict(summary(thresholds=missed, panic=panic, corruption=1)) == EXIT_CORRUPTION


@pytest.mark.timeout(10)
def test_a_run_that_did_nothing_or_raised_does_not_hold() -> None:
    assert verdict(summary(ops=0, thresholds=Thresholds().judge(0, 0, 0.0, 0.0))) == EXIT_FAILED
    assert verdict(summary(user_errors=2)) == EXIT_FAILED  # a user's bug, or no attach
    assert verdict(summary(vm={"frames_back": False})) == EXIT_FAILED
    assert verdict(summary(vm={"frames_back": None})) == EXIT_OK  # not known: not held against
    problem = "A3: anon 1 ref 0 but held by 0 amaps and 0 loans"
    assert verdict(summary(vm={"frames_back": True, "audit": [problem]})) == EXIT_FAILED
    assert problem in verdict_line(summary(vm={"frames_back": True, "audit": [problem]}))
    assert verdict(summary(vm={"frames_back": True, "audit": []})) == EXIT_OK  # every check held
    assert verdict(summary(vm={"frames_back": True, "audit": None})) == EXIT_OK  # not run
    undo_failed = [{"name": "link-slow", "detail": {"undo_error": "MachineTimeout: ..."}}]
    assert verdict(summary(nemesis=undo_failed)) == EXIT_FAILED  # may still be applied
    assert verdict(summary(nemesis=[{"name": "squeeze", "detail": {"oom": "ENOMEM"}}])) == EXIT_OK
    not_reaped = [{"name": "client-kill", "detail": {"session": 7, "reaped": False}}]
    assert verdict(summary(nemesis=not_reaped)) == EXIT_FAILED  # its frames never came back
    unknown = [{"name": "client-kill", "detail": {"session": 7, "reaped": None}}]
    assert verdict(summary(nemesis=unknown)) == EXIT_OK  # the run ended before the lease did


@pytest.mark.timeout(10)
def test_thresholds_judge_each_limit() -> None:
    t = Thresholds(max_p99_ms=10.0, max_fail_ratio=0.01, min_ops_per_s=100.0)
    j = t.judge(ops=1000, failures=20, ops_per_s=99.0, p99_ms=10.0)
    assert j["max_p99_ms"]["held"] is True  # at the limit holds
    assert j["max_fail_ratio"] == {"limit": 0.01, "value": 0.02, "held": False}
    assert j["min_ops_per_s"]["held"] is False


@pytest.mark.timeout(10)
def test_the_first_panic_is_kept_and_only_filled_in() -> None:
    r = Record()
    assert r.add_panic("", "trap: kernel page fault") is True  # an EPANIC reply: no role
    assert r.add_panic("uvm", "a later message", "/dump/1") is False
    assert r.panic == {"role": "uvm", "message": "trap: kernel page fault", "dump": "/dump/1"}


@pytest.mark.timeout(10)
def test_the_verdict_line_names_what_decided_it() -> None:
    missed = Thresholds(min_ops_per_s=1e9).judge(10, 0, 5.0, 1.0)
    line = verdict_line(summary(thresholds=missed, vm={"frames_back": True}))
    assert "0 corruption" in line
    assert "no panic" in line
    assert "missed: min_ops_per_s" in line
    panic = {"role": "uvm", "message": "trap: kernel page fault", "dump": "/d"}
    assert "panic in uvm: trap: kernel page fault" in verdict_line(summary(panic=panic))
