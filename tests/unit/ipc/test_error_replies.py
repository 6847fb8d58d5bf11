"""Every error reply echoes the request's msg_id whenever its header can be read (issue 21).

A client matches replies on `re`: an error answered with re=0 to a request whose
msg_id could be read leaves it waiting out its timeout. One case per path of the
checks (machine.ipc.checks, Service._check) and of the last resort; only bytes
whose header cannot be read are answered with re=0. Each refusal changes nothing:
the msg_id is still unused (a genuine request with it passes afterwards), no window
moved, nothing traced or dispatched.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from machine.ipc.auth import TAG_LEN, session_key, sign
from machine.ipc.service import Service
from machine.limits import Limits
from machine.proto import (
    Errno,
    Header,
    Scope,
    Status,
    UvmFork,
    UvmSpawn,
    decode_reply,
)
from tests.unit.ipc.test_service import KEY, Slow, Toy, signed

MID = 4242
SID = 9
NOH = Header(msg_id=1, sender="", incarnation=0)  # signed() stamps the real header


def hdr(**kw: Any) -> dict[str, Any]:
    return {"msg_id": MID, "sender": "client", "incarnation": SID, **kw}


def packed(obj: Any, *, tag: bool = True, key: bytes | None = None) -> bytes:
    """obj's msgpack bytes, followed by session SID's tag (or `key`'s) unless tag=False."""
    body = msgpack.packb(obj)
    return body + sign(key or session_key(KEY, SID), body) if tag else body


def flip(frame: bytes, i: int) -> bytes:
    """frame with byte i of its tag (0..15) changed in its lowest bit."""
    j = len(frame) - TAG_LEN + i
    return frame[:j] + bytes([frame[j] ^ 1]) + frame[j + 1 :]


LOAD = {"t": "mmu.load", "asid": 1, "va": 0x1000, "n": 1}

#: (path, frame, endpoint, errno): every stateless refusal of a request whose header reads.
READABLE: list[tuple[str, bytes, Scope, Errno]] = [
    ("unknown tag, signed", packed({"t": "nosuch.verb", "h": hdr()}), Scope.USER, Errno.EBADMSG),
    ("unknown tag, unsigned", packed({"t": "nosuch.verb", "h": hdr()}, tag=False), Scope.USER,
     Errno.EBADMSG),
    ("unknown tag, session 0", packed({"t": "x", "h": hdr(incarnation=0)}, tag=False),
     Scope.USER, Errno.EBADMSG),
    ("unknown tag, kernel", packed({"t": "nosuch.verb", "h": hdr()}, tag=False), Scope.KERNEL,
     Errno.EBADMSG),
    ("empty tag", packed({"t": "", "h": hdr()}), Scope.USER, Errno.EBADMSG),
    ("tag not a string", packed({"t": 5, "h": hdr()}), Scope.USER, Errno.EBADMSG),
    ("no tag", packed({"h": hdr()}), Scope.USER, Errno.EBADMSG),
    ("a reply as a request", packed({"t": "ctl.ack.reply", "h": hdr()}), Scope.USER,
     Errno.EBADMSG),
    ("an event as a request", packed({"t": "ctl.panic", "h": hdr()}), Scope.USER,
     Errno.EBADMSG),
    ("wrong field type", packed({**LOAD, "asid": "one", "h": hdr()}), Scope.USER, Errno.EINVAL),
    ("missing field", packed({"t": "mmu.load", "asid": 1, "n": 1, "h": hdr()}), Scope.USER,
     Errno.EINVAL),
    ("negative field", packed({**LOAD, "n": -1, "h": hdr()}), Scope.USER, Errno.EINVAL),
    ("field above its range", packed({**LOAD, "va": (1 << 64) - 1, "h": hdr()}), Scope.USER,
     Errno.EINVAL),
    ("header incarnation -1", packed({**LOAD, "h": hdr(incarnation=-1)}), Scope.USER,
     Errno.EINVAL),
    ("header sender too long", packed({**LOAD, "h": hdr(sender="A" * 65)}), Scope.USER,
     Errno.EINVAL),
    ("header proto not an array", packed({**LOAD, "h": hdr(proto="1.7")}), Scope.USER,
     Errno.EINVAL),
    ("header sent_ns negative", packed({**LOAD, "h": hdr(sent_ns=-1)}), Scope.USER,
     Errno.EINVAL),
    ("another major version", packed({**LOAD, "h": hdr(proto=[2, 0])}), Scope.USER,
     Errno.EPROTO),
    ("kernel message on the user endpoint", packed({"t": "pd.wakeup", "h": hdr()}), Scope.USER,
     Errno.EPERM),
    ("user message on the kernel endpoint", packed({"t": "uvm.spawn", "h": hdr()}, tag=False),
     Scope.KERNEL, Errno.EPERM),
    ("session request without a session", packed({"t": "uvm.spawn", "h": hdr(incarnation=0)},
     tag=False), Scope.USER, Errno.EPERM),
    ("session request unsigned", packed({"t": "uvm.spawn", "h": hdr()}, tag=False), Scope.USER,
     Errno.EPERM),
    ("tag of another key", packed({"t": "uvm.spawn", "h": hdr()}, key=bytes(32)), Scope.USER,
     Errno.EPERM),
    ("tag's last byte flipped", flip(packed({"t": "uvm.spawn", "h": hdr()}), TAG_LEN - 1),
     Scope.USER, Errno.EPERM),
    ("tag of a session nobody has", packed({"t": "uvm.spawn", "h": hdr(incarnation=11)}),
     Scope.USER, Errno.EPERM),
]  # fmt: skip


def _state(toy: Service) -> tuple[Any, ...]:
    return (
        dict(toy.auth._windows),
        len(toy.trace),
        toy.state,
        toy.check_errors,
        dict(toy.inflight.held),
    )


@pytest.fixture
def toy() -> Toy:
    import random

    from machine.ipc.inmemory import InMemoryTransport

    return Toy(InMemoryTransport(1), rng=random.Random(1), pid=1, key=KEY)


async def reply_to(svc: Service, raw: bytes, scope: Scope = Scope.USER) -> Any:
    return await svc.dispatch(raw, scope)


@pytest.mark.parametrize(
    ("frame", "scope", "errno"),
    [c[1:] for c in READABLE],
    ids=[c[0] for c in READABLE],
)
async def test_an_error_reply_echoes_a_readable_msg_id(
    toy: Toy, frame: bytes, scope: Scope, errno: Errno
) -> None:
    before = _state(toy)
    rep = await reply_to(toy, frame, scope)
    assert (rep.status, rep.errno, rep.h.re) == (Status.ERROR, errno, MID), rep.detail
    assert _state(toy) == before  # nothing changed: no window, no trace, no dispatch
    # The msg_id is still unused: the session's genuine request with it passes.
    ok = await reply_to(toy, signed(UvmSpawn(h=NOH), sid=SID, msg_id=MID))
    assert (ok.status, ok.h.re) == (Status.OK, MID)


UNREADABLE: list[tuple[str, bytes]] = [
    ("not msgpack", b"\xc1"),
    ("empty", b""),
    ("not a map", msgpack.packb([1, {"msg_id": MID}])),
    ("no header", msgpack.packb({"t": "uvm.spawn"})),
    ("header not a map", msgpack.packb({"t": "uvm.spawn", "h": [MID, "c", SID]})),
    (
        "msg_id 0 (none: re 0 is its echo too)",
        msgpack.packb({"t": "uvm.spawn", "h": hdr(msg_id=0)}),
    ),
    ("msg_id negative", msgpack.packb({"t": "uvm.spawn", "h": hdr(msg_id=-1)})),
    ("msg_id 2**63", msgpack.packb({"t": "uvm.spawn", "h": hdr(msg_id=1 << 63)})),
    ("msg_id a string", msgpack.packb({"t": "uvm.spawn", "h": hdr(msg_id="4242")})),
    ("truncated", msgpack.packb({"t": "uvm.spawn", "h": hdr()})[:-3]),
]


@pytest.mark.parametrize("body", [c[1] for c in UNREADABLE], ids=[c[0] for c in UNREADABLE])
@pytest.mark.parametrize("tagged", [False, True], ids=["bare", "signed"])
async def test_only_an_unreadable_header_is_answered_with_re_0(
    toy: Toy, body: bytes, tagged: bool
) -> None:
    raw = body + sign(session_key(KEY, SID), body) if tagged else body
    before = _state(toy)
    rep = await reply_to(toy, raw)
    assert (rep.status, rep.h.re) == (Status.ERROR, 0)
    assert _state(toy) == before


async def test_a_replayed_request_is_answered_to_its_msg_id(toy: Toy) -> None:
    raw = signed(UvmSpawn(h=NOH), sid=SID, msg_id=MID)
    assert (await reply_to(toy, raw)).status is Status.OK
    before = _state(toy)
    rep = await reply_to(toy, raw)
    assert (rep.errno, rep.h.re) == (Errno.EPERM, MID)
    assert "replayed" in rep.detail
    assert _state(toy) == before


async def test_an_ended_sessions_request_is_answered_to_its_msg_id(
    toy: Toy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(toy, "session_ok", lambda h: False)
    raw = signed(UvmSpawn(h=NOH), sid=SID, msg_id=MID)
    rep = await reply_to(toy, raw)
    assert (rep.status, rep.h.re) == (Status.ERROR, MID)


async def test_enosys_and_epanic_are_answered_to_their_msg_id(toy: Toy) -> None:
    load = packed({**LOAD, "h": hdr()})
    rep = await reply_to(toy, load)
    assert (rep.errno, rep.h.re) == (Errno.ENOSYS, MID)
    kp = packed({"t": "ctl.kpanic", "message": "m", "h": hdr(msg_id=7)}, tag=False)
    rep = await reply_to(toy, kp, Scope.KERNEL)
    assert (rep.errno, rep.h.re) == (Errno.EPANIC, 7)
    assert toy.state == "panicked"
    spawn = packed({"t": "uvm.spawn", "h": hdr(msg_id=MID + 1)})
    rep = await reply_to(toy, spawn)
    assert (rep.errno, rep.h.re) == (Errno.EPANIC, MID + 1)


async def test_eagain_is_answered_to_its_msg_id() -> None:
    slow = Slow(limits=Limits(inflight=1, inflight_total=4))
    waiting = slow.handle(signed(UvmFork(h=NOH, asid=1), sid=SID), Scope.USER)
    assert not isinstance(waiting, bytes)
    out = slow.handle(signed(UvmFork(h=NOH, asid=1), sid=SID, msg_id=MID), Scope.USER)
    assert isinstance(out, bytes)
    rep = decode_reply(out)
    assert (rep.errno, rep.h.re) == (Errno.EAGAIN, MID)
    slow.release.set()
    await waiting  # type: ignore[misc]


async def test_a_check_that_raises_is_answered_to_a_signed_frames_msg_id(
    toy: Toy, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> str:
        raise RuntimeError("bug in a check")

    monkeypatch.setattr(toy.auth, "check", broken)
    rep = await reply_to(toy, packed({"t": "uvm.spawn", "h": hdr()}))
    assert (rep.errno, rep.h.re) == (Errno.EINVAL, MID)
    assert toy.check_errors == 1
