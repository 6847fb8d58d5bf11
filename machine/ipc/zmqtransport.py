"""ZeroMQ transport: ROUTER/DEALER request/reply, PUB/SUB events, driven by asyncio.

Plain (blocking-API) pyzmq sockets are driven from the event loop through
their ZMQ_FD, not through zmq.asyncio: measured here (bench/), zmq.asyncio's
futures and extra wake-ups cost about a third of a round trip.

The ZMQ_FD contract, which every socket wrapper here follows: the fd is
edge-triggered, says only "the socket's events may have changed", and is armed
again when libzmq processes the socket's commands: in a ZMQ_EVENTS read, a read
that ends in EAGAIN, and (throttled, about once a millisecond) a send. So a
reader drains until nothing is left, and after a send ZMQ_EVENTS is read again
(the send may have consumed the edge). Each such look costs a getpid and a poll
of the socket's mailbox, so it is made once per turn, not per message: after
the first message one ZMQ_EVENTS read (POLLIN: a burst, read with NOBLOCK until
zmq.Again, which costs ~2 µs more in Python); sends on other sockets during a
drain have each of them looked at once, when it ends. A PUB's recv fails without
processing commands: ZMQ_EVENTS does it. (bench/bench_syscalls.py counts them.)

Fairness: a reader takes at most DRAIN_BATCH messages or DRAIN_BUDGET_S of
handler time per turn of the loop, then comes back with loop.call_soon (the
edge is spent, so a drain cut short is always rescheduled, never dropped).
Every socket of the process, the kernel endpoint's among them, is so read
in turn: one client's burst delays the supervisor's heartbeat by one batch,
never by the whole burst. No socket is served first: a turn is short enough.
A turn reads every ready message up to that bound (one loop wake-up, many
messages) and sends each reply as its handler returns it.

Cost per message: the hot path passes plain-int flags and options and calls
pyzmq's compiled send/recv/get (`_part_sender`): pyzmq's enum flags and its
Python-level send_multipart cost ~8 µs a request on each side, more than a
Service's own checks and dispatch of a ctl.ping (~6 µs).
Behaviour is send_multipart's: parts go out with SNDMORE, a ROUTER or PUB at
its high-water mark drops, a DEALER's zmq.Again queues the message.

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
import collections
import contextlib
import os
import threading
import time
import types
from collections.abc import Awaitable, Callable
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

#: One turn of a socket's reader: at most this many messages ...
DRAIN_BATCH = 32
#: ... or this much time in their handlers, whichever comes first.
DRAIN_BUDGET_S = 0.002
_clock = time.perf_counter  # the budget's clock (tests replace it)

# The per-message calls, made cheap (bench/README.md, "CPU per message"): pyzmq's
# constants are enum members whose `&` and `|` run in Python (~1 µs each), and
# pyzmq's Socket.send/send_multipart wrap the compiled send in Python (~5 µs per
# two-part reply); the hot paths use plain ints and the compiled methods.
_POLLIN, _POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)
_NOBLOCK, _SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)
_EVENTS, _RCVMORE = int(zmq.EVENTS), int(zmq.RCVMORE)


class _Turn(threading.local):
    """Per thread (a loop's): while a drain runs, the sockets sent on, checked at its end."""

    unchecked: list[_LoopSocket] | None = None


_turn = _Turn()


def _part_sender(sock: Any) -> Callable[[bytes, int], Any]:
    """sock's compiled send(part, flags) (a test's stand-in socket: its own send)."""
    if isinstance(sock, zmq.backend.Socket):
        return types.MethodType(zmq.backend.Socket.send, sock)
    send: Callable[[bytes, int], Any] = sock.send
    return send


class _LoopSocket:
    """A zmq socket read and written from the asyncio loop (see the module docstring).

    => at most `max_parts` parts per message reach on_frames; longer messages
       are dropped (counted in `dropped`).
    => one drain() reads at most DRAIN_BATCH messages or DRAIN_BUDGET_S; when it
       stops early a drain is scheduled (call_soon), so input is never stranded
       behind a spent edge. At most one scheduled drain is pending at a time.
    """

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        on_frames: Callable[[list[bytes]], None] | None,
        drop_when_full: bool = False,
        max_parts: int = 2,
        views: bool = False,
    ) -> None:
        self.sock = sock
        self.views = views  # parts after the first read as views (no copy)
        self.on_frames = on_frames
        self.drop_when_full = drop_when_full
        self.max_parts = max_parts
        self.loop = asyncio.get_running_loop()
        self.fd = int(sock.getsockopt(zmq.FD))
        self._send_part = _part_sender(sock)
        self._get: Callable[[int], int] = sock.get  # type: ignore[assignment]  # int options
        self.backlog: collections.deque[list[bytes]] = collections.deque()
        self.closed = False
        self.dropped = 0
        self.turns = 0  # drains cut short by the batch or the budget (tests)
        self._draining = False
        self._unchecked = False  # sent on; its mailbox is checked when the drain ends
        self._again: asyncio.Handle | None = None
        self.loop.add_reader(self.fd, self.drain)
        self._resume()

    def _resume(self) -> None:
        """Drain again on the loop's next turn (once, however often asked)."""
        if self._again is None and not self.closed:
            self._again = self.loop.call_soon(self._drain_again)

    def _drain_again(self) -> None:
        self._again = None
        self.drain()

    def drain(self) -> None:
        if self.closed or self._draining:
            return
        self._draining = True
        turn, sent = _turn, _turn.unchecked
        if outer := sent is None:
            turn.unchecked = sent = []
        try:
            if self._drain_batch():
                self.turns += 1
                self._resume()
        finally:
            self._draining = False
            if outer:
                turn.unchecked = None
                for ls in sent:
                    ls._check()

    def _drain_batch(self) -> bool:
        """Read one batch. => True if input may be left (the edge is spent: come back)."""
        if self.on_frames is None or self.backlog:
            # A PUB reads nothing (its recv fails at once, processing no commands):
            # ZMQ_EVENTS processes them, which also tells whether a queued send can go.
            self._flush_backlog()
            if self.on_frames is None:
                return False
        deadline = _clock() + DRAIN_BUDGET_S
        burst = False
        for _ in range(DRAIN_BATCH):
            if self.closed:
                return False
            try:
                frames = self._recv()
            except zmq.Again:
                # The read's command processing may have consumed a POLLOUT edge.
                return bool(self.backlog) and self._flush_backlog()
            except zmq.ZMQError:
                return False
            if frames is not None and self.on_frames is not None:
                try:
                    self.on_frames(frames)
                except Exception as e:  # a handler never raises; if one does, read on
                    self.loop.call_exception_handler(
                        {"message": "socket reader callback raised", "exception": e}
                    )
            if _clock() >= deadline:
                break
            if not burst:  # one message so far: ZMQ_EVENTS is cheaper than a zmq.Again
                try:
                    if not self._get(_EVENTS) & _POLLIN:
                        return bool(self.backlog) and self._flush_backlog()
                except zmq.ZMQError:
                    return False
                burst = True
        return True

    def _flush_backlog(self) -> bool:
        """Send what the backlog holds if the socket can take it. => True if input waits."""
        try:
            events = self._get(_EVENTS)
        except zmq.ZMQError:
            return False
        if events & _POLLOUT and self.backlog:
            self._flush()
            try:  # the sends may have processed commands too: look once more
                events = self._get(_EVENTS)
            except zmq.ZMQError:
                return False
        return bool(events & _POLLIN)

    def _recv(self) -> list[bytes] | None:
        """One whole message, or None when it has more parts than max_parts (dropped).

        ZeroMQ makes a message readable only once all its parts are in, so the
        parts after the first never block. Extra parts are read without a copy
        (copy=False: a zmq.Frame around libzmq's buffer) and let go at once.
        """
        sock, get = self.sock, self._get
        frames = [sock.recv(_NOBLOCK)]
        while get(_RCVMORE):
            if len(frames) < self.max_parts:
                if self.views:
                    frames.append(sock.recv(_NOBLOCK, copy=False).buffer)  # type: ignore[arg-type]
                else:
                    frames.append(sock.recv(_NOBLOCK))
                continue
            while get(_RCVMORE):
                sock.recv(_NOBLOCK, copy=False)
            self.dropped += 1
            return None
        return frames

    def _send(self, frames: list[bytes]) -> None:
        """send_multipart(frames, NOBLOCK), through the compiled send (zmq.Again as it)."""
        send, last = self._send_part, len(frames) - 1
        for i in range(last):
            send(frames[i], _NOBLOCK | _SNDMORE)
        send(frames[last], _NOBLOCK)

    def _flush(self) -> None:
        while self.backlog:
            try:
                self._send(self.backlog[0])
            except zmq.Again:
                return
            self.backlog.popleft()

    def send(self, frames: list[bytes]) -> None:
        if self.closed:
            return
        if not self.backlog:
            try:
                self._send(frames)
            except zmq.Again:
                if not self.drop_when_full:
                    self.backlog.append(frames)
            except zmq.ZMQError:
                return
        elif not self.drop_when_full:
            self.backlog.append(frames)
        if self._draining or self._unchecked:
            return  # the drain in progress ends with a mailbox check; or one is due
        # The send may have eaten the fd's edge: look again for input, once, when the
        # drain that sent it ends (a reply sent while another socket drains), else now.
        sent = _turn.unchecked
        if sent is not None:
            self._unchecked = True
            sent.append(self)
        else:
            self._check()

    def _check(self) -> None:
        """After sends: the mailbox checked once (ZMQ_EVENTS); input found is drained."""
        self._unchecked = False
        if self.closed:
            return
        try:
            if self._get(_EVENTS) & _POLLIN:
                self._resume()
        except zmq.ZMQError:
            pass

    def close(self, linger_ms: int) -> None:
        if self.closed:
            return
        self.closed = True
        if self._again is not None:
            self._again.cancel()
            self._again = None
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.fd)
        self.sock.close(linger=linger_ms)


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
        self._ls = _LoopSocket(sock, self._on_frames, drop_when_full=True, max_parts=2)

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
        self._ls = _LoopSocket(sock, self._on_frames, max_parts=MAX_REPLY_PARTS, views=True)

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
        self._ls = _LoopSocket(sock, None, drop_when_full=True)

    def publish(self, topic: str, data: bytes) -> None:
        self._ls.send([topic.encode(), data])

    async def close(self) -> None:
        self._ls.close(linger_ms=200)


class ZmqSubscription(Subscription):
    def __init__(self, sock: zmq.Socket[bytes], on_event: OnBytes) -> None:
        self._on_event = on_event
        self._ls = _LoopSocket(sock, self._on_frames, max_parts=2)

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
