"""Service dispatch: checks in order, signed sessions, sync and eager async handlers, panics."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any, ClassVar

import msgpack
import pytest

from machine.ipc.auth import REPLAY_WINDOW, TAG_LEN, SessionAuth, session_key, sign
from machine.ipc.inmemory import InMemoryTransport
from machine.ipc.service import PANIC_LEN, Service
from machine.ipc.tracering import TRACE_LEN, TRACE_LINE
from machine.kassert import KernelPanic
from machine.limits import Limits
from machine.proto import (
    CtlHello,
    CtlKpanic,
    CtlPing,
    Errno,
    Header,
    MmuLoad,
    PdWakeup,
    Reply,
    Request,
    Scope,
    Status,
    UserError,
    UvmFork,
    UvmSpawn,
    encode,
)

H = Header(msg_id=5, sender="t", incarnation=9)
KEY = bytes(range(32))  # the toy machine's key
_ids = itertools.count(100)


def signed(msg: Request, sid: int = 9, key: bytes | None = None, msg_id: int = 0) -> bytes:
    """msg as session `sid`'s client sends it: a fresh msg_id, signed with its key."""
    import msgspec

    h = Header(msg_id=msg_id or next(_ids), sender="client", incarnation=sid)
    body = encode(msgspec.structs.replace(msg, h=h))
    return body + sign(key if key is not None else session_key(KEY, sid), body)


class Toy(Service):
    role: ClassVar[str] = "toy"
    serves: ClassVar[tuple[type[Request], ...]] = (PdWakeup, UvmSpawn)
    mode = "ok"
    steps = 0

    async def on_wakeup(self, msg: PdWakeup) -> Reply:
        for _ in range(3):
            await asyncio.sleep(0)
            self.steps += 1
        if self.mode == "user":
            raise UserError(Errno.EBUSY, "try later")
        if self.mode == "panic":
            raise KernelPanic("toy: impossible state")
        if self.mode == "bug":
            raise ZeroDivisionError("oops")
        return self.ack(msg)

    def on_spawn(self, msg: UvmSpawn) -> Reply:
        return self.ack(msg)


@pytest.fixture
def toy() -> Toy:
    return Toy(InMemoryTransport(1), rng=random.Random(1), pid=1, key=KEY)


async def test_a_sync_handler_answers_without_a_task(toy: Toy) -> None:
    out = toy.handle(signed(UvmSpawn(h=H), msg_id=5), Scope.USER)
    assert isinstance(out, bytes)
    assert msgpack.unpackb(out)["t"] == "ctl.ack.reply"
    assert msgpack.unpackb(out)["h"]["re"] == 5


async def test_an_async_handler_is_started_eagerly_and_finished_as_a_task(toy: Toy) -> None:
    out = toy.handle(encode(PdWakeup(h=H)), Scope.KERNEL)
    assert not isinstance(out, bytes)
    assert toy.steps == 0  # ran up to its first wait
    raw = await out  # type: ignore[misc]
    assert toy.steps == 3
    assert msgpack.unpackb(raw)["status"] == "ok"


@pytest.mark.parametrize(
    ("mode", "errno", "panicked"),
    [("user", "EBUSY", False), ("panic", "EPANIC", True), ("bug", "EPANIC", True)],
)
async def test_errors_raised_after_a_wait(toy: Toy, mode: str, errno: str, panicked: bool) -> None:
    toy.mode = mode
    rep = await toy.dispatch(encode(PdWakeup(h=H)), Scope.KERNEL)
    assert rep.status is Status.ERROR
    assert rep.errno == errno
    assert (toy.state == "panicked") is panicked
    if mode == "bug":
        assert "unexpected ZeroDivisionError" in toy.panic_message


async def test_checks_come_in_order(toy: Toy) -> None:
    async def errno_of(raw: bytes, scope: Scope) -> Any:
        return (await toy.dispatch(raw, scope)).errno

    assert await errno_of(b"\xc1", Scope.USER) is Errno.EBADMSG
    bad_version = Header(msg_id=1, sender="t", incarnation=9, proto=(2, 0))
    assert await errno_of(encode(CtlHello(h=bad_version)), Scope.USER) is Errno.EPROTO
    assert await errno_of(encode(PdWakeup(h=H)), Scope.USER) is Errno.EPERM
    assert await errno_of(encode(UvmSpawn(h=H)), Scope.KERNEL) is Errno.EPERM
    assert await errno_of(signed(MmuLoad(h=H, asid=1, va=0, n=1)), Scope.USER) is Errno.ENOSYS
    assert await errno_of(encode(CtlKpanic(h=H, message="m")), Scope.USER) is Errno.EPERM


