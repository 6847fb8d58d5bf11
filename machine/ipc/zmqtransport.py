"""ZeroMQ transport: ROUTER/DEALER request/reply, PUB/SUB events, driven by asyncio.

Plain (blocking-API) pyzmq sockets are driven from the event loop through
their ZMQ_FD, not through zmq.asyncio: measured here (bench/), zmq.asyncio's
futures and extra wake-ups cost about a third of a round trip.

The ZMQ_FD contract, which every socket wrapper here follows: the fd is
edge-triggered and only says "the socket's events may have changed". So a
reader drains until ZMQ_EVENTS lacks POLLIN, and after every send the
wrapper re-reads ZMQ_EVENTS and drains again, since the send may have
consumed the edge.

Framing: ROUTER sees [identity, payload]; a DEALER sends and receives the
bare payload; PUB/SUB frames are [topic, payload]. One msgpack frame per
message. Wildcard ports ("tcp://127.0.0.1:*") are resolved with
ZMQ_LAST_ENDPOINT. A send that would block (high-water mark) is queued and
flushed when the socket can take it again; nothing is dropped except on PUB,
where dropping is ZeroMQ's own rule.

Bounds: a ROUTER refuses any frame above MAX_REQUEST_BYTES (ZMQ_MAXMSGSIZE:
ZeroMQ drops the connection as soon as the frame's length is read, so the
frame is never buffered; the sender's call times out). An ipc:// endpoint's
socket file is made mode 0600 (the run directory around it is 0700).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from machine.ipc.transport import (
    Connection,
    Handler,
    OnBytes,
    Publisher,
    Server,
    Subscription,
    Transport,
)
from machine.params import MAX_REQUEST_BYTES

_HWM = 100_000


class _LoopSocket:
    """A zmq socket read and written from the asyncio loop (see the module docstring)."""

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        on_frames: Callable[[list[bytes]], None] | None,
        drop_when_full: bool = False,
    ) -> None:
        self.sock = sock
        self.on_frames = on_frames
        self.drop_when_full = drop_when_full
        self.loop = asyncio.get_running_loop()
        self.fd = int(sock.getsockopt(zmq.FD))
        self.backlog: collections.deque[list[bytes]] = collections.deque()
        self.closed = False
        self.loop.add_reader(self.fd, self.drain)
        self.loop.call_soon(self.drain)

    def drain(self) -> None:
        while not self.closed:
            try:
                events = int(self.sock.getsockopt(zmq.EVENTS))
            except zmq.ZMQError:
                return
            if events & zmq.POLLOUT and self.backlog:
                self._flush()
            if not events & zmq.POLLIN:
                return
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return
            if self.on_frames is not None:
                self.on_frames(frames)

    def _flush(self) -> None:
        while self.backlog:
            try:
                self.sock.send_multipart(self.backlog[0], zmq.NOBLOCK)
            except zmq.Again:
                return
            self.backlog.popleft()

    def send(self, frames: list[bytes]) -> None:
        if self.closed:
            return
        if not self.backlog:
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                if not self.drop_when_full:
                    self.backlog.append(frames)
            except zmq.ZMQError:
                return
        elif not self.drop_when_full:
            self.backlog.append(frames)
        # The send may have eaten the fd's edge: look again for input.
        try:
            if int(self.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                self.loop.call_soon(self.drain)
        except zmq.ZMQError:
            pass

    def close(self, linger_ms: int) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.fd)
        self.sock.close(linger=linger_ms)


def _last_endpoint(sock: zmq.Socket[bytes]) -> str:
    ep = sock.getsockopt(zmq.LAST_ENDPOINT)
    return ep.decode() if isinstance(ep, bytes) else str(ep)


class ZmqServer(Server):
    def __init__(self, sock: zmq.Socket[bytes], handler: Handler) -> None:
        self.endpoint = _last_endpoint(sock)
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self._ls = _LoopSocket(sock, self._on_frames)

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            return
        ident, payload = frames[0], frames[-1]
        out = self._handler(payload)
        if out is None or isinstance(out, bytes):
            if out is not None:
                self._ls.send([ident, out])
            return
        t = asyncio.ensure_future(self._finish(ident, out))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _finish(self, ident: bytes, pending: Awaitable[bytes | None]) -> None:
        out = await pending
        if out is not None:
            self._ls.send([ident, out])

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        self._ls.close(linger_ms=100)


class ZmqConnection(Connection):
    def __init__(self, sock: zmq.Socket[bytes], endpoint: str, on_reply: OnBytes) -> None:
        self.endpoint = endpoint
        self._on_reply = on_reply
        self._ls = _LoopSocket(sock, self._on_frames)

    def _on_frames(self, frames: list[bytes]) -> None:
        self._on_reply(frames[-1])

    def send(self, data: bytes) -> None:
        self._ls.send([data])

    async def close(self) -> None:
        self._ls.close(linger_ms=0)


class ZmqPublisher(Publisher):
    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self.endpoint = _last_endpoint(sock)
        self._ls = _LoopSocket(sock, None, drop_when_full=True)

    def publish(self, topic: str, data: bytes) -> None:
        self._ls.send([topic.encode(), data])

    async def close(self) -> None:
        self._ls.close(linger_ms=200)


class ZmqSubscription(Subscription):
    def __init__(self, sock: zmq.Socket[bytes], on_event: OnBytes) -> None:
        self._on_event = on_event
        self._ls = _LoopSocket(sock, self._on_frames)

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) == 2:
            self._on_event(frames[1])

    async def close(self) -> None:
        self._ls.close(linger_ms=0)


def _private(endpoint: str) -> None:
    """An ipc:// socket file: its owner's alone (mode 0600)."""
    if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
        os.chmod(endpoint[len("ipc://") :], 0o600)


class ZmqTransport(Transport):
    """One zmq context per process."""

    def __init__(self) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()

    def _socket(self, kind: int) -> zmq.Socket[bytes]:
        s: zmq.Socket[bytes] = self.ctx.socket(kind)
        s.setsockopt(zmq.SNDHWM, _HWM)
        s.setsockopt(zmq.RCVHWM, _HWM)
        return s

    async def bind(self, endpoint: str, handler: Handler) -> Server:
        s = self._socket(zmq.ROUTER)
        s.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        try:
            s.bind(endpoint)
        except zmq.ZMQError as e:
            s.close(linger=0)
            raise OSError(f"cannot bind {endpoint}: {e}") from None
        _private(endpoint)
        return ZmqServer(s, handler)

    async def connect(self, endpoint: str, on_reply: OnBytes) -> Connection:
        s = self._socket(zmq.DEALER)
        s.connect(endpoint)
        return ZmqConnection(s, endpoint, on_reply)

    async def publisher(self, endpoint: str) -> Publisher:
        s = self._socket(zmq.PUB)
        try:
            s.bind(endpoint)
        except zmq.ZMQError as e:
            s.close(linger=0)
            raise OSError(f"cannot bind {endpoint}: {e}") from None
        _private(endpoint)
        return ZmqPublisher(s)

    async def subscribe(self, endpoint: str, prefix: str, on_event: OnBytes) -> Subscription:
        s = self._socket(zmq.SUB)
        s.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        s.connect(endpoint)
        return ZmqSubscription(s, on_event)

    async def close(self) -> None:
        self.ctx.destroy(linger=0)
