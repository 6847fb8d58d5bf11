"""Swarm workloads: drawn deterministically, only from the enabled features, within the
issue's ranges; readable steps; an exact JSON round trip."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from machine.explore.workload import (
    AFTER,
    CLASSIC_FEATURES,
    FEATURES,
    LOAN_THRESHOLD,
    MAX_SEND,
    OP_FEATURES,
    VM_FEATURES,
    VM_KINDS,
    Op,
    Workload,
    draw,
    draw_classic,
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
    if op.kind in VM_KINDS.values():
        out = {f for f, k in VM_KINDS.items() if k == op.kind}
        out |= {"file_shared"} if a.get("buf") == "shared" else set()
        out |= {"file_private"} if a.get("buf") == "private" else set()
        return out | ({"send_loan"} if a.get("send") or a.get("loan") else set())
    assert op.kind == "wakeup", op
    return {"pd_wakeup"}


def _file_bufs(op: Op) -> bool:
    return op.args.get("buf") in ("shared", "private")


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
        only_hog = on & set(OP_FEATURES) - set(VM_FEATURES) == {"hog"}
        assert len(w.clients) == 1 if only_hog else 2 <= len(w.clients) <= 4
        vm = len(on & set(VM_FEATURES))
        assert all(1 <= len(ops) <= 5 + vm for ops in w.clients)
        for f in on & set(VM_FEATURES):  # each VM feature on makes an op (the first client's)
            assert any(op.kind == VM_KINDS[f] for op in w.clients[0]), (f, w.steps())
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
                if op.kind == "trunc":  # the cut is inside the file: it shrinks
                    assert 2 <= int(op.args["pages"]) <= 8
                    assert 0 <= int(op.args["cut"]) < (int(op.args["pages"]) - 1) * 4096 + 4096
                    assert op.args["view"] == "private" or op.args["cow"] == 0
                    assert int(op.args["cow"]) < 1 << int(op.args["pages"])
                if op.kind == "inherit":
                    assert op.args["inherit"] in ("none", "copy", "share", "zero")
                if op.kind == "advise":
                    assert op.args["advice"] in ("dontneed", "free")
                if op.kind == "lockall":
                    assert op.args["flags"] in ("current", "future", "both")
                    assert op.args["end"] in ("munlockall", "exit")
        small = "small_ram" in on
        assert (1 * MIB <= w.ram <= 4 * MIB) if small else (8 * MIB <= w.ram <= 16 * MIB)
        if "slow_link" in on:
            assert 1_000_000 <= w.link_bps <= 100_000_000
            assert 0 <= w.link_latency_us <= 5000
        else:
            assert (w.link_bps, w.link_latency_us) == (0, 0)
        assert w.swap >= 2 * w.ram
    assert seen == {
        "send",
        "map",
        "mlock",
        "hog",
        "wakeup",
        "trunc",
        "inherit",
        "advise",
        "lockall",
    }


#: blake2b-128 of draw(Random(f"w:{k}")).to_json() (sort_keys) for k < 400, at 0a4feb3:
#: the workloads every seed drew before the VM features existed.
CLASSIC_DIGEST = "3e41b45741d28fddf63e67d1d53bb3ac"


@pytest.mark.timeout(30)
def test_old_seeds_keep_their_workloads_and_gain_only_the_vm_features_ops() -> None:
    """The classic draw is what draw was (pinned); draw adds the VM features after it:
    every classic op stays, in order, with its machine; without a VM feature, the
    workload is the old one exactly (its runs, their trace hashes, unchanged)."""
    h = hashlib.blake2b(digest_size=16)
    unchanged = 0
    for k in SEEDS:
        old = draw_classic(random.Random(f"w:{k}"))
        h.update(json.dumps(old.to_json(), sort_keys=True).encode())
        w = draw(random.Random(f"w:{k}"))
        assert (w.ram, w.link_bps, w.link_latency_us) == (
            old.ram,
            old.link_bps,
            old.link_latency_us,
        )
        assert tuple(f for f in w.features if f in CLASSIC_FEATURES) == old.features
        kept = tuple(
            tuple(op for op in ops if op.kind not in VM_KINDS.values()) for ops in w.clients
        )
        assert kept == old.clients
        if not set(w.features) & set(VM_FEATURES):
            assert w == old
            unchanged += 1
        else:
            assert w.swap >= old.swap
    assert h.hexdigest() == CLASSIC_DIGEST
    assert 10 <= unchanged <= 45  # about 1 seed in 16


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


def test_the_vm_calls_ops_read_as_steps() -> None:
    ops = (
        Op(
            "trunc",
            {"pages": 4, "view": "private", "cow": 5, "cut": 5000, "loan": True, "grow": True},
        ),
        Op(
            "trunc",
            {"pages": 2, "view": "shared", "cow": 0, "cut": 0, "loan": False, "grow": False},
        ),
        Op("inherit", {"pages": 2, "buf": "shared", "inherit": "zero", "send": True}),
        Op("advise", {"pages": 3, "buf": "anon", "advice": "free", "fork": True}),
        Op("lockall", {"pages": 2, "more": 3, "flags": "both", "send": False, "end": "exit"}),
    )
    w = Workload(MIB, 2 * MIB, ("send_loan", *VM_FEATURES), 0, 0, (ops,))
    assert w.steps()[1:] == [
        "2. p1: map a 4-page file private (COW pages {0,2}), send it (loaned), ftruncate to"
        " 5000 B, grow back",
        "3. p1: map a 2-page file shared, ftruncate to 0 B",
        "4. p1: minherit ZERO 2 pages of shared, send them (loaned), fork, both check",
        "5. p1: madvise FREE 3 pages of anon (a child holds them)",
        "6. p1: mlockall both over 2 pages, map 3 more, then exit",
    ]
    assert Workload.from_json(json.loads(json.dumps(w.to_json()))) == w