async def errno_of(toy: Toy, raw: bytes) -> Errno | None:
    return (await toy.dispatch(raw, Scope.USER)).errno


async def test_a_session_request_must_carry_its_sessions_tag(toy: Toy) -> None:
    assert await errno_of(toy, signed(UvmSpawn(h=H))) is None
    # Unsigned, signed with another session's key, with a random key, or a guessed tag.
    assert await errno_of(toy, encode(UvmSpawn(h=H))) is Errno.EPERM
    assert await errno_of(toy, signed(UvmSpawn(h=H), key=session_key(KEY, 10))) is Errno.EPERM
    assert await errno_of(toy, signed(UvmSpawn(h=H), key=bytes(32))) is Errno.EPERM
    raw = signed(UvmSpawn(h=H))
    assert await errno_of(toy, raw[:-TAG_LEN] + bytes(TAG_LEN)) is Errno.EPERM
    # The tag covers every byte: one byte of the body changed is refused.
    raw = signed(MmuLoad(h=H, asid=1, va=0x1000, n=1))
    i = raw.rindex(b"\xcd\x10\x00")  # va 0x1000 as msgpack uint16
    forged = raw[:i] + b"\xcd\x20\x00" + raw[i + 3 : -TAG_LEN] + raw[-TAG_LEN:]
    assert await errno_of(toy, forged) is Errno.EPERM
    assert toy.auth.refused == 5
    assert toy.state == "running"


async def test_a_replayed_request_is_refused(toy: Toy) -> None:
    raw = signed(UvmSpawn(h=H), msg_id=1000)
    assert await errno_of(toy, raw) is None
    assert await errno_of(toy, raw) is Errno.EPERM  # the same bytes again
    # Later ids pass; an earlier id not yet seen passes once (the transport may reorder);
    # one older than the window never does.
    assert await errno_of(toy, signed(UvmSpawn(h=H), msg_id=1005)) is None
    assert await errno_of(toy, signed(UvmSpawn(h=H), msg_id=1003)) is None
    assert await errno_of(toy, signed(UvmSpawn(h=H), msg_id=1003)) is Errno.EPERM
    far = 1005 + REPLAY_WINDOW
    assert await errno_of(toy, signed(UvmSpawn(h=H), msg_id=far)) is None
    assert await errno_of(toy, signed(UvmSpawn(h=H), msg_id=1004)) is Errno.EPERM
    assert toy.auth.replays == 3
    # Another session's window is its own.
    assert await errno_of(toy, signed(UvmSpawn(h=H), sid=11, msg_id=1000)) is None


async def test_only_public_requests_come_without_a_session(toy: Toy) -> None:
    anon = Header(msg_id=1, sender="client", incarnation=0)
    assert (await toy.dispatch(encode(CtlHello(h=anon)), Scope.USER)).status is Status.OK
    assert (await toy.dispatch(encode(CtlPing(h=anon)), Scope.USER)).status is Status.OK
    assert await errno_of(toy, encode(UvmSpawn(h=anon))) is Errno.EPERM
    # A public request may be signed too (a client's keepalive ping renews its lease).
    assert await errno_of(toy, signed(CtlPing(h=H))) is None


async def test_a_panicked_role_answers_epanic_but_still_pings_and_dumps(toy: Toy) -> None:
    rep = await toy.dispatch(encode(CtlKpanic(h=H, message="debugger says so")), Scope.KERNEL)
    assert rep.errno is Errno.EPANIC
    assert toy.state == "panicked"
    rep = await toy.dispatch(signed(UvmSpawn(h=H)), Scope.USER)
    assert (rep.errno, rep.detail) == (Errno.EPANIC, "debugger says so")
    ping = await toy.dispatch(encode(CtlPing(h=H)), Scope.KERNEL)
    assert ping.errno is Errno.EPANIC  # the supervisor's heartbeat sees the panic
    hello = await toy.dispatch(encode(CtlHello(h=H)), Scope.KERNEL)
    assert hello.status is Status.OK


