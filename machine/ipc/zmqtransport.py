"""ZeroMQ transport: ROUTER/DEALER request/reply, PUB/SUB events (zmq.asyncio).

Framing: ROUTER sees [identity, payload]; a DEALER sends and receives the
bare payload. One msgpack frame per message. Wildcard ports
("tcp://127.0.0.1:*") are resolved with ZMQ_LAST_ENDPOINT.
"""

from __future__ import annotations

import asyncio
import contextlib

import zmq
import zmq.asyncio

from machine.ipc.transport import (
    Connection,
    Handler,
    OnBytes,
    Publisher,
    Server,
    Subscription,
    Transport,
)

_HWM = 100_000


def _last_endpoint(sock: zmq.asyncio.Socket) -> str:
    ep = sock.getsockopt(zmq.LAST_ENDPOINT)
    return ep.decode() if isinstance(ep, bytes) else str(ep)


async def _cancel(task: asyncio.Task[None]) -> None:
    """End a receive loop (before its socket is closed)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, zmq.ZMQError):
        await task


class ZmqServer(Server):
    def __init__(self, sock: zmq.asyncio.Socket, handler: Handler) -> None:
        self.sock = sock
        self.endpoint = _last_endpoint(sock)
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self._recv = asyncio.create_task(self._loop(), name=f"router {self.endpoint}")

    async def _loop(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            if len(frames) < 2:
                continue
            t = asyncio.create_task(self._one(frames[0], frames[-1]))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _one(self, ident: bytes, payload: bytes) -> None:
        out = await self._handler(payload)
        if out is not None:
            with contextlib.suppress(zmq.ZMQError):
                await self.sock.send_multipart([ident, out])

    async def close(self) -> None:
        await _cancel(self._recv)
        for t in list(self._tasks):
            t.cancel()
        self.sock.close(linger=100)


class ZmqConnection(Connection):
    def __init__(self, sock: zmq.asyncio.Socket, endpoint: str, on_reply: OnBytes) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self._on_reply = on_reply
        self._recv = asyncio.create_task(self._loop(), name=f"dealer {endpoint}")

    async def _loop(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            self._on_reply(frames[-1])

    async def send(self, data: bytes) -> None:
        await self.sock.send(data)

    async def close(self) -> None:
        await _cancel(self._recv)
        self.sock.close(linger=0)


class ZmqPublisher(Publisher):
    def __init__(self, sock: zmq.asyncio.Socket) -> None:
        self.sock = sock
        self.endpoint = _last_endpoint(sock)

    async def publish(self, topic: str, data: bytes) -> None:
        with contextlib.suppress(zmq.ZMQError):
            await self.sock.send_multipart([topic.encode(), data])

    async def close(self) -> None:
        self.sock.close(linger=200)


class ZmqSubscription(Subscription):
    def __init__(self, sock: zmq.asyncio.Socket, on_event: OnBytes) -> None:
        self.sock = sock
        self._on_event = on_event
        self._recv = asyncio.create_task(self._loop(), name="sub")

    async def _loop(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            if len(frames) == 2:
                self._on_event(frames[1])

    async def close(self) -> None:
        await _cancel(self._recv)
        self.sock.close(linger=0)


class ZmqTransport(Transport):
    """One zmq.asyncio context per process."""

    def __init__(self) -> None:
        self.ctx = zmq.asyncio.Context()

    def _socket(self, kind: int) -> zmq.asyncio.Socket:
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.SNDHWM, _HWM)
        s.setsockopt(zmq.RCVHWM, _HWM)
        return s

    async def bind(self, endpoint: str, handler: Handler) -> Server:
        s = self._socket(zmq.ROUTER)
        s.bind(endpoint)
        return ZmqServer(s, handler)

    async def connect(self, endpoint: str, on_reply: OnBytes) -> Connection:
        s = self._socket(zmq.DEALER)
        s.setsockopt(zmq.IMMEDIATE, 0)
        s.connect(endpoint)
        return ZmqConnection(s, endpoint, on_reply)

    async def publisher(self, endpoint: str) -> Publisher:
        s = self._socket(zmq.PUB)
        s.bind(endpoint)
        return ZmqPublisher(s)

    async def subscribe(self, endpoint: str, prefix: str, on_event: OnBytes) -> Subscription:
        s = self._socket(zmq.SUB)
        s.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        s.connect(endpoint)
        return ZmqSubscription(s, on_event)

    async def close(self) -> None:
        self.ctx.destroy(linger=0)
