"""The transport interface: request/reply servers and connections, events.

Two implementations sit behind it:
  * machine.ipc.zmqtransport: ZeroMQ ROUTER/DEALER for requests, PUB/SUB for
    events (real processes);
  * machine.ipc.inmemory: every role in one process, deliveries scheduled by
    a seeded RNG on a virtual clock (simulation mode).

The transport moves bytes only; it knows nothing about messages. Matching
replies to requests is machine.ipc.peer's job, dispatching requests is
machine.ipc.service's.

Contract:
  * bind(endpoint, handler, user=): every request's bytes go to `handler`,
    called from the loop as they arrive. `user` marks an endpoint clients
    reach (user or attach): the transport may then bound what it queues per
    client (zmq: USER_HWM replies; a reply beyond it is dropped, and that
    client's call times out). It returns the reply bytes at once (a
    request served without waiting: no task is created, which is most of the
    cost of a request here), or an awaitable of them (run as a task, so a
    slow request never blocks the others), or a machine.ipc.pending.Pending
    of them (no task: the transport sends the bytes inside the handler that
    sets it), or None to send nothing. A handler never raises (the service
    layer guarantees it).
    While the handler runs, the server's `conn` names the connection the request
    came in on (a ZeroMQ ROUTER's routing id, the in-memory bus's connection number).
  * Server.reset(): close every connection to the endpoint and keep serving it
    (clients reconnect); a role's memory watchdog uses it (machine.ipc.memwatch).
  * connect(endpoint, on_reply): `send(bytes)` queues one request without
    blocking; each reply's bytes are passed to `on_reply`, in arrival order.
  * A reply may be a Multipart: its bytes are the message, `frames` follow it as
    further ZeroMQ frames (buffers the transport copies once, in its send call:
    zmq's message is filled straight from them), then `on_sent` is called (the
    buffers may change from then on). The in-memory bus copies the frames at once
    and hands them to the client's on_reply as the Multipart's `frames`; a ZeroMQ
    connection hands a multipart reply over the same way.
  * Events are fire-and-forget: a subscriber that is late or slow may miss
    some. Nothing that must not be lost travels as an event.
"""

from __future__ import annotations

import abc
import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from machine.ipc.auth import SignedFrames

Handler = Callable[[bytes], "bytes | Awaitable[bytes | None] | None"]
OnBytes = Callable[[bytes], None]
Buffer = bytes | memoryview  # a frame of a Multipart


class Multipart(bytes):
    """A message (its bytes) followed by frames sent without a copy of their own."""

    frames: Sequence[Buffer]
    on_sent: Callable[[], None] | None

    @classmethod
    def of(
        cls,
        head: bytes,
        frames: Sequence[Buffer],
        on_sent: Callable[[], None] | None = None,
    ) -> Multipart:
        m = cls(head)
        m.frames = frames
        m.on_sent = on_sent
        return m

    def sent(self) -> None:
        """The frames are taken (sent, or dropped): the buffers may change now."""
        done, self.on_sent = self.on_sent, None
        if done is not None:
            done()


class Server(abc.ABC):
    endpoint: str  # the endpoint actually bound (wildcards resolved)
    #: The connection the request being handled came in on, a number the transport
    #: gives each sending socket (0: unknown). Valid only while the handler runs (the
    #: flight recorder notes it: machine.ipc.recorder).
    conn: int = 0

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def reset(self) -> None:
        """Drop every client connection and what the transport holds for it (unread
        requests, parts of unfinished messages, unsent replies), and serve on at the
        same endpoint (machine.ipc.memwatch)."""


class Connection(abc.ABC):
    endpoint: str

    @abc.abstractmethod
    def send(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


class Publisher(abc.ABC):
    endpoint: str

    @abc.abstractmethod
    def publish(self, topic: str, data: bytes) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


class Subscription(abc.ABC):
    @abc.abstractmethod
    async def close(self) -> None: ...


class Transport(abc.ABC):
    #: Notes of frames signed in this process (machine.ipc.auth.SignedFrames), kept by a
    #: transport that hands a request's bytes object itself to the receiver (the
    #: in-memory bus); None for a real transport: every frame then takes the full HMAC.
    signed: SignedFrames | None = None
    #: Its connections read multipart replies without a copy (ZeroMQ): a client may ask
    #: net.recv for frames. The in-memory bus would copy them: its clients do not ask.
    multipart: bool = False

    @abc.abstractmethod
    async def bind(self, endpoint: str, handler: Handler, *, user: bool = False) -> Server: ...

    @abc.abstractmethod
    async def connect(self, endpoint: str, on_reply: OnBytes) -> Connection: ...

    @abc.abstractmethod
    async def publisher(self, endpoint: str) -> Publisher: ...

    @abc.abstractmethod
    async def subscribe(self, endpoint: str, prefix: str, on_event: OnBytes) -> Subscription: ...

    async def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release what the transport holds (sockets, context)."""


#: The last loop running_loop() found and the thread it ran in then (one tuple: set at once).
_found: tuple[asyncio.AbstractEventLoop | None, int] = (None, 0)


def running_loop() -> asyncio.AbstractEventLoop:
    """asyncio.get_running_loop(), without its getpid() system call each time: the loop
    found last is returned while it runs in this thread (asyncio runs one loop per
    thread at a time, so it is then the running one); else asyncio is asked. The thread
    is the loop's own `_thread_id` (asyncio's loops) or, for a loop that keeps it to
    itself (uvloop), the one it was found in, while it still runs. A forked child
    forgets it (os.register_at_fork), as asyncio's own pid check does."""
    global _found
    loop, tid = _found
    tid = getattr(loop, "_thread_id", tid)  # uvloop keeps its thread to itself
    if loop is not None and tid == threading.get_ident() and loop.is_running():
        return loop
    loop = asyncio.get_running_loop()
    _found = (loop, threading.get_ident())
    return loop


def _forget_loop() -> None:
    global _found
    _found = (None, 0)


os.register_at_fork(after_in_child=_forget_loop)


class Clock:
    """Time for role cores, read from the running event loop.

    Under the in-memory transport the loop's clock is virtual, so the same
    core code sleeps and timestamps in virtual time.
    """

    def now_ns(self) -> int:
        return int(running_loop().time() * 1e9)

    def now_s(self) -> float:
        return running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
