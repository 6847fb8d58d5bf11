"""Deferred replies (machine.ipc.pending) and callback calls (Peer.call_then).

A Pending is set by the handler of a later message, and the reply it stands for goes out
inside that handler: no task, no loop turn. A callback call's reply reaches its callback
inside the reply's receive callback. Both keep every rule of the paths they shortcut:
set once, exactly one reply, the in-flight limits, each call's deadline.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, ClassVar

import msgpack
import pytest

from machine.ipc.inmemory import InMemoryTransport, run_simulation
from machine.ipc.peer import CallTimeout, Identity, Peer
from machine.ipc.pending import Pending, deferred
from machine.ipc.service import Service
from machine.limits import Limits
from machine.proto import (
    NO_HEADER,
    CtlPing,
    Errno,
    Header,
    PdWakeup,
    Reply,
    Request,
    Scope,
    UvmFork,
    encode,
)
from tests.unit.ipc.test_peer_timeouts import _serve_odd_only
from tests.unit.ipc.test_service import KEY, signed

H = Header(msg_id=5, sender="t", incarnation=9)


def test_a_pending_is_set_once_and_runs_its_callbacks_in_order_at_set() -> None:
    p: Pending[int] = Pending()
    seen: list[tuple[str, int]] = []
    p.then(lambda v: seen.append(("a", v)))
    doubled = p.map(lambda v: v * 2)
    doubled.then(lambda v: seen.append(("b", v)))
    assert not p.done()
    assert seen == []
    with pytest.raises(LookupError):
        p.result()
    p.set(21)
    assert seen == [("a", 21), ("b", 42)]  # synchronously, in the order added
    p.set(99)  # ignored: the first value wins
    p.then(lambda v: seen.append(("late", v)))  # already set: runs at once
    assert p.result() == 21
    assert doubled.result() == 42
    assert seen[-1] == ("late", 21)


async def test_a_pending_is_awaitable_by_code_that_does_not_know_it() -> None:
    p: Pending[str] = Pending()
    asyncio.get_running_loop().call_soon(p.set, "x")
    assert await p == "x"
    assert await p == "x"  # set: no wait


class Parker(Service):
    """A role whose user request parks until a kernel request releases it (an mmu access
    parked on a trap until uvm's answer)."""

    role: ClassVar[str] = "parker"
    serves: ClassVar[tuple[type[Request], ...]] = (UvmFork, PdWakeup)

    def __init__(self, **kw: Any) -> None:
        super().__init__(InMemoryTransport(1), rng=random.Random(1), pid=1, key=KEY, **kw)
        self.parked: list[tuple[UvmFork, Pending[Reply]]] = []

    @deferred
    def on_fork(self, msg: UvmFork) -> Reply | Pending[Reply]:
        p: Pending[Reply] = Pending()
        self.parked.append((msg, p))
        return p

    def on_wakeup(self, msg: PdWakeup) -> Reply:
        for req, p in self.parked:
            p.set(self.ack(req))
        self.parked.clear()
        return self.ack(msg)


def test_a_deferred_reply_is_sent_by_the_handler_that_completes_it() -> None:
    async def main() -> None:
        svc = Parker()
        out = svc.handle(signed(UvmFork(h=H, asid=1), msg_id=77), Scope.USER)
        assert isinstance(out, Pending)
        assert not out.done()
        sent: list[bytes] = []
        out.then(sent.append)  # what a transport does with it
        assert svc.inflight.held[9] == 1  # counted in flight like a coroutine request
        waker = svc.handle(encode(PdWakeup(h=H)), Scope.KERNEL)
        assert isinstance(waker, bytes)
        # The parked request's reply went out inside the waker's handler: no loop turn.
        assert len(sent) == 1
        rep = msgpack.unpackb(sent[0])
        assert rep["status"] == "ok"
        assert rep["h"]["re"] == 77
        assert not svc.inflight.held
        assert svc.inflight.total == 0

    run_simulation(main())


def test_deferred_requests_count_against_the_in_flight_limits() -> None:
    async def main() -> None:
        svc = Parker(limits=Limits(inflight=2, inflight_total=8))
        for _ in range(2):
            assert isinstance(svc.handle(signed(UvmFork(h=H, asid=1)), Scope.USER), Pending)
        out = svc.handle(signed(UvmFork(h=H, asid=1)), Scope.USER)
        assert isinstance(out, bytes)
        assert Errno(msgpack.unpackb(out)["errno"]) is Errno.EAGAIN
        svc.handle(encode(PdWakeup(h=H)), Scope.KERNEL)
        assert isinstance(svc.handle(signed(UvmFork(h=H, asid=1)), Scope.USER), Pending)

    run_simulation(main())


def test_call_then_hands_the_reply_to_its_callback_in_the_receive_callback() -> None:
    async def main() -> tuple[list[Any], Peer, float]:
        bus = InMemoryTransport(1, (0.0, 0.0))
        await bus.bind("mem://toy.kernel", _serve_odd_only)
        peer = await Peer(Identity("t", 7), "mem://toy.kernel", timeout_s=30.0).open(bus)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        got: list[Any] = []
        done = asyncio.Event()

        def cb(out: Reply | BaseException) -> None:
            got.append((type(out).__name__, loop.time() - t0))
            if len(got) == 2:
                done.set()

        peer.call_then(CtlPing(h=NO_HEADER), cb)  # msg_id 1: answered
        peer.call_then(CtlPing(h=NO_HEADER), cb, timeout_s=2.0)  # 2: never answered
        await asyncio.wait_for(done.wait(), 60)
        await peer.close()
        return got, peer, t0

    got, peer, _ = run_simulation(main())
    assert got[0][0] == "CtlPingReply"
    assert got[1][0] == CallTimeout.__name__
    assert got[1][1] == pytest.approx(2.0, abs=0.01)
    assert not peer._pending
    assert not peer._deadlines
