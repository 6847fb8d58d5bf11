"""The in-memory bus's notes of signed frames (machine.ipc.auth.SignedFrames).

A role's check takes a note instead of a second HMAC only for the very frame object an
Identity signed, with the session's own key and its own tag; everything else (a copy, an
altered frame, another session's key, a frame built by hand, a note evicted) gets the full
HMAC, and the replay window runs either way.
"""

from __future__ import annotations

import random

import pytest

from machine.ipc.auth import TAG_LEN, SessionAuth, SignedFrames, session_key, sign
from machine.ipc.inmemory import InMemoryTransport, run_simulation
from machine.ipc.peer import Identity, Peer
from machine.ipc.transport import Clock
from machine.proto import NO_HEADER, Errno, ErrorReply, Status, UvmSpawn
from tests.unit.ipc.test_service import KEY, Toy

SID = 9


class _Still(Clock):
    """Header stamps without a running loop."""

    def now_ns(self) -> int:
        return 0


def _frame(ident: Identity) -> bytes:
    return ident.frame(UvmSpawn(h=ident.header()))


def _check(auth: SessionAuth, frame: bytes, sid: int = SID) -> str:
    """What Service._check does with a signed user frame (machine.ipc.checks)."""
    from machine.proto import decode_request

    body = memoryview(frame)[:-TAG_LEN]
    msg = decode_request(body)
    return auth.check(sid, msg.h.msg_id, body, frame[-TAG_LEN:])


def _pair() -> tuple[Identity, SessionAuth, SignedFrames]:
    notes = SignedFrames()
    ident = Identity("client", SID, _Still(), key=session_key(KEY, SID))
    ident.signed = notes
    return ident, SessionAuth(KEY, signed=notes), notes


def test_a_noted_frame_is_accepted_from_its_note_once_and_its_replay_is_refused() -> None:
    ident, auth, notes = _pair()
    frame = _frame(ident)
    assert _check(auth, frame) == ""
    assert notes.taken == 1
    # The note is used up: the same frame again takes the full HMAC and the window refuses it.
    assert "replayed" in _check(auth, frame)
    assert notes.taken == 1


def test_a_copy_of_a_noted_frame_takes_the_full_hmac() -> None:
    ident, auth, notes = _pair()
    frame = _frame(ident)
    copy = bytes(bytearray(frame))
    assert copy == frame
    assert copy is not frame
    assert _check(auth, copy) == ""
    assert notes.taken == 0


def test_an_altered_frame_is_refused_though_the_original_was_noted() -> None:
    ident, auth, notes = _pair()
    frame = _frame(ident)
    i = frame.index(b"client")
    forged = frame[:i] + b"clienu" + frame[i + 6 :]  # still a valid request, other bytes
    assert _check(auth, forged) == "bad session credentials"
    assert notes.taken == 0
    assert _check(auth, frame) == ""  # the original, from its note
    assert notes.taken == 1


def test_a_frame_signed_with_another_sessions_key_is_refused() -> None:
    notes = SignedFrames()
    other = Identity("client", SID, _Still(), session_key(KEY, SID + 1))  # another key
    other.signed = notes
    auth = SessionAuth(KEY, signed=notes)
    assert _check(auth, _frame(other)) == "bad session credentials"  # the note's key differs
    assert auth.refused == 1


def test_a_noted_frame_is_the_frame_sign_makes() -> None:
    ident, _, _ = _pair()
    frame = _frame(ident)
    body = frame[:-TAG_LEN]
    assert frame == body + sign(session_key(KEY, SID), body)


def test_notes_are_bounded_and_an_evicted_frame_is_checked_in_full() -> None:
    ident, auth, notes = _pair()
    frames = [_frame(ident) for _ in range(SignedFrames.MAX + 5)]
    assert len(notes._notes) == SignedFrames.MAX
    assert _check(auth, frames[0]) == ""  # evicted: the full HMAC, still right
    assert notes.taken == 0
    assert _check(auth, frames[-1]) == ""
    assert notes.taken == 1


def test_a_hand_built_frame_is_checked_as_before() -> None:
    _, auth, notes = _pair()
    ident = Identity("client", SID, _Still())  # no key: frames unsigned; sign by hand below
    body = ident.frame(UvmSpawn(h=ident.header()))
    assert _check(auth, body + sign(session_key(KEY, SID), body)) == ""
    assert _check(auth, ident.frame(UvmSpawn(h=ident.header())) + bytes(TAG_LEN)) != ""
    assert notes.taken == 0


@pytest.mark.parametrize("good", [True, False])
def test_on_the_bus_a_session_request_is_checked_from_its_note(good: bool) -> None:
    """A client Identity on the in-memory bus notes its frames; the role takes the note for
    its own session's key and refuses (EPERM) a request signed with another's."""

    async def main() -> tuple[object, int]:
        bus = InMemoryTransport(1)
        toy = Toy(bus, rng=random.Random(1), key=KEY)
        await toy.start("inproc://toy/kernel", "inproc://toy/user", "inproc://toy/pub")
        key = session_key(KEY, SID if good else SID + 1)
        ident = Identity("client", SID, key=key)
        peer = await Peer(ident, "inproc://toy/user").open(bus)
        assert ident.signed is bus.signed
        rep = await peer.call(UvmSpawn(h=NO_HEADER))
        await peer.close()
        await toy.close()
        assert bus.signed is not None
        return rep, bus.signed.taken

    rep, taken = run_simulation(main())
    assert taken == 1  # a note was used up either way
    if good:
        assert not isinstance(rep, ErrorReply) or rep.errno is not Errno.EPERM
    else:
        assert isinstance(rep, ErrorReply)
        assert rep.status is Status.ERROR
        assert rep.errno is Errno.EPERM
