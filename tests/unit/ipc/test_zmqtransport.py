"""The ZeroMQ socket wrapper: bounded drains that never strand input, framing, user HWMs.

The reader tests drive LoopSocket with a fake socket whose ZMQ_FD is a pipe
that never becomes readable: input is then reached only through drains the
wrapper schedules itself, which is exactly the edge-trigger contract (a drain
cut short must come back on its own).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
from typing import Any

import pytest
import zmq

from machine.ipc import zmqsocket, zmqtransport
from machine.ipc.zmqsocket import DRAIN_BATCH, LoopSocket
from machine.ipc.zmqtransport import USER_HWM, ZmqTransport
from machine.testing import poll_for


class FakeSocket:
    """Queued messages (lists of parts), read as libzmq would: part by part with RCVMORE."""

    def __init__(self, messages: list[list[bytes]]) -> None:
        self.queue: collections.deque[list[bytes]] = collections.deque(messages)
        self.current: list[bytes] = []
        self.more = False
        self.rfd, self.wfd = os.pipe()
        self.sent: list[list[bytes]] = []
        self.sending: list[bytes] = []  # the parts of the message being sent
        self.uncopied = 0

    def getsockopt(self, opt: int) -> int:
        if opt == zmq.FD:
            return self.rfd
        if opt == zmq.EVENTS:
            return zmq.POLLOUT | (zmq.POLLIN if self.queue or self.current else 0)
        if opt == zmq.RCVMORE:
            return int(self.more)
        raise AssertionError(opt)

    get = getsockopt

    def recv(self, flags: int = 0, copy: bool = True) -> Any:
        if not self.current:
            if not self.queue:
                raise zmq.Again()
            self.current = list(self.queue.popleft())
        part = self.current.pop(0)
        self.more = bool(self.current)
        if not copy:
            self.uncopied += 1
            return zmq.Frame(part)
        return part

    def recv_multipart(self, flags: int = 0, copy: bool = True) -> list[bytes]:
        parts = [self.recv(flags)]
        while self.more:
            parts.append(self.recv(flags))
        return parts

    def send(self, part: bytes, flags: int = 0) -> None:
        if not self.sending:
            self.sent.append(self.sending)
        self.sending.append(part)
        if not flags & zmq.SNDMORE:
            self.sending = []

    def close(self, linger: int = 0) -> None:
        os.close(self.rfd)
        os.close(self.wfd)


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """perf_counter as the handlers advance it (their 'work' is a number, not a sleep)."""
    now = [0.0]
    monkeypatch.setattr(zmqsocket, "_clock", lambda: now[0])
    return now


async def test_a_drain_takes_one_batch_per_turn_and_comes_back_for_the_rest(
    fake_clock: list[float],
) -> None:
    fake = FakeSocket([[b"id", b"%d" % i] for i in range(100)])
    got: list[bytes] = []
    seen_by_turn: list[int] = []

    def other_work() -> None:  # another callback of the loop, e.g. the kernel socket's reader
        seen_by_turn.append(len(got))
        if len(got) < 100:
            asyncio.get_running_loop().call_soon(other_work)

    ls = LoopSocket(fake, lambda frames: got.append(frames[1]))  # type: ignore[arg-type]
    asyncio.get_running_loop().call_soon(other_work)
    await poll_for(lambda: len(got) == 100, timeout_s=5, what="every message")
    # Every message once, in order, though the fd never fired: no drain was lost.
    assert got == [b"%d" % i for i in range(100)]
    # Between two looks by the other callback, at most one batch was handled.
    steps = [b - a for a, b in itertools.pairwise(seen_by_turn)]
    assert max(steps, default=100) <= DRAIN_BATCH, seen_by_turn
    assert ls.turns >= 100 // DRAIN_BATCH
    ls.close(0)


async def test_a_drain_stops_when_its_time_budget_is_spent(fake_clock: list[float]) -> None:
    fake = FakeSocket([[b"id", b"x"] for _ in range(10)])
    per_turn: list[int] = []
    handled = [0]

    def slow_handler(frames: list[bytes]) -> None:
        handled[0] += 1
        fake_clock[0] += 0.0015  # each request costs 1.5 ms of handler time

    def watch() -> None:
        per_turn.append(handled[0])
        if handled[0] < 10:
            asyncio.get_running_loop().call_soon(watch)

    ls = LoopSocket(fake, slow_handler)  # type: ignore[arg-type]
    asyncio.get_running_loop().call_soon(watch)
    await poll_for(lambda: handled[0] == 10, timeout_s=5, what="every message")
    steps = [b - a for a, b in itertools.pairwise(per_turn)]
    assert max(steps, default=10) <= 2, per_turn  # 2 ms: two 1.5 ms requests, then yield
    ls.close(0)


async def test_at_most_one_drain_is_pending_however_many_replies_are_sent(
    fake_clock: list[float],
) -> None:
    fake = FakeSocket([[b"id", b"x"] for _ in range(200)])
    ls: LoopSocket | None = None
    handled = [0]

    def reply_at_once(frames: list[bytes]) -> None:  # a sync handler's reply, sent in the drain
        handled[0] += 1
        assert ls is not None
        ls.send([frames[0], b"reply"])

    ls = LoopSocket(fake, reply_at_once)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    # One turn: one batch, not one batch per reply sent (which would compound).
    assert handled[0] <= DRAIN_BATCH
    await poll_for(lambda: handled[0] == 200, timeout_s=5, what="every message")
    assert fake.sent == [[b"id", b"reply"]] * 200  # each reply whole: [identity, payload]
    ls.close(0)


async def test_a_message_with_extra_parts_is_dropped_without_copying_them() -> None:
    fake = FakeSocket(
        [
            [b"id", b"one"],
            [b"id", b"evil", *([b"\0" * 1024] * 50)],
            [b"id", b"two"],
        ]
    )
    got: list[list[bytes]] = []
    ls = LoopSocket(fake, got.append, max_parts=2)  # type: ignore[arg-type]
    await poll_for(lambda: len(got) == 2, timeout_s=5, what="the two good messages")
    assert got == [[b"id", b"one"], [b"id", b"two"]]
    assert ls.dropped == 1
    assert fake.uncopied == 50  # the extra parts were let go, not copied or joined
    ls.close(0)


async def test_a_router_answers_only_identity_plus_one_frame() -> None:
    """Over real sockets: a 3-part request is dropped (before, its last part was served)."""
    t = ZmqTransport()
    calls: list[bytes] = []

    def handler(payload: bytes) -> bytes:
        calls.append(payload)
        return b"re:" + payload

    srv = await t.bind("tcp://127.0.0.1:*", handler)
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(srv.endpoint)
    try:
        d.send_multipart([b"junk", b"ping"])
        d.send(b"ping2")
        await poll_for(lambda: d.poll(0) != 0, timeout_s=10, what="a reply")
        assert d.recv() == b"re:ping2"
        assert calls == [b"ping2"]
        assert isinstance(srv, zmqtransport.ZmqServer)
        assert srv.dropped == 1
    finally:
        d.close()
        ctx.term()
        await srv.close()
        await t.close()


async def test_a_user_router_has_a_low_hwm_and_a_kernel_router_keeps_the_large_one() -> None:
    t = ZmqTransport()
    user = await t.bind("tcp://127.0.0.1:*", lambda b: b, user=True)
    kernel = await t.bind("tcp://127.0.0.1:*", lambda b: b)
    try:
        assert isinstance(user, zmqtransport.ZmqServer)
        assert isinstance(kernel, zmqtransport.ZmqServer)
        us, ks = user._ls.sock, kernel._ls.sock
        assert us.getsockopt(zmq.SNDHWM) == USER_HWM
        assert us.getsockopt(zmq.RCVHWM) == USER_HWM
        assert ks.getsockopt(zmq.SNDHWM) == zmqtransport._HWM
        # A ROUTER's replies never wait in Python: they are ZeroMQ's to drop.
        assert user._ls.drop_when_full
        assert kernel._ls.drop_when_full
    finally:
        await user.close()
        await kernel.close()
        await t.close()


async def test_a_burst_over_real_sockets_is_answered_whole_and_in_order() -> None:
    """The compiled send path (plain-int flags, parts with SNDMORE) keeps the framing:
    every request of a pipelined burst reaches the handler alone, every reply goes back
    to its connection whole and in order, and an event arrives as [topic, payload]."""
    t = ZmqTransport()
    srv = await t.bind("tcp://127.0.0.1:*", lambda b: b"re:" + b)
    pub = await t.publisher("tcp://127.0.0.1:*")
    got: dict[int, list[bytes]] = {0: [], 1: []}
    events: list[bytes] = []
    conns = [await t.connect(srv.endpoint, got[i].append) for i in range(2)]
    sub = await t.subscribe(pub.endpoint, "ev.", events.append)
    try:
        for n in range(300):  # more than DRAIN_BATCH per drain: several turns
            for i, c in enumerate(conns):
                c.send(b"%d:%d" % (i, n))
        await poll_for(lambda: len(got[0]) == len(got[1]) == 300, timeout_s=10, what="replies")
        for i in range(2):
            assert got[i] == [b"re:%d:%d" % (i, n) for n in range(300)]

        def published() -> bool:
            pub.publish("ev.x", b"payload")  # PUB/SUB joins late: publish until one lands
            return bool(events)

        await poll_for(published, timeout_s=10, what="an event")
        assert set(events) == {b"payload"}
    finally:
        await sub.close()
        for c in conns:
            await c.close()
        await pub.close()
        await srv.close()
        await t.close()


async def test_a_multipart_reply_reaches_the_connection_whole_and_is_sent_once() -> None:
    """A Multipart reply (net.recv with frames): its frames are copied by the send, so the
    buffer may change once `sent` ran; the connection hands over the frames as views."""
    from machine.ipc.transport import Multipart

    t = ZmqTransport()
    ram = bytearray(b"abcdefgh")
    sent: list[bytes] = []

    def handler(payload: bytes) -> bytes:
        return Multipart.of(
            b"re:" + payload, [memoryview(ram)[:3], b"xy"], lambda: sent.append(b"")
        )

    srv = await t.bind("tcp://127.0.0.1:*", handler)
    got: list[bytes] = []
    conn = await t.connect(srv.endpoint, got.append)
    try:
        conn.send(b"recv")
        await poll_for(lambda: bool(got), timeout_s=10, what="the reply")
        assert len(sent) == 1  # the send returned: the frames' bytes are libzmq's
        ram[:3] = b"ZZZ"  # RAM reused afterwards changes nothing on the wire
        (rep,) = got
        assert isinstance(rep, Multipart)
        assert bytes(rep) == b"re:recv"
        assert [bytes(f) for f in rep.frames] == [b"abc", b"xy"]
    finally:
        await conn.close()
        await srv.close()
        await t.close()
