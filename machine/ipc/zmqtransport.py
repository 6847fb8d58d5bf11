"""ZeroMQ transport: ROUTER/DEALER request/reply, PUB/SUB events, driven by asyncio.

Every socket is a machine.ipc.zmqsocket.LoopSocket: plain pyzmq sockets driven
from the event loop through their ZMQ_FD (its contract, the reads, the
fairness between sockets and the cost per message are told there).

Framing: ROUTER sees [identity, payload]; a DEALER sends and receives the
bare payload; PUB/SUB frames are [topic, payload]. One msgpack frame per
message, except a Multipart reply (transport.Multipart: net.recv with frames):
[identity, payload, frame...], each frame copied by libzmq inside its send call
from the buffer it is given (a view of RAM: no copy before it), after which the
Multipart's `sent` runs; a DEALER reads up to MAX_REPLY_PARTS parts, those after
the first as views of libzmq's messages (copy=False), and hands the reply over as
a Multipart. Otherwise a message with more parts than its socket's framing is dropped, its
extra parts read without a copy and discarded unjoined. (ZeroMQ delivers a
multipart message whole: libzmq has buffered every part before the first one
can be read, and ZMQ_MAXMSGSIZE bounds each part, not their sum. What is
buffered is freed once the message is read and dropped; a message whose
last part never comes stays in libzmq until its peer disconnects: a role's
memory watchdog then resets the endpoint, ZmqServer.reset, see
machine.ipc.memwatch.)
Wildcard ports ("tcp://127.0.0.1:*") are resolved with ZMQ_LAST_ENDPOINT.
A DEALER's send that would block (high-water mark) is queued and flushed when
the socket can take it again. A ROUTER never queues in Python: ZeroMQ drops a
reply to a peer whose pipe is at its high-water mark (that peer does not read;
its call times out), and so does a PUB to a slow subscriber.

Bounds: a ROUTER refuses any frame above MAX_REQUEST_BYTES (ZMQ_MAXMSGSIZE:
ZeroMQ drops the connection as soon as the frame's length is read, so the
frame is never buffered; the sender's call times out). A user endpoint's
ROUTER holds at most USER_HWM replies per client connection (USER_HWM x the
largest reply, an mmu.load of MAX_ACCESS_BYTES: 32 MiB) and at most USER_HWM
unread requests (64 MiB): beyond that libzmq stops reading the connection, and
TCP pushes back on the client. Kernel endpoints keep the large _HWM (their
peers are the machine's roles, which always read). An ipc:// endpoint's
socket file is made mode 0600 (the run directory around it is 0700).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from typing import Any

import zmq
import zmq.backend

from machine.ipc.pending import Pending
from machine.ipc.tasks import TaskSet
from machine.ipc.transport import (
    Connection,
    Handler,
    Multipart,
    OnBytes,
    Publisher,
    Server,
    Subscription,
    Transport,
)
from machine.ipc.zmqsocket import LoopSocket
from machine.params import MAX_REQUEST_BYTES

_HWM = 100_000

#: Replies a user endpoint's ROUTER queues for one client connection before it
#: drops more (ZeroMQ's rule for a ROUTER at its high-water mark); also the
#: requests it takes in from one connection before it stops reading it (the
#: client's sends then wait: TCP's flow control, nothing is lost). A client that
#: reads never comes near it: its own libzmq thread moves replies off the TCP
#: connection into the client's receive queue whatever the client's code does,
#: so replies pile up here only when the link (or a client that stopped reading
#: with a tiny receive queue) is slower than the role. The project's clients
#: keep one call per process in flight, a handful of processes per connection
#: (clients/pattern --procs, the tests' 8 workers), and small replies travel in
#: the TCP buffers, not in this queue. 32 replies of at most MAX_ACCESS_BYTES:
#: 32 MiB held for a client that does not read, per connection.
USER_HWM = 32

#: Parts of one reply a client's DEALER reads: the message and a net.recv's payload
#: frames (at most a frame per page of about a MiB, plus one per packet).
MAX_REPLY_PARTS = 1 + 8192

#: How long a reset endpoint (ZmqServer.reset) tries to bind its address again.
REBIND_S = 2.0


def _last_endpoint(sock: zmq.Socket[bytes]) -> str:
    ep = sock.getsockopt(zmq.LAST_ENDPOINT)
    return ep.decode() if isinstance(ep, bytes) else str(ep)


class ZmqServer(Server):
    """A ROUTER: [identity, payload] in, [identity, reply] out; anything else is dropped."""

    def __init__(self, sock: zmq.Socket[bytes], handler: Handler) -> None:
        self.endpoint = _last_endpoint(sock)
        self._handler = handler
        #: A coroutine request's task (its reply is sent when it ends).
        self._tasks = TaskSet()
        # drop_when_full: a ROUTER drops at the high-water mark itself (it never says
        # EAGAIN); this keeps it so should that change: no reply waits in Python.
        self._ls = LoopSocket(sock, self._on_frames, drop_when_full=True, max_parts=2)

    @property
    def dropped(self) -> int:
        """Messages dropped for having more parts than [identity, payload]."""
        return self._ls.dropped

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            return
        ident, payload = frames
        self.conn = int.from_bytes(ident[-4:])  # libzmq's routing id: 0x00 + a uint32
        out = self._handler(payload)
        if out is None or isinstance(out, bytes):
            if out is not None:
                self._send_reply(ident, out)
            return
        if isinstance(out, Pending):  # sent by the handler that completes it: no task
            out.then(lambda rep: self._send_reply(ident, rep))
            return
        self._tasks.spawn(self._finish(ident, out), "reply")

    def _send_reply(self, ident: bytes, out: bytes | None) -> None:
        if isinstance(out, Multipart):  # each frame copied by libzmq in its send, no backlog
            try:
                self._ls.send([ident, out, *out.frames])  # type: ignore[list-item]
            finally:
                out.sent()
        elif out is not None:
            self._ls.send([ident, out])

    async def _finish(self, ident: bytes, pending: Awaitable[bytes | None]) -> None:
        self._send_reply(ident, await pending)

    async def reset(self) -> None:
        """Unbind and bind again: libzmq closes every connection the listener accepted
        and frees what they held (partial messages included). The port can stay busy
        for a moment after the unbind (libzmq closes the listener on its I/O thread):
        the bind is retried for up to REBIND_S. => OSError if it cannot bind again."""
        sock = self._ls.sock
        sock.unbind(self.endpoint)
        deadline = time.monotonic() + REBIND_S
        while True:
            try:
                sock.bind(self.endpoint)
                break
            except zmq.ZMQError as e:
                if time.monotonic() >= deadline:
                    raise OSError(f"cannot bind {self.endpoint} again: {e}") from None
                await asyncio.sleep(0.005)
        _private(self.endpoint)

    async def close(self) -> None:
        await self._tasks.close()
        self._ls.close(linger_ms=100)


class ZmqConnection(Connection):
    """A DEALER: a reply is one frame, or a Multipart (a net.recv with frames: the frames
    after the first are read without a copy, as views of libzmq's messages)."""

    def __init__(self, sock: zmq.Socket[bytes], endpoint: str, on_reply: OnBytes) -> None:
        self.endpoint = endpoint
        self._on_reply = on_reply
        self._ls = LoopSocket(sock, self._on_frames, max_parts=MAX_REPLY_PARTS, views=True)

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) == 1:
            self._on_reply(frames[0])
        else:
            self._on_reply(Multipart.of(frames[0], frames[1:]))

    def send(self, data: bytes) -> None:
        self._ls.send([data])

    async def close(self) -> None:
        self._ls.close(linger_ms=0)


class ZmqPublisher(Publisher):
    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self.endpoint = _last_endpoint(sock)
        self._ls = LoopSocket(sock, None, drop_when_full=True)

    def publish(self, topic: str, data: bytes) -> None:
        self._ls.send([topic.encode(), data])

    async def close(self) -> None:
        self._ls.close(linger_ms=200)


class ZmqSubscription(Subscription):
    def __init__(self, sock: zmq.Socket[bytes], on_event: OnBytes) -> None:
        self._on_event = on_event
        self._ls = LoopSocket(sock, self._on_frames, max_parts=2)

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

    multipart = True

    def __init__(self) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()

    def _socket(self, kind: int) -> zmq.Socket[bytes]:
        s: zmq.Socket[bytes] = self.ctx.socket(kind)
        s.setsockopt(zmq.SNDHWM, _HWM)
        s.setsockopt(zmq.RCVHWM, _HWM)
        return s

    async def bind(self, endpoint: str, handler: Handler, *, user: bool = False) -> Server:
        s = self._socket(zmq.ROUTER)
        s.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        if user:
            s.setsockopt(zmq.SNDHWM, USER_HWM)
            s.setsockopt(zmq.RCVHWM, USER_HWM)
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
