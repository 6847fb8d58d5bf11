"""Service dispatch: checks in order, sync and eager-started async handlers, panics."""

from __future__ import annotations

import asyncio
import random
from typing import Any, ClassVar

import msgpack
import pytest

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
    return Toy(InMemoryTransport(1), rng=random.Random(1), pid=1)


async def test_a_sync_handler_answers_without_a_task(toy: Toy) -> None:
    out = toy.handle(encode(UvmSpawn(h=H)), Scope.USER)
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
    assert await errno_of(encode(MmuLoad(h=H, asid=1, va=0, n=1)), Scope.USER) is Errno.ENOSYS
    assert await errno_of(encode(CtlKpanic(h=H, message="m")), Scope.USER) is Errno.EPERM


async def test_a_panicked_role_answers_epanic_but_still_pings_and_dumps(toy: Toy) -> None:
    rep = await toy.dispatch(encode(CtlKpanic(h=H, message="debugger says so")), Scope.KERNEL)
    assert rep.errno is Errno.EPANIC
    assert toy.state == "panicked"
    rep = await toy.dispatch(encode(UvmSpawn(h=H)), Scope.USER)
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
