"""In-memory transport and the virtual-time event loop (simulation mode).

All roles and clients run in one process and one event loop. Every message
is still encoded to bytes (so the codec is exercised exactly as over ZeroMQ)
and delivered after a latency drawn from a seeded RNG, on a virtual clock:

  * Delivery order is a function of the seed alone. Two runs with the same
    seed and the same program produce the same trace; different seeds
    explore different interleavings (FoundationDB-style simulation).
  * One connection delivers in order each way (its requests in the order
    sent, their replies in the order made), as a ZeroMQ DEALER/ROUTER pair
    and a PUB/SUB pair do; deliveries on different connections interleave
    freely. Roles rely on it: uvm's answers to traps travel on the same
    connection to the mmu as its revocations (docs/design.md, "Faults").
  * VirtualTimeLoop's clock only moves when every task is blocked: the
    selector, instead of sleeping, jumps time to the next timer. A program
    with nothing left to run and no timer pending is deadlocked; the loop
    raises SimulationDeadlock instead of hanging. Virtual time past
    `limit_s` raises SimulationTimeout.

Schedules: a message's delay comes from the bus's Schedule
(machine.ipc.schedule): by default a RandomSchedule on the bus's own
seeded Random, drawing exactly what the bus always drew; PctSchedule explores
priority orders. Per-pair order holds under every schedule (schedule_after).

Trace: every delivery (a request or reply handed to its receiver, an event to
its subscriber) is counted (`deliveries`) and noted in a running digest of
(virtual time, endpoint, kind, message tag), `digest()`, independent of the
raw bytes (machine.ipc.trace); with record=True also kept, `record`.

Gate: with `gate` set (machine.ipc.follow.FollowGate), every request, reply and
event that is due goes to gate.admit() instead, which delivers it now or holds
it (to follow a recorded order); without one (the default) nothing changes.

Fairness: each request is delivered by its own loop callback, so no reader
drains a burst in one go; on the virtual clock no deadline (a heartbeat's
timeout) passes while callbacks run, so a burst cannot starve the supervisor.
On a real-time loop (a SimMachine in a plain pytest loop) a burst delays what
was scheduled after it, as one CPU would; the bus is reachable only from
its own process. bind(user=) is accepted and ignored: an in-process client
reads every reply.

Signed frames: the bus hands the receiver the very bytes object the sender made, so it
keeps the notes (`signed`, machine.ipc.auth.SignedFrames) by which a role checks a signed
request without a second HMAC; every other check runs as over ZeroMQ.

Endpoint names are free-form strings ("inproc://uvm/user", ...).
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import random
import selectors
from asyncio import format_helpers
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from machine.ipc.auth import SignedFrames
from machine.ipc.pending import Pending
from machine.ipc.schedule import RandomSchedule, Schedule
from machine.ipc.tasks import TaskSet
from machine.ipc.trace import Delivery, TraceDigest, delivery_key
from machine.ipc.transport import (
    Connection,
    Handler,
    Multipart,
    OnBytes,
    Publisher,
    Server,
    Subscription,
    Transport,
    running_loop,
)
from machine.params import MAX_REQUEST_BYTES


class Gate(Protocol):
    """What the bus asks before a delivery (machine.ipc.follow.FollowGate)."""

    def admit(
        self, kind: str, pair: object, data: bytes, deliver: Callable[..., None], *args: Any
    ) -> None:
        """Deliver (deliver(*args)) now or later; kind "req" | "rep" | "evt"."""
        ...


class SimulationDeadlock(RuntimeError):
    """Every task waits and no timer is pending: the simulated machine hangs."""


class SimulationTimeout(RuntimeError):
    """Virtual time ran past the simulation's limit."""


#: Busy turns (callbacks ready) in a row that skip polling the loop's self-pipe.
SKIP_POLLS = 15


class _VirtualSelector(selectors.DefaultSelector):
    """Polls real fds without blocking; an idle loop advances virtual time instead.

    A turn whose only fd is the loop's self-pipe polls nothing, up to SKIP_POLLS turns
    in a row, whether callbacks are ready (timeout 0) or the turn advances virtual time
    to the next timer: a thread's call_soon_threadsafe callback is in the ready queue
    already (its byte in the pipe is read at the next poll), and a signal handler's
    wake-up (set_wakeup_fd) waits at most SKIP_POLLS turns. That saves an epoll_wait
    per turn (most turns of a simulation advance time: each delivery is a timer). A
    registered fd is polled every turn; a turn with no timer (timeout None) always
    polls before it declares a deadlock.
    """

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._vloop = loop
        self._skipped = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and self._skipped < SKIP_POLLS and len(self.get_map()) <= 1:
            self._skipped += 1
            if timeout > 0:
                self._vloop.advance(timeout)
            return []
        self._skipped = 0
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise SimulationDeadlock("no runnable task and no pending timer")
        self._vloop.advance(timeout)
        return []