def test_startup_fails_without_a_handler() -> None:
    class Broken(Service):
        role: ClassVar[str] = "broken"
        serves: ClassVar[tuple[type[Request], ...]] = (PdWakeup,)

    with pytest.raises(TypeError, match="no handler on_wakeup"):
        Broken(InMemoryTransport(1), rng=random.Random(1))


# -- hostile headers and last-resort replies (issue 9 red team) ---------------------------


def _raw_header(**h: Any) -> dict[str, Any]:
    return {"msg_id": 5, "sender": "x", "incarnation": 0, "proto": [1, 3], **h}


async def test_a_negative_incarnation_is_einval_and_the_role_serves_on(toy: Toy) -> None:
    """/tmp/rt/a_neg3: incarnation -1 plus 16 bytes reached int.to_bytes (OverflowError)
    and escaped handle() with no reply."""
    body = msgpack.packb({"t": "ctl.stats", "h": _raw_header(incarnation=-1)})
    out = toy.handle(body + bytes(TAG_LEN), Scope.USER)
    assert isinstance(out, bytes)
    rep = msgpack.unpackb(out)
    assert (rep["errno"], rep["h"]["re"]) == ("EINVAL", 5)
    assert await errno_of(toy, signed(UvmSpawn(h=H))) is None
    assert toy.state == "running"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("msg_id", -1),
        ("msg_id", 1 << 63),
        ("incarnation", -1),
        ("incarnation", (1 << 64) - 1),
        ("re", -5),
        ("sent_ns", -1),
        ("sender", "A" * 65),
    ],
)
async def test_header_numbers_and_sender_are_bounded(toy: Toy, field: str, value: Any) -> None:
    body = msgpack.packb({"t": "ctl.ping", "h": _raw_header(**{field: value})})
    for raw in (body, body + bytes(TAG_LEN)):
        rep = await toy.dispatch(raw, Scope.USER)
        assert rep.errno is Errno.EINVAL, rep
    assert len(toy.trace) == 0  # refused before anything is traced


def test_session_auth_check_answers_any_int_without_raising() -> None:
    auth = SessionAuth(KEY)
    for sid, mid in [(-1, 1), (1 << 64, 1), (1 << 200, 1), (0, 1), (9, 0), (9, -1), (9, 1 << 64)]:
        assert auth.check(sid, mid, b"body", bytes(TAG_LEN)) == "bad session credentials"
    # Negative msg_ids could not sneak under the replay window either.
    body = b"body"
    assert auth.check(9, 1, body, sign(session_key(KEY, 9), body)) == ""
    assert auth.check(9, -1, body, sign(session_key(KEY, 9), body)) != ""


