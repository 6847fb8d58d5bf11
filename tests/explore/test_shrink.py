"""Shrinking keeps the failure and removes what does not matter (synthetic still_fails)."""

from __future__ import annotations

import random

import pytest

from machine.explore.shrink import (
    DEFAULT_RAM,
    MAX_RUNS,
    ddmin,
    made_by,
    shrink,
    signature,
    without_features,
)
from machine.explore.workload import FEATURES, Op, Workload, draw

MIB = 1 << 20


def _send(size: int, then: str = "", buf: str = "anon") -> Op:
    return Op("send", {"size": size, "loan": size >= 4096, "buf": buf, "then": then})


def _big() -> Workload:
    """Three clients, eleven ops; the failure needs the hog and a loaned send then exit."""
    return Workload(
        ram=2 * MIB,
        swap=4 * MIB,
        features=FEATURES,
        link_bps=10_000_000,
        link_latency_us=300,
        clients=(
            (_send(100), Op("wakeup", {}), _send(65536, "exit"), Op("mlock", {"pages": 2})),
            (Op("map", {"pages": 3, "shared": True, "msync": True}), _send(7, "write")),
            (
                Op("hog", {"pages": 600}),
                _send(8192, "", "private"),
                Op("wakeup", {}),
                _send(5000, "fork"),
                Op("map", {"pages": 1, "shared": False, "msync": False}),
            ),
        ),
    )


def _needs_hog_and_exit(w: Workload) -> bool:
    ops = [op for c in w.clients for op in c]
    hog = any(op.kind == "hog" for op in ops)
    exit_after = any(op.kind == "send" and op.args["then"] == "exit" for op in ops)
    return hog and exit_after


@pytest.mark.timeout(10)
def test_shrink_keeps_the_failure_and_removes_irrelevant_ops() -> None:
    calls: list[Workload] = []

    def still_fails(w: Workload) -> bool:
        calls.append(w)
        return _needs_hog_and_exit(w)

    w = _big()
    small = shrink(w, still_fails)
    assert _needs_hog_and_exit(small)
    assert small.size() == 2
    assert sorted(op.kind for c in small.clients for op in c) == ["hog", "send"]
    # the link and RAM settings did not matter: gone with their features
    assert (small.link_bps, small.link_latency_us) == (0, 0)
    assert small.ram == DEFAULT_RAM
    assert "slow_link" not in small.features
    assert "small_ram" not in small.features
    assert set(small.features) == {"hog", "send_loan", "after_exit"}
    assert len(calls) <= MAX_RUNS
    # never a candidate twice (memoised)
    assert len({str(c.to_json()) for c in calls}) == len(calls)


@pytest.mark.timeout(10)
def test_settings_stay_when_the_failure_needs_them() -> None:
    def still_fails(w: Workload) -> bool:
        return _needs_hog_and_exit(w) and w.ram < 4 * MIB and w.link_bps > 0

    small = shrink(_big(), still_fails)
    assert small.size() == 2
    assert small.ram == 2 * MIB
    assert small.link_bps == 10_000_000
    assert {"small_ram", "slow_link"} <= set(small.features)


@pytest.mark.timeout(10)
def test_shrink_respects_its_budget_and_never_returns_a_rejected_candidate() -> None:
    n = 0

    def still_fails(w: Workload) -> bool:
        nonlocal n
        n += 1
        return w.size() >= 5  # any 5 ops fail

    w = _big()
    small = shrink(w, still_fails, max_runs=7)
    assert n <= 7
    assert small.size() >= 5


@pytest.mark.timeout(10)
def test_shrink_without_a_reduction_returns_the_workload() -> None:
    w = _big()
    assert shrink(w, lambda c: c == w) == w


