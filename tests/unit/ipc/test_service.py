"""Service dispatch: checks in order, signed sessions, sync and eager async handlers, panics."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any, ClassVar

import msgpack
import pytest

from machine.ipc.auth import REPLAY_WINDOW, TAG_LEN, session_key, sign
from machine.ipc.inmemory import InMemoryTransport
from machine.ipc.service import Service, UserError
from machine.kassert import KernelPanic
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
