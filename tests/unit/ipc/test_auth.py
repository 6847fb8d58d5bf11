"""Signed requests (machine.ipc.auth): forged tags at every byte, the msg_id rule's edges.

Forged tags differ from a valid one in a single byte, the last, a middle or the
first: a check that compared only a prefix of the tag (or returned at the first
equal byte) would pass one of them. The replay window (REPLAY_WINDOW ids per
session per role) is held at its boundary: the id exactly REPLAY_WINDOW - 1 below
the highest is accepted once, the one REPLAY_WINDOW below is refused.
"""

from __future__ import annotations

import hmac
import inspect
import random
from typing import Any

import pytest

from machine import params
from machine.ipc import auth
from machine.ipc.auth import REPLAY_WINDOW, TAG_LEN, SessionAuth, session_key, sign
from machine.ipc.inmemory import InMemoryTransport
from machine.proto import Errno, Header, Scope, Status, UvmSpawn, base, gendoc
from tests.unit.ipc.test_service import KEY, Toy, signed

SID = 9
BODY = b"\x82\xa1t\xa9uvm.spawn"  # any bytes: SessionAuth signs what it is given
NOH = Header(msg_id=1, sender="", incarnation=0)  # signed() stamps the real header


def _flip(tag: bytes, i: int, bit: int = 0) -> bytes:
    return tag[:i] + bytes([tag[i] ^ (1 << bit)]) + tag[i + 1 :]


