"""Service: the one request loop every role shares (decode -> check -> dispatch -> reply).

A role subclasses Service, lists the requests it serves in `serves`, and
writes one `on_<verb>` coroutine per request (verb = the tag after its
area: "pmap.enter" -> on_enter). Startup fails if a served request has no
handler or two served requests share a verb.

What happens to every incoming request, in order:
  1. Bytes that do not decode, unknown tags, wrong types, out-of-range
     numbers: an ErrorReply (EBADMSG / EINVAL). Nothing else runs.
  2. Another major protocol version: EPROTO.
  3. Wrong endpoint for the request's scope (a kernel message on the user
     endpoint, or the reverse): EPERM.
  3a. On a user endpoint, a request that is not signed by the session its
     header names (machine.ipc.auth: a 16-byte tag after the msgpack bytes),
     or that replays a msg_id that session already sent here: EPERM. Only
     the public requests (hello, ping, stats, directory, status, attach)
     may come unsigned, from session 0.
  4. The role has panicked or was halted: EPANIC with the panic message
     (except ctl.ping/dump/shutdown, which still work for the supervisor).
  5. Not served by this role: ENOSYS.
  6. The handler runs in its own task. UserError -> its errno; PeerPanic
     (a role we called has panicked) -> EPANIC; KernelPanic or any other
     exception -> this role panics: it publishes ctl.panic, answers EPANIC
     from then on, and waits for the supervisor to stop it (it does not
     exit, so the panic event and dump requests are not lost).
  7. Last resort: should the checks themselves raise (a bug: they must
     answer any input), the request is answered EINVAL, dispatched to no
     handler, and counted (`check_errors`, with the traceback in the trace);
     the role serves on. Every request gets exactly one reply.

The trace ring keeps the last TRACE_LEN lines, each cut to TRACE_LINE
characters, and a panic message is cut to PANIC_LEN: nothing a client sends
makes either grow with its input.

Control requests (ctl.*) are answered without touching role state or
locks, so they never queue behind work.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import os
import random
import traceback
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar, TypeVar

from machine.ipc.auth import PUBLIC_TAGS, TAG_LEN, SessionAuth, new_machine_key
from machine.ipc.peer import CallTimeout, Identity, Peer, PeerPanic
from machine.ipc.transport import Clock, Publisher, Server, Transport
from machine.kassert import KernelPanic
from machine.limits import Limits
from machine.proto import (
    PROTOCOL_VERSION,
    BadMessage,
    CtlAck,
    CtlDump,
    CtlDumpReply,
    CtlHalt,
    CtlHello,
    CtlHelloReply,
    CtlKpanic,
    CtlPanic,
    CtlPing,
    CtlPingReply,
    CtlShutdown,
    CtlStats,
    CtlStatsReply,
    Errno,
    ErrorReply,
    Event,
    Header,
    Reply,
    Request,
    Scope,
    Status,
    UserError,
    decode_request,
    encode,
    salvage_msg_id,
    tag_of,
)

R = TypeVar("R", bound=Reply)
TRACE_LEN = 256
TRACE_LINE = 256
PANIC_LEN = 4096

CTL_REQUESTS: tuple[type[Request], ...] = (
    CtlHello,
    CtlPing,
    CtlStats,
    CtlDump,
    CtlHalt,
    CtlShutdown,
    CtlKpanic,
)
_PANIC_EXEMPT = (CtlPing, CtlDump, CtlShutdown, CtlHello, CtlStats)


class _Resumed:
    """Awaitable that carries on driving a coroutine that already ran to its first wait.

    `first` is what the coroutine yielded to its event loop (a future, or None
    for a bare yield); awaiting this object hands it to the running task and
    then keeps stepping the coroutine, exactly as the task would have.
    """

    def __init__(self, coro: Any, first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Any:
        pending = self.first
        while True:
            try:
                value = yield pending
            except BaseException as exc:
                try:
                    pending = self.coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    pending = self.coro.send(value)
                except StopIteration as done:
                    return done.value


class TraceRing(collections.deque[str]):
    """The role's trace: the last TRACE_LEN lines, each at most TRACE_LINE characters."""

    def __init__(self) -> None:
        super().__init__(maxlen=TRACE_LEN)

    def append(self, line: str) -> None:
        super().append(line if len(line) <= TRACE_LINE else line[: TRACE_LINE - 3] + "...")

    def extend(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.append(line)


def verb_of(cls: type[Request]) -> str:
    return tag_of(cls).split(".", 1)[1]


def new_incarnation(rng: random.Random) -> int:
    return rng.getrandbits(62) | 1


class Service:
    """Base of every role's service (and of the supervisor's)."""

    role: ClassVar[str] = "?"
    serves: ClassVar[tuple[type[Request], ...]] = ()
    #: The core's own client-error exceptions (each with .errno, an Errno name,
    #: and .detail): a handler lets them propagate and gets that errno replied.
    user_errors: ClassVar[tuple[type[Exception], ...]] = ()

    def __init__(
        self,
        transport: Transport,
        *,
        rng: random.Random,
        clock: Clock | None = None,
        incarnation: int | None = None,
        pid: int | None = None,
        key: bytes | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.transport = transport
        #: Checks signed user requests; `key` is the machine key every role shares
        #: (a fresh one when none is given: then no client can sign for this role).
        self.auth = SessionAuth(key if key is not None else new_machine_key())
        self.limits = limits or Limits()
        #: Coroutine requests of each session still running here (<= limits.inflight),
        #: and of every session together (<= limits.inflight_total): a session that
        #: pipelines without waiting gets EAGAIN instead of a task per request.
        self._inflight: collections.Counter[int] = collections.Counter()
        self._inflight_total = 0
        self.rng = rng
        self.clock = clock or Clock()
        self.incarnation = incarnation if incarnation is not None else new_incarnation(rng)
        self.pid = pid if pid is not None else os.getpid()
        self.ident = Identity(self.role, self.incarnation, self.clock)
        self.state = "running"
        self.panic_message = ""
        #: When the supervisor's last ctl.ping arrived (clock seconds; None: never).
        #: An orphaned role notices the silence (machine.orphan).
        self.supervisor_seen: float | None = None
        #: Who sent the ctl.shutdown that stopped the role ("": none yet, or a signal).
        self.stopped_by = ""
        self.trace: collections.deque[str] = TraceRing()
        #: Requests whose checks raised (a bug; answered EINVAL, see step 7).
        self.check_errors = 0
        self.stopped = asyncio.Event()
        self.peers: dict[str, Peer] = {}
        self.endpoints: dict[str, str] = {}
        self._servers: list[Server] = []
        self._pub: Publisher | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handlers: dict[type[Request], Callable[[Any], Any]] = {}
        self._async: set[type[Request]] = set()
        verbs: dict[str, type[Request]] = {}
        for cls in (*CTL_REQUESTS, *self.serves):
            verb = verb_of(cls)
            if verb in verbs:
                raise TypeError(
                    f"{self.role}: {tag_of(cls)} and {tag_of(verbs[verb])} share a verb"
                )
            verbs[verb] = cls
            fn = getattr(self, "on_" + verb, None)
            if fn is None:
                raise TypeError(f"{self.role}: no handler on_{verb} for {tag_of(cls)}")
            self._handlers[cls] = fn
            if inspect.iscoroutinefunction(fn):
                self._async.add(cls)

    # -- life cycle ---------------------------------------------------------

    async def start(self, kernel: str | None, user: str | None, pub: str) -> dict[str, str]:
        """Bind the endpoints; returns the bound addresses (wildcards resolved)."""
        if kernel is not None:
            ks = await self.transport.bind(kernel, self._on_kernel)
            self._servers.append(ks)
            self.endpoints["kernel"] = ks.endpoint
        if user is not None:
            us = await self.transport.bind(user, self._on_user, user=True)
            self._servers.append(us)
            self.endpoints["user"] = us.endpoint
        self._pub = await self.transport.publisher(pub)
        self.endpoints["pub"] = self._pub.endpoint
        return dict(self.endpoints)

    async def connect_peer(self, role: str, endpoint: str) -> Peer:
        peer = await Peer(self.ident, endpoint).open(self.transport)
        self.peers[role] = peer
        return peer

    def spawn(self, coro: Awaitable[Any], name: str = "") -> asyncio.Task[Any]:
        """Run a background task of the role; an exception in it panics the role."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                self.panic(f"background task {name} failed: {exc!r}")

        task.add_done_callback(done)
        return task

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            try:
                await t
            except BaseException:
                pass
        for p in self.peers.values():
            await p.close()
        for s in self._servers:
            await s.close()
        if self._pub is not None:
            await self._pub.close()

    # -- helpers for handlers ----------------------------------------------

    def reply(self, req: Request, cls: type[R], **fields: Any) -> R:
        return cls(h=self.ident.header(re=req.h.msg_id), **fields)

    def ack(self, req: Request) -> CtlAck:
        return CtlAck(h=self.ident.header(re=req.h.msg_id))

    def error(self, re: int, errno: Errno, detail: str) -> ErrorReply:
        return ErrorReply(
            h=self.ident.header(re=re), status=Status.ERROR, errno=errno, detail=detail
        )

    def publish(self, event: Event) -> None:
        """Publish an event on the role's PUB (fire and forget)."""
        if self._pub is not None:
            self._pub.publish(tag_of(event), encode(event))

    def event_header(self) -> Header:
        return self.ident.header()

    def panic(self, message: str) -> None:
        """Enter the panicked state and publish ctl.panic. Idempotent."""
        if self.state == "panicked":
            return
        if len(message) > PANIC_LEN:
            message = message[: PANIC_LEN - 3] + "..."
        self.state = "panicked"
        self.panic_message = message
        self.trace.append(f"PANIC {message}")
        ev = CtlPanic(
            h=self.ident.header(), role=self.role, message=message, trace=list(self.trace)[-32:]
        )
        self.publish(ev)

    # -- dispatch -----------------------------------------------------------

    def _on_kernel(self, raw: bytes) -> bytes | Awaitable[bytes]:
        return self.handle(raw, Scope.KERNEL)

    def _on_user(self, raw: bytes) -> bytes | Awaitable[bytes]:
        return self.handle(raw, Scope.USER)

    def handle(self, raw: bytes, endpoint: Scope) -> bytes | Awaitable[bytes]:
        """One request's bytes -> its reply's bytes (or an awaitable of them).

        A handler written as a plain function runs right here and its reply goes
        back without creating a task; a coroutine handler runs as a task.
        => never raises: every request gets a reply (steps 1-7 of the module).
        """
        try:
            checked = self._check(raw, endpoint)
        except Exception as e:
            return encode(self._check_failed(raw, e))
        if isinstance(checked, Reply):
            return encode(checked)
        msg, fn = checked
        if type(msg) not in self._async:
            try:
                return encode(fn(msg))
            except Exception as e:
                return encode(self._failed(msg, e))
        # Eager start: run the coroutine here until it first waits; only then
        # does it become a task (what Python 3.12's eager tasks do). A handler
        # that never waits costs no task at all.
        coro = fn(msg)
        try:
            first = coro.send(None)
        except StopIteration as done:
            return encode(done.value)
        except Exception as e:
            return encode(self._failed(msg, e))
        sid = msg.h.incarnation if endpoint is Scope.USER else 0
        if sid:
            self._inflight[sid] += 1
            self._inflight_total += 1
        return self._finish(msg, _Resumed(coro, first), sid)

    async def _finish(self, msg: Request, rest: _Resumed, sid: int = 0) -> bytes:
        try:
            return encode(await rest)
        except Exception as e:
            return encode(self._failed(msg, e))
        finally:
            if sid:
                self._inflight_total -= 1
                self._inflight[sid] -= 1
                if not self._inflight[sid]:
                    del self._inflight[sid]

    async def dispatch(self, raw: bytes, endpoint: Scope) -> Reply:
        """handle(), decoded: for tests and tools that want the Reply object."""
        from machine.proto import decode_reply

        out = self.handle(raw, endpoint)
        return decode_reply(out if isinstance(out, bytes) else await out)

    def _check(self, raw: bytes, endpoint: Scope) -> Reply | tuple[Request, Callable[[Any], Any]]:
        tag: bytes | None = None
        body: bytes | memoryview = raw
        try:
            if endpoint is Scope.USER and len(raw) > TAG_LEN:
                msg, body, tag = self._decode_signed(raw)
            else:
                msg = decode_request(raw)
        except BadMessage as e:
            return self.error(e.msg_id, e.errno, e.detail)
        h = msg.h
        if h.proto[0] != PROTOCOL_VERSION[0]:
            return self.error(
                h.msg_id,
                Errno.EPROTO,
                f"protocol {h.proto[0]}.{h.proto[1]} refused; "
                f"{self.role} speaks {PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}",
            )
        scope = type(msg).scope
        if scope is not Scope.ANY and scope is not endpoint:
            return self.error(
                h.msg_id,
                Errno.EPERM,
                f"{tag_of(msg)} is a {scope.value} message; this is the {endpoint.value} endpoint",
            )
        if endpoint is Scope.USER:
            if h.incarnation == 0:
                if tag_of(msg) not in PUBLIC_TAGS:
                    return self.error(
                        h.msg_id,
                        Errno.EPERM,
                        f"{tag_of(msg)} needs a session: attach (uvm.attach) and sign requests",
                    )
            else:
                why = self.auth.check(h.incarnation, h.msg_id, body, tag)
                if why:
                    return self.error(h.msg_id, Errno.EPERM, why)
                if not self.session_ok(h):
                    return self.error(
                        h.msg_id, Errno.EPERM, "the session has ended (detached or reaped)"
                    )
                if type(msg) in self._async and (
                    self._inflight[h.incarnation] >= self.limits.inflight
                    or self._inflight_total >= self.limits.inflight_total
                ):
                    return self.error(
                        h.msg_id,
                        Errno.EAGAIN,
                        f"too many requests in flight at {self.role} "
                        f"(limits inflight {self.limits.inflight}, "
                        f"inflight_total {self.limits.inflight_total})",
                    )
        if self.state == "panicked" and not isinstance(msg, _PANIC_EXEMPT):
            return self.error(h.msg_id, Errno.EPANIC, self.panic_message)
        handler = self._handlers.get(type(msg))
        if handler is None:
            return self.error(h.msg_id, Errno.ENOSYS, f"{self.role} does not serve {tag_of(msg)}")
        if endpoint is Scope.USER and h.incarnation:
            self.user_seen(h)
        elif endpoint is Scope.KERNEL and h.sender == "supervisor" and isinstance(msg, CtlPing):
            # The supervisor's heartbeat (only the kernel endpoint's counts: a client
            # could name itself "supervisor" on a user endpoint).
            self.supervisor_seen = self.clock.now_s()
        self.trace.append(f"{h.sent_ns} {tag_of(msg)} {h.sender}:{h.msg_id}")
        return msg, handler

    def _check_failed(self, raw: bytes, e: Exception) -> Reply:
        """The reply for a request whose checks raised: EINVAL; nothing was dispatched."""
        self.check_errors += 1
        tb = traceback.format_exception(e, limit=8)
        self.trace.append(f"check failed: {type(e).__name__}: {e}")
        self.trace.extend("".join(tb).strip().splitlines()[-4:])
        msg_id = salvage_msg_id(raw[:-TAG_LEN]) or salvage_msg_id(raw)
        return self.error(msg_id, Errno.EINVAL, f"request refused: {type(e).__name__}")

    @staticmethod
    def _decode_signed(raw: bytes) -> tuple[Request, bytes | memoryview, bytes | None]:
        """A user frame: body || tag, or a bare body (public requests). => (msg, body, tag).

        A msgpack message's length follows from its bytes, so at most one of the
        two readings decodes; when neither does, the signed reading's error is the
        more useful one unless those bytes did not decode at all.
        """
        view = memoryview(raw)
        try:
            return decode_request(view[:-TAG_LEN]), view[:-TAG_LEN], raw[-TAG_LEN:]
        except BadMessage as signed:
            try:
                return decode_request(raw), raw, None
            except BadMessage as bare:
                raise (bare if signed.errno is Errno.EBADMSG else signed) from None

    def _failed(self, msg: Request, e: Exception) -> Reply:
        """The reply for a handler that raised: an errno, or EPANIC after a panic."""
        h = msg.h
        if isinstance(e, UserError):
            return self.error(h.msg_id, e.errno, e.detail)
        err: Any = e  # a core error class: .errno (an Errno name) and .detail
        if isinstance(e, self.user_errors) and err.errno in Errno.__members__:
            return self.error(h.msg_id, Errno(err.errno), str(err.detail))
        if isinstance(e, PeerPanic):
            return self.error(h.msg_id, Errno.EPANIC, e.detail)
        if isinstance(e, CallTimeout):
            return self.error(h.msg_id, Errno.ETIMEDOUT, e.detail)
        if isinstance(e, KernelPanic):
            self.panic(str(e))
            return self.error(h.msg_id, Errno.EPANIC, str(e))
        # Anything else is a bug in the kernel: a panic, with the traceback in the trace.
        tb = traceback.format_exception(e, limit=8)
        self.trace.extend("".join(tb).strip().splitlines()[-6:])
        self.panic(f"{self.role}: unexpected {type(e).__name__} in {tag_of(msg)}: {e}")
        return self.error(h.msg_id, Errno.EPANIC, self.panic_message)

    def session_ok(self, h: Header) -> bool:
        """Hook: is h's (authenticated) session still live here? (uvm holds the registry)."""
        return True

    def user_seen(self, h: Header) -> None:
        """Hook: a user request from session h.incarnation arrived (uvm renews leases)."""

    # -- ctl handlers -------------------------------------------------------

    def on_hello(self, msg: CtlHello) -> Reply:
        return self.reply(
            msg,
            CtlHelloReply,
            role=self.role,
            incarnation=self.incarnation,
            pid=self.pid,
            proto=PROTOCOL_VERSION,
        )

    def on_ping(self, msg: CtlPing) -> Reply:
        if self.state == "panicked":
            return self.error(msg.h.msg_id, Errno.EPANIC, self.panic_message)
        return self.reply(
            msg, CtlPingReply, role=self.role, incarnation=self.incarnation, pid=self.pid
        )

    def on_stats(self, msg: CtlStats) -> Reply:
        return self.reply(
            msg,
            CtlStatsReply,
            role=self.role,
            pid=self.pid,
            incarnation=self.incarnation,
            counters=self.counters(),
            frames=self.frames(),
        )

    def on_dump(self, msg: CtlDump) -> Reply:
        state: dict[str, Any] = {
            "role": self.role,
            "pid": self.pid,
            "incarnation": self.incarnation,
            "state": self.state,
            "panic": self.panic_message,
            "counters": self.counters(),
            "trace": list(self.trace),
        }
        try:
            state.update(self.dump_state())
        except Exception as e:
            state["dump_error"] = repr(e)
        return self.reply(msg, CtlDumpReply, role=self.role, state=state)

    def on_halt(self, msg: CtlHalt) -> Reply:
        if self.state != "panicked":
            self.state = "panicked"
            self.panic_message = msg.reason
        return self.ack(msg)

    async def on_shutdown(self, msg: CtlShutdown) -> Reply:
        if self.state != "panicked":
            self.state = "stopping"
        self.stopped_by = msg.h.sender
        asyncio.get_running_loop().call_soon(self.stopped.set)
        return self.ack(msg)

    def on_kpanic(self, msg: CtlKpanic) -> Reply:
        raise KernelPanic(msg.message)

    # -- what a role reports ------------------------------------------------

    def counters(self) -> dict[str, int]:
        return {}

    def frames(self) -> dict[str, int]:
        return {}

    def dump_state(self) -> dict[str, Any]:
        return {}