@pytest.mark.timeout(20)
@pytest.mark.parametrize("seed", range(20))
def test_drawn_workloads_shrink_to_one_op_of_one_feature(seed: int) -> None:
    """On drawn workloads: a failure caused by one op kind shrinks to that op, and every
    candidate keeps the workload's invariant (each op made by an enabled feature)."""
    w = draw(random.Random(f"w:{seed}"))
    kind = w.clients[0][0].kind

    def still_fails(c: Workload) -> bool:
        assert c.clients
        assert c.size() > 0
        assert all(made_by(op) in c.features for ops in c.clients for op in ops)
        return any(op.kind == kind for ops in c.clients for op in ops)

    small = shrink(w, still_fails)
    assert small.size() == 1
    assert small.clients[0][0].kind == kind


def test_without_features_undoes_a_sends_sequel_and_buffer() -> None:
    w = _big()
    off = without_features(w, {"after_exit", "file_private", "mlock"})
    ops = [op for c in off.clients for op in c]
    assert all(op.kind != "mlock" for op in ops)
    assert not any(op.args.get("then") == "exit" for op in ops)
    assert not any(op.args.get("buf") == "private" for op in ops)
    assert any(op.args.get("then") == "fork" for op in ops)  # other sequels stay
    assert off.size() == w.size() - 2  # the mlock and the private map


def test_ddmin_finds_a_one_minimal_subset() -> None:
    tests = 0

    def fails(xs: list[int]) -> bool:
        nonlocal tests
        tests += 1
        return 3 in xs and 11 in xs

    assert sorted(ddmin(list(range(16)), fails)) == [3, 11]
    assert tests < 60


def test_signature_blanks_numbers_and_addresses() -> None:
    a = "uvm: kernel page 0x7f3a000 (pg 17) was revoked by pdaemon at va 0xdead"
    b = "uvm: kernel page 0x1000 (pg 2) was revoked by pdaemon at va 0xbeef"
    assert signature(a) == signature(b)
    assert signature(a) != signature(a.replace("pdaemon", "uvm"))
    assert len(signature("x" * 100)) == 60


def test_without_features_undoes_what_they_add_to_the_vm_calls_ops() -> None:
    """A VM feature off removes its ops; send_loan off makes the others send nothing;
    a file feature off makes their buffers anonymous; every candidate stays valid."""
    ops = (
        Op(
            "trunc",
            {"pages": 3, "view": "shared", "cow": 0, "cut": 10, "loan": True, "grow": False},
        ),
        Op("inherit", {"pages": 2, "buf": "private", "inherit": "share", "send": True}),
        Op("advise", {"pages": 2, "buf": "shared", "advice": "free", "fork": False}),
        Op("lockall", {"pages": 1, "more": 1, "flags": "future", "send": True, "end": "exit"}),
    )
    feats = (
        "send_loan",
        "file_shared",
        "file_private",
        "truncate",
        "minherit",
        "madvise",
        "mlockall",
    )
    w = Workload(2 * MIB, 4 * MIB, feats, 0, 0, (ops,))
    assert [made_by(op) for op in ops] == ["truncate", "minherit", "madvise", "mlockall"]
    off = without_features(w, {"send_loan", "file_shared", "file_private"})
    got = off.clients[0]
    assert [op.kind for op in got] == ["trunc", "inherit", "advise", "lockall"]
    assert [got[0].args["loan"], got[1].args["send"], got[3].args["send"]] == [False] * 3
    assert [got[1].args["buf"], got[2].args["buf"]] == ["anon", "anon"]
    assert got[0].args["view"] == "shared"  # a trunc's file is its own feature's
    assert [op.kind for op in without_features(w, {"madvise", "truncate"}).clients[0]] == [
        "inherit",
        "lockall",
    ]

    def still_fails(c: Workload) -> bool:
        assert all(made_by(op) in c.features for ops in c.clients for op in ops)
        return any(op.kind == "inherit" and op.args["inherit"] == "share" for op in c.clients[0])

    small = shrink(w, still_fails)
    assert [op.kind for ops in small.clients for op in ops] == ["inherit"]
    assert set(small.features) == {"minherit"}
    assert small.clients[0][0].args == {
        "pages": 2,
        "buf": "anon",
        "inherit": "share",
        "send": False,
    }
