"""The follow gate: each role gets its inputs in the recorded order, one pair delivers in
order through it, a stall is bounded and reported, and what nobody follows goes through."""

from __future__ import annotations

import asyncio

import pytest

from machine.ipc.follow import Expected, FollowGate, Key
from machine.ipc.inmemory import run_simulation


def key(tag: str, lane: str = "a") -> Key:
    return ("user", lane, tag)


def classify(kind: str, pair: object, data: bytes) -> tuple[str, Key] | None:
    """Test messages: b"role:lane:tag"; role "-" is nobody's."""
    role, lane, tag = data.decode().split(":")
    return None if role == "-" else (role, key(tag, lane))


def gate_of(*tags: str, stall_s: float = 0.01, resync: bool = True) -> FollowGate:
    expect = [Expected(key(t.split(":")[1], t.split(":")[0]), 0.0, i) for i, t in enumerate(tags)]
    return FollowGate({"r": expect}, classify, stall_s, resync)


def play(gate: FollowGate, arrivals: list[tuple[object, str]], then_s: float = 1.0) -> list[str]:
    """Admit each (pair, "role:lane:tag") in turn at virtual time 0; => the tags delivered,
    in order, after `then_s` of virtual time."""
    got: list[str] = []

    async def main() -> None:
        gate.start(asyncio.get_running_loop().time())
        for pair, msg in arrivals:
            gate.admit("req", pair, msg.encode(), got.append, msg.split(":")[2])
        await asyncio.sleep(then_s)

    run_simulation(main())
    return got


P, Q, R = object(), object(), object()


@pytest.mark.timeout(30)
def test_inputs_that_come_out_of_order_are_delivered_in_the_recorded_order() -> None:
    gate = gate_of("a:x", "b:y", "c:z")
    got = play(gate, [(R, "r:c:z"), (Q, "r:b:y"), (P, "r:a:x")])
    assert got == ["x", "y", "z"]
    assert gate.report()["exact"] is True
    assert gate.followed() == (3, 3)


@pytest.mark.timeout(30)
def test_what_no_role_follows_or_no_longer_expects_goes_through_at_once() -> None:
    gate = gate_of("a:x")
    got = play(gate, [(P, "-:a:q"), (Q, "r:b:other"), (R, "r:a:x")])
    assert got == ["q", "other", "x"]
    assert gate.passed == 2


@pytest.mark.timeout(30)
def test_one_pair_delivers_in_order_and_a_stall_is_reported_then_resynchronised() -> None:
    # P sends y then x; the recording says x first: x cannot pass y on its pair
    gate = gate_of("a:x", "a:y", "b:z")
    got = play(gate, [(P, "r:a:y"), (P, "r:a:x"), (Q, "r:b:z")])
    assert got == ["y", "x", "z"]  # y first (its pair's order), x then goes through
    rep = gate.report()
    assert rep["exact"] is False
    assert rep["first_divergence"].startswith("r: input 1 (recorded seq 0, user/a/x")
    assert rep["roles"]["r"]["skipped"] == 1
    assert rep["roles"]["r"]["followed"] == 2  # y and z in the recorded order


@pytest.mark.timeout(30)
def test_without_resync_a_diverged_role_flows_freely_in_arrival_order() -> None:
    gate = gate_of("a:x", "b:y", "c:z", resync=False)
    got = play(gate, [(Q, "r:b:y"), (R, "r:c:z")])  # x never comes
    assert got == ["y", "z"]
    assert gate.report()["roles"]["r"]["followed"] == 0


@pytest.mark.timeout(30)
def test_a_hold_lasts_the_stall_bound_of_virtual_time_past_the_expected_time() -> None:
    gate = gate_of("a:x", "b:y", stall_s=0.05)
    got: list[tuple[str, float]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate.start(loop.time())
        gate.admit("req", Q, b"r:b:y", lambda t: got.append((t, loop.time())), "y")
        await asyncio.sleep(1.0)

    run_simulation(main())
    assert [t for t, _ in got] == ["y"]
    assert got[0][1] == pytest.approx(0.05)


@pytest.mark.timeout(30)
def test_before_start_nothing_is_held() -> None:
    gate = gate_of("a:x", "b:y")
    got: list[str] = []
    gate.admit("req", Q, b"r:b:y", got.append, "y")
    assert got == ["y"]
