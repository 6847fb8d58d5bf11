"""machine.share: the fair-share rule, by example and against a plain reference."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machine.kassert import KernelPanic
from machine.share import FairShare


def reference(cap: int, held: dict[int, int], live: set[int], sid: int, k: int) -> bool:
    """The rule as machine.share's docstring states it, computed the slow way."""
    total = sum(held.values())
    if total + k > cap:
        return False
    f = cap // (len(live) + 1)
    if held.get(sid, 0) + k <= f:
        return True
    reserve = sum(max(0, f - held.get(o, 0)) for o in live if o != sid) + f
    return total + k + reserve <= cap


def test_a_session_within_its_share_is_bound_by_the_cap_only() -> None:
    live = {1, 2, 3}
    fs = FairShare("x", 100, live, "units")  # f = 100 // 4 = 25
    assert fs.share() == 25
    fs.take(1, 25)
    assert fs.grants(2, 25)
    assert fs.grants(3, 25)
    assert fs.refusal(2, 25) == ""


def test_the_greedy_session_is_refused_first_and_the_others_still_get_their_share() -> None:
    live = {1, 2, 3}
    fs = FairShare("inflight_total", 100, live, "requests in flight")
    # Alone, session 1 may take what the others and a newcomer could not claim: 100 - 3*25.
    while fs.grants(1):
        fs.take(1)
    assert fs.held[1] == 25
    why = fs.refusal(1)
    assert "fair share of inflight_total" in why
    assert "share 25 = 100 // 4" in why
    assert "75 kept for the others" in why
    for o in (2, 3):
        for _ in range(25):
            assert fs.grants(o)
            fs.take(o)
    # Every share is claimed; the newcomer's is still kept from everyone past their own.
    assert fs.total == 75
    assert not fs.grants(2)
    assert not fs.grants(1)
    assert fs.grants(4, 25)  # a session nobody counted yet: within its share


def test_an_over_share_session_takes_only_what_nobody_else_could_claim() -> None:
    live = {1, 2}
    fs = FairShare("x", 90, live, "units")  # f = 30
    fs.take(2, 10)  # 2 could still claim 20; the newcomer 30
    granted = 0
    while fs.grants(1):
        fs.take(1)
        granted += 1
    assert granted == 90 - 10 - 20 - 30
    fs.give(2, 10)  # 2 gives back: its claim grows to 30, so 1 gets no more
    assert not fs.grants(1)


def test_the_cap_refusal_says_it_was_the_cap() -> None:
    fs = FairShare("maxproc", 4, set(), "processes")  # alone: f = 4 // 1
    fs.take(1, 4)
    assert "limit of 4 processes (maxproc; 4 held)" in fs.refusal(1)


def test_releases_restore_and_counters_never_go_negative() -> None:
    fs = FairShare("x", 10, {1}, "units")
    fs.take(1, 3)
    fs.give(1, 3)
    assert fs.held == {}
    assert fs.total == 0
    assert fs.check() == []
    fs.give(1, 0)  # nothing held, nothing given: fine
    with pytest.raises(KernelPanic):
        fs.give(1, 1)


def test_reserve_visits_holders_only() -> None:
    """A session holding nothing contributes f without being visited (O(holders))."""

    class Live(set[int]):
        def __iter__(self):  # type: ignore[no-untyped-def]
            raise AssertionError("reserve() iterated every live session")

    fs = FairShare("x", 1000, Live(range(1, 100)), "units")  # f = 10
    fs.take(1, 10)
    fs.take(2, 4)
    # others: 98 live, one a holder (2: claims 6), 97 at f, plus the newcomer.
    assert fs.reserve(1, 10) == 6 + 97 * 10 + 10


ops = st.lists(
    st.tuples(
        st.sampled_from(["ask", "give", "join", "leave"]), st.integers(0, 7), st.integers(1, 9)
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(cap=st.integers(1, 60), steps=ops)
def test_the_accountant_agrees_with_the_reference(
    cap: int, steps: list[tuple[str, int, int]]
) -> None:
    live: set[int] = {0}
    fs = FairShare("x", cap, live, "units")
    model: dict[int, int] = {}
    for op, sid, k in steps:
        if op == "join":
            live.add(sid)
        elif op == "leave":
            live.discard(sid)  # what it holds stays held until given back
        elif op == "give":
            k = min(k, model.get(sid, 0))
            fs.give(sid, k)
            if k:
                model[sid] -= k
                if not model[sid]:
                    del model[sid]
        else:
            live.add(sid)  # a session asks once it is known live
            want = reference(cap, model, live, sid, k)
            f = cap // (len(live) + 1)
            total = sum(model.values())
            assert fs.grants(sid, k) is want
            assert (fs.refusal(sid, k) == "") is want
            if total + k <= cap and model.get(sid, 0) + k <= f:
                assert want, "a session within its share was refused below the cap"
            if want:
                fs.take(sid, k)
                model[sid] = model.get(sid, 0) + k
                if model[sid] > f:  # over its share: never past what the others could claim
                    assert fs.total + fs.reserve(sid, f) <= cap
        assert fs.held == model
        assert fs.total == sum(model.values()) <= cap
        assert fs.check() == []
