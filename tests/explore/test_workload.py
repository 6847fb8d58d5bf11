"""Swarm workloads: drawn deterministically, only from the enabled features, within the
issue's ranges; readable steps; an exact JSON round trip."""

from __future__ import annotations

import json
import random

import pytest

from machine.explore.workload import (
    AFTER,
    FEATURES,
    LOAN_THRESHOLD,
    MAX_SEND,
    OP_FEATURES,
    Op,
    Workload,
    draw,
)

MIB = 1 << 20
SEEDS = range(400)


def needs(op: Op) -> set[str]:
    """The features an op can only come from."""
    a = op.args
    if op.kind == "send":
        out = {"send_loan" if a["loan"] else "send_copy"}
        out |= {f for f, then in AFTER.items() if a["then"] == then}
        out |= {"file_shared"} if a["buf"] == "shared" else set()
        return out | ({"file_private"} if a["buf"] == "private" else set())
    if op.kind == "map":
        return {"file_shared" if a["shared"] else "file_private"}
    if op.kind == "mlock":
        return {"mlock"}
    if op.kind == "hog":
        return {"hog", "small_ram"}
    assert op.kind == "wakeup", op
    return {"pd_wakeup"}


@pytest.mark.timeout(30)
def test_draw_is_deterministic_for_a_seed_and_differs_between_seeds() -> None:
    a = [draw(random.Random(f"w:{k}")) for k in range(50)]
    b = [draw(random.Random(f"w:{k}")) for k in range(50)]
    assert a == b
    assert len({json.dumps(w.to_json(), sort_keys=True) for w in a}) == 50


@pytest.mark.timeout(30)
def test_every_op_comes_from_an_enabled_feature_within_the_ranges() -> None:
    seen: set[str] = set()
    for k in SEEDS:
        w = draw(random.Random(f"w:{k}"))
        on = set(w.features)
        assert on
        assert on <= set(FEATURES)
        assert on & set(OP_FEATURES), w.features  # something to do
        only_hog = on & set(OP_FEATURES) == {"hog"}
        assert len(w.clients) == 1 if only_hog else 2 <= len(w.clients) <= 4
        assert all(1 <= len(ops) <= 5 for ops in w.clients)
        assert sum(op.kind == "hog" for ops in w.clients for op in ops) <= 1
        for ops in w.clients:
            for op in ops:
                assert needs(op) <= on, (str(op), w.features)
                seen.add(op.kind)
                if op.kind == "send":
                    size = int(op.args["size"])
                    if op.args["loan"]:
                        assert LOAN_THRESHOLD <= size <= MAX_SEND
                    else:
                        assert 1 <= size < LOAN_THRESHOLD
                if op.kind == "mlock" and op.args["send"]:
                    assert on & {"send_loan", "send_copy"}
                if op.kind == "hog":  # more pages than RAM holds: pressure
                    assert int(op.args["pages"]) * 4096 > w.ram
        small = "small_ram" in on
        assert (1 * MIB <= w.ram <= 4 * MIB) if small else (8 * MIB <= w.ram <= 16 * MIB)
        if "slow_link" in on:
            assert 1_000_000 <= w.link_bps <= 100_000_000
            assert 0 <= w.link_latency_us <= 5000
        else:
            assert (w.link_bps, w.link_latency_us) == (0, 0)
        assert w.swap >= 2 * w.ram
    assert seen == {"send", "map", "mlock", "hog", "wakeup"}


@pytest.mark.timeout(30)
def test_features_are_each_enabled_about_half_the_time() -> None:
    ws = [draw(random.Random(f"w:{k}")) for k in SEEDS]
    for f in FEATURES:
        share = sum(f in w.features for w in ws) / len(ws)
        assert 0.3 < share < 0.8, (f, share)  # small_ram also follows the hog


@pytest.mark.timeout(30)
def test_json_round_trip_is_exact() -> None:
    for k in range(100):
        w = draw(random.Random(f"w:{k}"))
        back = Workload.from_json(json.loads(json.dumps(w.to_json())))
        assert back == w
        assert back.steps() == w.steps()


@pytest.mark.timeout(30)
def test_steps_are_numbered_and_readable() -> None:
    w = Workload(
        ram=MIB,
        swap=2 * MIB,
        features=("send_loan", "after_exit", "hog", "small_ram", "slow_link", "pd_wakeup"),
        link_bps=10_000_000,
        link_latency_us=1000,
        clients=(
            (Op("send", {"size": 65536, "loan": True, "buf": "anon", "then": "exit"}),),
            (Op("hog", {"pages": 300}), Op("wakeup", {})),
        ),
    )
    assert w.size() == 3
    assert w.steps() == [
        "1. boot: 1024 KiB RAM, 2048 KiB swap, link 10 Mbit/s, 1000 us"
        " [send_loan, after_exit, hog, small_ram, slow_link, pd_wakeup]",
        "2. p1: send 65536 B from anon (loaned) then exit",
        "3. p2: hog: touch 300 pages (pressure)",
        "4. p2: wake the page daemon (pd.wakeup)",
    ]