def _callback_failed(handle: Any, exc: BaseException) -> None:
    """What asyncio's Handle._run does with a callback's exception."""
    cb = format_helpers._format_callback_source(handle._callback, handle._args)
    context = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


class _SimTimer(asyncio.TimerHandle):
    """asyncio's TimerHandle, made without the debug hooks (VirtualTimeLoop.call_at); the
    heap compares times as TimerHandle does, without its isinstance test."""

    __slots__ = ()

    def __lt__(self, other: Any) -> bool:
        return bool(self._when < other._when)

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context | None,
    ) -> None:
        self._context = context if context is not None else contextvars.copy_context()
        self._loop = loop
        self._callback = callback
        self._args = args
        self._cancelled = False
        self._repr = None
        self._source_traceback = None
        self._when = when
        self._scheduled = False


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose time() is virtual and advances only when idle.

    Outside debug mode, call_at and _run_once are asyncio's own with the debug and
    slow-callback hooks left out, the selector's skip and Handle._run inline (a
    simulation turns ~2,000 times a run): the same timer heap, the same order of
    callbacks, the same exception handling (the trace hash of a seed is unchanged).
    """

    def __init__(self, limit_s: float = 3600.0) -> None:
        self._vtime = 0.0
        self.limit_s = limit_s
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self._vtime

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        if self._debug or when is None:  # type: ignore[attr-defined]
            return super().call_at(when, callback, *args, context=context)
        if self.is_closed():
            raise RuntimeError("Event loop is closed")
        timer = _SimTimer(when, callback, args, self, context)
        heapq.heappush(self._scheduled, timer)  # type: ignore[attr-defined]
        timer._scheduled = True
        return timer

    def _run_once(self) -> None:
        """BaseEventLoop._run_once, lean: the same steps in the same order."""
        me: Any = self  # asyncio's private fields are untyped
        scheduled = me._scheduled
        n = len(scheduled)
        if me._debug or (n > 100 and me._timer_cancelled_count / n > 0.5):
            super()._run_once()  # type: ignore[misc]  # asyncio's, unchanged
            return
        while scheduled and scheduled[0]._cancelled:
            me._timer_cancelled_count -= 1
            heapq.heappop(scheduled)._scheduled = False
        ready = me._ready
        if ready or me._stopping:
            timeout: float | None = 0
        elif scheduled:
            timeout = min(max(0, scheduled[0]._when - self._vtime), 24 * 3600)
        else:
            timeout = None
        sel = me._selector
        if timeout is not None and sel._skipped < SKIP_POLLS and len(sel._fd_to_key) <= 1:
            sel._skipped += 1  # _VirtualSelector.select's skip, without the call
            if timeout > 0:
                self.advance(timeout)
        else:
            events = sel.select(timeout)
            if events:
                me._process_events(events)
        end_time = self._vtime + me._clock_resolution
        while scheduled:
            if scheduled[0]._when >= end_time:
                break
            handle = heapq.heappop(scheduled)
            handle._scheduled = False
            ready.append(handle)
        for _ in range(len(ready)):
            handle = ready.popleft()
            if handle._cancelled:
                continue
            try:  # Handle._run, inline
                handle._context.run(handle._callback, *handle._args)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                _callback_failed(handle, exc)
        handle = None  # break cycles when an exception occurs, as asyncio does

    def advance(self, seconds: float) -> None:
        self._vtime += max(seconds, 0.0)
        if self._vtime > self.limit_s:
            raise SimulationTimeout(f"virtual time passed {self.limit_s} s")


class MemServer(Server):
    def __init__(self, bus: InMemoryTransport, endpoint: str, handler: Handler) -> None:
        self.bus, self.endpoint, self.handler = bus, endpoint, handler
        #: A coroutine request's task (its reply is delivered when it ends).
        self.tasks = TaskSet()

    async def reset(self) -> None:
        """The bus holds no partial message and no connection state: nothing to drop."""

    async def close(self) -> None:
        self.bus.servers.pop(self.endpoint, None)
        await self.tasks.close()


class MemConnection(Connection):
    def __init__(self, bus: InMemoryTransport, endpoint: str, on_reply: OnBytes) -> None:
        self.bus, self.endpoint, self.on_reply = bus, endpoint, on_reply
        self.closed = False
        #: Delivery times of the last request / reply scheduled on this connection:
        #: a connection delivers in order each way, as a ZeroMQ DEALER/ROUTER pair does.
        self.last_request = 0.0
        self.last_reply = 0.0
        self.key_req = delivery_key(endpoint, "req")
        self.key_rep = delivery_key(endpoint, "rep")
        bus.connections += 1
        self.number = bus.connections  # the server's `conn` while it handles our request

    def send(self, data: bytes) -> None:
        self.last_request = self.bus.schedule_after(
            self.last_request, self.bus.deliver_request, self, data, to=self.endpoint
        )

    async def close(self) -> None:
        self.closed = True


class MemPublisher(Publisher):
    def __init__(self, bus: InMemoryTransport, endpoint: str) -> None:
        self.bus, self.endpoint = bus, endpoint

    def publish(self, topic: str, data: bytes) -> None:
        self.bus.loop = loop = running_loop()
        for sub in list(self.bus.subs.get(self.endpoint, ())):
            if topic.startswith(sub.prefix):
                # A PUB/SUB pair delivers in order, as ZeroMQ does: the schedule's delay,
                # but never before the previous event to this subscriber.
                when = max(
                    loop.time() + self.bus.sched.delay(self.endpoint, "evt"), sub.last_when + 1e-9
                )
                sub.last_when = when
                loop.call_at(when, sub.deliver, data)

    async def close(self) -> None:
        self.bus.pubs.discard(self.endpoint)


class MemSubscription(Subscription):
    def __init__(self, bus: InMemoryTransport, endpoint: str, prefix: str, cb: OnBytes) -> None:
        self.bus, self.endpoint, self.prefix, self.cb = bus, endpoint, prefix, cb
        self.closed = False
        self.last_when = 0.0  # delivery time of the last event scheduled (per-pair order)
        self.key = delivery_key(endpoint, "evt")

    def deliver(self, data: bytes) -> None:
        gate = self.bus.gate
        if gate is not None:
            gate.admit("evt", self, data, self._deliver, data)
        else:
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        if not self.closed:
            self.bus.noted(self.key, "evt", self.endpoint, data)
            self.cb(data)

    async def close(self) -> None:
        self.closed = True
        subs = self.bus.subs.get(self.endpoint)
        if subs and self in subs:
            subs.remove(self)


class InMemoryTransport(Transport):
    """A bus shared by every role of one simulated machine.

    schedule: the delays (default: RandomSchedule on Random(seed) within latency_s);
    record: keep every delivery in `record` (for the sequence diagram)."""

    def __init__(
        self,
        seed: int,
        latency_s: tuple[float, float] = (20e-6, 200e-6),
        schedule: Schedule | None = None,
        record: bool = False,
    ) -> None:
        self.rng = random.Random(seed)
        self.sched: Schedule = (
            schedule if schedule is not None else RandomSchedule(self.rng, *latency_s)
        )
        self.servers: dict[str, MemServer] = {}
        self.pubs: set[str] = set()
        self.subs: dict[str, list[MemSubscription]] = {}
        self.delivered = 0  # requests handed to a server
        self.deliveries = 0  # requests, replies and events handed to their receivers
        self.dropped = 0
        self.connections = 0  # connections made (each is numbered)
        self.trace: list[tuple[float, str, int]] | None = None
        self.record: list[Delivery] | None = [] if record else None
        self._digest = TraceDigest()
        #: The loop the last message was scheduled on (its deliveries run there).
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Holds deliveries to follow a recorded order (machine.ipc.follow); None: off.
        self.gate: Gate | None = None
        #: The bus hands each frame object itself to its receiver, so a signed request's
        #: check uses the signer's note instead of a second HMAC (machine.ipc.auth).
        self.signed = SignedFrames()

    def digest(self) -> str:
        """Hex digest of every delivery so far: (virtual time, endpoint, kind, tag)."""
        return self._digest.hexdigest()

    def noted(self, key: bytes, kind: str, endpoint: str, data: bytes) -> None:
        """Count, digest (and record) one delivery, made now."""
        t = (self.loop or running_loop()).time()  # where deliveries run
        self.deliveries += 1
        self._digest.note(t, key, data)
        if self.record is not None:
            self.record.append(Delivery(t, kind, endpoint, data))

    def schedule(self, fn: Any, *args: Any, to: str = "", kind: str = "req") -> None:
        """Call fn(*args) after the schedule's delay for a message to `to`."""
        self.loop = loop = running_loop()
        loop.call_at(loop.time() + self.sched.delay(to, kind), fn, *args)

    def schedule_after(
        self, last: float, fn: Any, *args: Any, to: str = "", kind: str = "req"
    ) -> float:
        """Schedule after the schedule's delay for a message to `to`, but never before
        `last` (per-pair order). => the delivery time, the next call's `last`."""
        self.loop = loop = running_loop()
        when = max(loop.time() + self.sched.delay(to, kind), last + 1e-9)
        loop.call_at(when, fn, *args)
        return when

    def deliver_request(self, conn: MemConnection, data: bytes) -> None:
        if self.gate is not None:
            self.gate.admit("req", conn, data, self._deliver_request, conn, data)
        else:
            self._deliver_request(conn, data)

    def _deliver_request(self, conn: MemConnection, data: bytes) -> None:
        server = self.servers.get(conn.endpoint)
        if server is None or conn.closed or len(data) > MAX_REQUEST_BYTES:
            # Too large: refused unread, as ZMQ_MAXMSGSIZE does (the call times out).
            self.dropped += 1
            return
        self.delivered += 1
        self.noted(conn.key_req, "req", conn.endpoint, data)
        if self.trace is not None:
            self.trace.append((running_loop().time(), conn.endpoint, len(data)))
        server.conn = conn.number
        out = server.handler(data)
        if out is None or isinstance(out, bytes):
            if out is not None:
                self._reply(conn, out)
            return
        if isinstance(out, Pending):  # replied by the handler that completes it
            out.then(lambda rep: self._reply_some(conn, rep))
            return
        server.tasks.spawn(self._finish(conn, out), "reply")

    async def _finish(self, conn: MemConnection, pending: Awaitable[bytes | None]) -> None:
        out = await pending
        if out is not None:
            self._reply(conn, out)

    def _reply_some(self, conn: MemConnection, out: bytes | None) -> None:
        if out is not None:
            self._reply(conn, out)

    def _reply(self, conn: MemConnection, out: bytes) -> None:
        if isinstance(out, Multipart):  # the frames copied now: the sender's may change
            taken = Multipart.of(bytes(out), [bytes(f) for f in out.frames])
            out.sent()
            out = taken
        conn.last_reply = self.schedule_after(
            conn.last_reply, self._deliver_reply, conn, out, to=conn.endpoint, kind="rep"
        )

    def _deliver_reply(self, conn: MemConnection, data: bytes) -> None:
        if self.gate is not None:
            self.gate.admit("rep", conn, data, self._reply_now, conn, data)
        else:
            self._reply_now(conn, data)

    def _reply_now(self, conn: MemConnection, data: bytes) -> None:
        if not conn.closed:
            self.noted(conn.key_rep, "rep", conn.endpoint, data)
            conn.on_reply(data)

    async def bind(self, endpoint: str, handler: Handler, *, user: bool = False) -> Server:
        if endpoint in self.servers:
            raise OSError(f"address in use: {endpoint}")
        s = MemServer(self, endpoint, handler)
        self.servers[endpoint] = s
        return s

    async def connect(self, endpoint: str, on_reply: OnBytes) -> Connection:
        return MemConnection(self, endpoint, on_reply)

    async def publisher(self, endpoint: str) -> Publisher:
        self.pubs.add(endpoint)
        return MemPublisher(self, endpoint)

    async def subscribe(self, endpoint: str, prefix: str, on_event: OnBytes) -> Subscription:
        sub = MemSubscription(self, endpoint, prefix, on_event)
        self.subs.setdefault(endpoint, []).append(sub)
        return sub


def run_simulation(main: Any, limit_s: float = 3600.0) -> Any:
    """Run coroutine `main` to completion on a fresh VirtualTimeLoop and return its result."""
    loop = VirtualTimeLoop(limit_s=limit_s)
    try:
        return loop.run_until_complete(main)
    finally:
        loop.limit_s = float("inf")
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