async def test_a_check_that_raises_is_answered_einval_and_nothing_is_dispatched(
    toy: Toy, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(h: Header) -> bool:
        raise RuntimeError("bug in a hook")

    monkeypatch.setattr(toy, "session_ok", broken)
    out = toy.handle(signed(UvmSpawn(h=H), msg_id=77), Scope.USER)
    assert isinstance(out, bytes)
    rep = msgpack.unpackb(out)
    assert (rep["errno"], rep["h"]["re"]) == ("EINVAL", 77)
    assert toy.check_errors == 1
    assert toy.state == "running"
    assert any("RuntimeError" in line for line in toy.trace)


async def test_trace_lines_and_panic_messages_are_bounded(toy: Toy) -> None:
    toy.trace.append("x" * 100_000)
    toy.trace.extend(["y" * 100_000] * 3)
    assert all(len(line) <= TRACE_LINE for line in toy.trace)
    for _ in range(2 * TRACE_LEN):
        toy.trace.append("z")
    assert len(toy.trace) == TRACE_LEN
    toy.panic("p" * 100_000)
    assert len(toy.panic_message) <= PANIC_LEN


class Slow(Service):
    """A role whose one user request waits until released (a fault waiting for memory)."""

    role: ClassVar[str] = "slow"
    serves: ClassVar[tuple[type[Request], ...]] = (UvmFork,)

    def __init__(self, **kw: Any) -> None:
        super().__init__(InMemoryTransport(1), rng=random.Random(1), pid=1, key=KEY, **kw)
        self.release = asyncio.Event()

    async def on_fork(self, msg: UvmFork) -> Reply:
        await self.release.wait()
        return self.ack(msg)


async def test_a_session_cannot_pile_up_requests_in_flight() -> None:
    """Each waiting request is a task: limits.inflight (per session) and inflight_total
    (per role) bound them with EAGAIN, so pipelining without waiting cannot bloat a role."""
    slow = Slow(limits=Limits(inflight=2, inflight_total=3))
    waiting = [slow.handle(signed(UvmFork(h=H, asid=1)), Scope.USER) for _ in range(2)]
    assert all(not isinstance(w, bytes) for w in waiting)
    assert await errno_of_slow(slow, 9) is Errno.EAGAIN  # the session's own limit
    waiting.append(slow.handle(signed(UvmFork(h=H, asid=1), sid=10), Scope.USER))
    assert await errno_of_slow(slow, 11) is Errno.EAGAIN  # the role's limit, another session
    slow.release.set()
    for w in waiting:
        assert msgpack.unpackb(await w)["status"] == "ok"  # type: ignore[misc]
    assert not slow.inflight.held
    assert slow.inflight.total == 0
    slow.release.clear()
    again = slow.handle(signed(UvmFork(h=H, asid=1)), Scope.USER)
    assert not isinstance(again, bytes)  # room again
    slow.release.set()
    await again  # type: ignore[misc]


async def errno_of_slow(slow: Slow, sid: int) -> Errno | None:
    out = slow.handle(signed(UvmFork(h=H, asid=1), sid=sid), Scope.USER)
    assert isinstance(out, bytes), "refused at once, before any task"
    return Errno(msgpack.unpackb(out)["errno"])


async def test_inflight_total_greedy_session_is_refused_first_the_others_still_get_in() -> None:
    """inflight_total shared fairly (machine.share): three live sessions, cap 12, share 3.
    The greedy one is refused past its share with EAGAIN naming it, while the others
    still get their share in flight; all of it comes back."""
    slow = Slow(limits=Limits(inflight=100, inflight_total=12))
    for sid in (10, 11):  # seen by the role (a request that passed its checks)
        assert isinstance(slow.handle(signed(CtlPing(h=H), sid=sid), Scope.USER), bytes)
    assert set(slow.auth.live) == {10, 11}
    waiting = [slow.handle(signed(UvmFork(h=H, asid=1), sid=9), Scope.USER) for _ in range(3)]
    assert all(not isinstance(w, bytes) for w in waiting)  # 9: 3 of 12, its share
    out = slow.handle(signed(UvmFork(h=H, asid=1), sid=9), Scope.USER)
    assert isinstance(out, bytes)
    rep = msgpack.unpackb(out)
    assert rep["errno"] == "EAGAIN"
    assert "fair share of inflight_total" in rep["detail"]
    for sid in (10, 11):
        more = [slow.handle(signed(UvmFork(h=H, asid=1), sid=sid), Scope.USER) for _ in range(3)]
        assert all(not isinstance(w, bytes) for w in more), sid
        waiting += more
    assert slow.inflight.held == {9: 3, 10: 3, 11: 3}
    slow.release.set()
    for w in waiting:
        assert msgpack.unpackb(await w)["status"] == "ok"  # type: ignore[misc]
    assert slow.inflight.total == 0
    assert slow.all_counters()["share_refused_inflight"] == 1


@pytest.mark.parametrize("key_len", [0, 16, 32, 64, 65, 200])
@pytest.mark.parametrize("body_len", [0, 1, 90, 4096, 70_000])
def test_the_precomputed_mac_is_hmac_sha256(key_len: int, body_len: int) -> None:
    import hashlib
    import hmac

    from machine.ipc.auth import Mac

    key, body = bytes(range(key_len % 256))[:key_len] * 1, bytes([7]) * body_len
    key = (key * (key_len // max(len(key), 1) + 1))[:key_len]
    want = hmac.new(key, body, hashlib.sha256).digest()[:TAG_LEN]
    assert Mac(key).tag(body) == want == sign(key, body)
    assert Mac(key).tag(memoryview(body)) == want