FLIPS = [TAG_LEN - 1, TAG_LEN // 2, 0]  # the last byte, one in the middle, the first


@pytest.mark.parametrize("i", FLIPS, ids=["last", "middle", "first"])
@pytest.mark.parametrize("bit", [0, 7])
def test_a_tag_off_in_one_byte_is_refused_and_marks_nothing(i: int, bit: int) -> None:
    a = SessionAuth(KEY)
    good = sign(session_key(KEY, SID), BODY)
    assert a.check(SID, 50, BODY, _flip(good, i, bit)) == "bad session credentials"
    assert a.refused == 1
    assert a._windows == {}  # the forged frame did not mark msg_id 50 as seen
    assert a.check(SID, 50, BODY, good) == ""  # the genuine one still passes


@pytest.mark.parametrize("i", FLIPS, ids=["last", "middle", "first"])
async def test_a_forged_tag_is_eperm_at_a_role_and_changes_nothing(i: int) -> None:
    toy = Toy(InMemoryTransport(1), rng=random.Random(1), pid=1, key=KEY)
    raw = signed(UvmSpawn(h=NOH), sid=SID, msg_id=77)
    forged = raw[:-TAG_LEN] + _flip(raw[-TAG_LEN:], i)
    rep = await toy.dispatch(forged, Scope.USER)
    assert (rep.errno, rep.h.re) == (Errno.EPERM, 77)
    assert (toy.auth.refused, toy.auth.replays, len(toy.trace)) == (1, 0, 0)
    assert toy.auth._windows == {}
    assert (await toy.dispatch(raw, Scope.USER)).status is Status.OK


def test_tags_are_compared_in_constant_time_over_the_whole_tag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """check() hands both full 16-byte tags to hmac.compare_digest (no early exit on a
    prefix, no truncation)."""
    seen: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    good = sign(session_key(KEY, SID), BODY)
    assert SessionAuth(KEY).check(SID, 1, BODY, _flip(good, TAG_LEN - 1)) != ""
    assert seen == [(good, _flip(good, TAG_LEN - 1))]
    assert all(len(x) == TAG_LEN for pair in seen for x in pair)


# -- the msg_id rule ------------------------------------------------------------------


def _accepts(a: SessionAuth, msg_id: int, sid: int = SID) -> bool:
    why = a.check(sid, msg_id, BODY, sign(session_key(KEY, sid), BODY))
    assert why in ("", "replayed request (msg_id already seen from this session)"), why
    return why == ""


def test_the_window_is_4096_ids_and_one_constant() -> None:
    assert REPLAY_WINDOW == params.REPLAY_WINDOW == 4096
    # The rule as the reference and the docstrings state it names this size.
    assert f"{REPLAY_WINDOW} ids" in inspect.getdoc(base.Header)  # type: ignore[operator]
    assert f"REPLAY_WINDOW ({REPLAY_WINDOW}" in (auth.__doc__ or "")
    assert "The replay window.** Each role keeps, per session" in "\n".join(gendoc._msg_id_rule())
    assert f"{REPLAY_WINDOW} ids `high`" in "\n".join(gendoc._msg_id_rule())


def test_the_windows_edge_below_the_highest_id() -> None:
    a = SessionAuth(KEY)
    high = 10_000
    assert _accepts(a, high)
    assert not _accepts(a, high - REPLAY_WINDOW)  # just outside: refused though never sent
    assert _accepts(a, high - REPLAY_WINDOW + 1)  # the oldest id inside: accepted once
    assert not _accepts(a, high - REPLAY_WINDOW + 1)  # then a duplicate
    assert _accepts(a, high - 1)
    assert not _accepts(a, high)  # the highest itself is a duplicate
    assert a.replays == 3
    assert a.refused == 0  # replays are counted apart from forgeries


def test_a_duplicate_within_the_window_is_refused_wherever_it_sits() -> None:
    a = SessionAuth(KEY)
    ids = [5000, 4999, 4000, 5000 - REPLAY_WINDOW + 1, 4800]
    for i in ids:
        assert _accepts(a, i)
    for i in ids:
        assert not _accepts(a, i)
    assert _accepts(a, 4998)  # a neighbour never sent is still new


def test_an_id_far_ahead_is_accepted_and_slides_the_window() -> None:
    a = SessionAuth(KEY)
    assert _accepts(a, 100)
    far = 100 + 10 * REPLAY_WINDOW
    assert _accepts(a, far)
    assert not _accepts(a, 101)  # now far below the window
    assert _accepts(a, far - REPLAY_WINDOW + 1)
    assert not _accepts(a, far - REPLAY_WINDOW)
    assert _accepts(a, (1 << 63) - 1)  # the largest id the header carries
    assert not _accepts(a, far + 1)


def test_the_window_slides_exactly_by_the_step() -> None:
    """A step of s < REPLAY_WINDOW keeps what was seen inside the window, shifted by s."""
    a = SessionAuth(KEY)
    assert _accepts(a, 1000)
    assert _accepts(a, 1000 + REPLAY_WINDOW - 1)  # 1000 is now the oldest id inside
    assert not _accepts(a, 1000)  # still remembered as seen
    assert _accepts(a, 1000 + REPLAY_WINDOW)  # 1000 falls out...
    assert not _accepts(a, 1000)  # ...and is refused as below the window
    assert _accepts(a, 1001)  # 1001 is the oldest inside, never sent


def test_the_window_is_per_session_and_per_role() -> None:
    mmu, uvm = SessionAuth(KEY), SessionAuth(KEY)
    assert _accepts(mmu, 20_000)
    assert _accepts(uvm, 5)  # another role: its own window
    assert _accepts(mmu, 5, sid=11)  # another session at the same role: its own window
    assert not _accepts(mmu, 5)  # this session at this role: far below its highest
    # One counter across roles: each role sees an increasing subsequence and passes it.
    counter = iter(range(30_000, 30_100))
    for n, i in enumerate(counter):
        assert _accepts(mmu if n % 3 else uvm, i)


def test_random_ids_fail_as_the_reference_warns() -> None:
    rng = random.Random(21)
    a = SessionAuth(KEY)
    refused = sum(not _accepts(a, rng.randrange(1, 1 << 40)) for _ in range(200))
    assert refused > 50


def test_live_sessions_are_those_checked_and_not_ended() -> None:
    """SessionAuth.live, the `n` of the role's fair shares (machine.share): a session is
    live once a request of it passes, until uvm says it ended; a refused one never is."""
    a = SessionAuth(KEY)
    assert _accepts(a, 1, sid=9)
    assert _accepts(a, 1, sid=10)
    assert a.check(11, 1, b"x", b"\0" * TAG_LEN)  # forged: refused, not live
    assert set(a.live) == {9, 10}
    a.forget(9)
    assert set(a.live) == {10}
    assert a.ended(9)
    assert _accepts(a, 2, sid=9)  # the tag still passes; the role answers ESESSION
    assert set(a.live) == {10}  # ... and an ended session never counts again
