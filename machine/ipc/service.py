"""Service: the one request loop every role shares (decode -> check -> dispatch -> reply).

A role subclasses Service, lists the requests it serves in `serves`, and
writes one `on_<verb>` coroutine per request (verb = the tag after its
area: "pmap.enter" -> on_enter). Startup fails if a served request has no
handler or two served requests share a verb.

What happens to every incoming request, in order:
  1. Bytes that do not decode, unknown tags, wrong types, out-of-range
     numbers: an ErrorReply (EBADMSG / EINVAL). Nothing else runs.
     (Steps 1-3 and 3a's public rule are machine.ipc.checks: stateless.)
  2. Another major protocol version: EPROTO.
  3. Wrong endpoint for the request's scope (a kernel message on the user
     endpoint, or the reverse): EPERM.
  3a. On a user endpoint, a request that is not signed by the session its
     header names (machine.ipc.auth: a 16-byte tag after the msgpack bytes),
     or that replays a msg_id that session already sent here: EPERM. Only
     the public requests (hello, ping, stats, directory, status, attach)
     may come unsigned, from session 0. A signed request of a session that
     has ended: ESESSION, at every role.
  4. The role has panicked or was halted: EPANIC with the panic message
     (except ctl.ping/dump/shutdown, which still work for the supervisor).
  5. Not served by this role: ENOSYS.
  6. A plain handler runs right here; a coroutine handler is started here up
     to its first wait (machine.ipc.eager) and only then becomes a task, the
     transport's. A plain handler marked @deferred may return a Pending
     (machine.ipc.pending): its reply is encoded and sent by whichever handler
     sets it, with no task; it counts in flight as a coroutine request does.
     UserError -> its errno; PeerPanic (a role we called has panicked) ->
     EPANIC; KernelPanic or any other exception -> this role panics: it
     publishes ctl.panic, answers EPANIC from then on, and waits for the
     supervisor to stop it (it does not exit, so the panic event and dump
     requests are not lost).
  7. Last resort: should the checks themselves raise (a bug: they must
     answer any input), the request is answered EINVAL, dispatched to no
     handler, and counted (`check_errors`, with the traceback in the trace);
     the role serves on. Every request gets exactly one reply.

Before step 1 the transport's callback records the request in the role's
flight recorder (machine.ipc.recorder: bounded; replies its peers receive and
events it subscribed to are recorded too). The trace (machine.ipc.tracering)
and a panic message (cut to PANIC_LEN) never grow with a client's input.

Control requests (ctl.*) are answered without touching role state or
locks, so they never queue behind work.

Background work of a role (a driver loop, the lease reaper) runs through
`spawn` (machine.ipc.tasks.TaskSet): an exception in it panics the role, and
close() cancels and awaits every one. Request timing (machine.ipc.timing) is
on when `Service.timing` is set before start(); off, it costs nothing.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import os
import random
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar, TypeVar

from machine.ipc import checks, eager, ids
from machine.ipc.auth import SessionAuth, new_machine_key
from machine.ipc.ctl import CtlHandlers
from machine.ipc.framed import decode_out, encode_out
from machine.ipc.peer import CallTimeout, Identity, Peer, PeerPanic
from machine.ipc.pending import Pending
from machine.ipc.recorder import FlightRecorder
from machine.ipc.tasks import TaskSet
from machine.ipc.timing import Timing
from machine.ipc.tracering import TraceRing
from machine.ipc.transport import Clock, Handler, Publisher, Server, Subscription, Transport
from machine.kassert import KernelPanic
from machine.limits import Limits
from machine.proto import (
    BadMessage,
    CtlAck,
    CtlDump,
    CtlHalt,
    CtlHello,
    CtlKpanic,
    CtlPanic,
    CtlPing,
    CtlShutdown,
    CtlStats,
    Errno,
    ErrorReply,
    Event,
    Header,
    Reply,
    Request,
    Scope,
    Status,
    UserError,
    encode,
    tag_of,
)
from machine.share import FairShare

R = TypeVar("R", bound=Reply)
T = TypeVar("T")
PANIC_LEN = 4096

_PANIC_EXEMPT = (CtlPing, CtlDump, CtlShutdown, CtlHello, CtlStats)
CTL_REQUESTS: tuple[type[Request], ...] = (*_PANIC_EXEMPT, CtlHalt, CtlKpanic)


def verb_of(cls: type[Request]) -> str:
    return tag_of(cls).split(".", 1)[1]


class Service(CtlHandlers):
    """Base of every role's service (and of the supervisor's)."""

    role: ClassVar[str] = "?"
    serves: ClassVar[tuple[type[Request], ...]] = ()
    #: The core's own client-error exceptions (each with .errno, an Errno name,
    #: and .detail): a handler lets them propagate and gets that errno replied.
    user_errors: ClassVar[tuple[type[Exception], ...]] = ()
    #: Request timing (machine.ipc.timing), for every service of the process; None: off.
    #: Set before start(): start() binds the timed handlers only when it is set.
    timing: ClassVar[Timing | None] = None

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
        self.auth = SessionAuth(
            key if key is not None else new_machine_key(), signed=getattr(transport, "signed", None)
        )
        self.limits = limits or Limits()
        #: Coroutine requests of each session still running here (held, <= limits.inflight),
        #: and of every session together (total, <= limits.inflight_total, shared fairly
        #: among the live sessions: machine.share): a session that pipelines without
        #: waiting gets EAGAIN instead of a task per request.
        self.inflight = FairShare(
            "inflight_total", self.limits.inflight_total, self.auth.live, "requests in flight"
        )
        self.rng = rng
        self.clock = clock or Clock()
        self.incarnation = incarnation if incarnation is not None else ids.incarnation(rng)
        self.pid = pid if pid is not None else os.getpid()
        self.ident = Identity(self.role, self.incarnation, self.clock)
        #: The flight recorder: every input in the order handled (machine.ipc.recorder).
        self.recorder = self.ident.recorder = FlightRecorder.bounded(
            self.role, self.ident, self.clock.now_s, self.limits
        )
        self._ep_kernel, self._ep_user = f"{self.role}/kernel", f"{self.role}/user"
        self._kserver: Server | None = None
        self._userver: Server | None = None
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
        self._tasks = TaskSet(on_error=self._task_failed)
        self._handlers: dict[type[Request], Callable[[Any], Any]] = {}
        self._async: set[type[Request]] = set()
        #: Requests counted in flight per session: coroutine and deferred handlers.
        self._limited: set[type[Request]] = set()
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
            if cls in self._async or getattr(fn, "deferred", False):
                self._limited.add(cls)

    # -- life cycle ---------------------------------------------------------

    async def start(self, kernel: str | None, user: str | None, pub: str) -> dict[str, str]:
        """Bind the endpoints; returns the bound addresses (wildcards resolved)."""
        on_kernel: Handler = self._on_kernel
        on_user: Handler = self._on_user
        if self.timing is not None:
            on_kernel = self.timing.wrap(self.role, on_kernel)
            on_user = self.timing.wrap(self.role, on_user)
        if kernel is not None:
            ks = self._kserver = await self.transport.bind(kernel, on_kernel)
            self._servers.append(ks)
            self.endpoints["kernel"] = ks.endpoint
        if user is not None:
            us = self._userver = await self.transport.bind(user, on_user, user=True)
            self._servers.append(us)
            self.endpoints["user"] = us.endpoint
        self._pub = await self.transport.publisher(pub)
        self.endpoints["pub"] = self._pub.endpoint
        return dict(self.endpoints)

    def peer(self, role: str, endpoint: str) -> Peer:
        """A channel to another role, named at build time and opened by connect()."""
        self.peers[role] = Peer(self.ident, endpoint, label=f"{role}/kernel")
        return self.peers[role]

    async def subscribe(
        self, role: str, endpoint: str, prefix: str, on_event: Callable[[bytes], None]
    ) -> Subscription:
        """Subscribe to `role`'s events at `endpoint`; each one delivered is recorded
        (machine.ipc.recorder, kind "evt") before on_event sees it."""
        rec, ep = self.recorder, f"{role}/pub"

        def recorded(raw: bytes) -> None:
            rec.record("evt", ep, 0, raw)
            on_event(raw)

        return await self.transport.subscribe(endpoint, prefix, recorded)

    async def connect(self) -> None:
        """Open the channels to the roles this one calls (machine.rolespec, step 2); a role
        that also subscribes to events extends this."""
        for p in self.peers.values():
            await p.open(self.transport)

    async def connect_peer(self, role: str, endpoint: str) -> Peer:
        """Name a peer and open it now (tools and tests; roles name theirs when built)."""
        return await self.peer(role, endpoint).open(self.transport)

    def spawn(self, coro: Coroutine[Any, Any, T], name: str = "") -> asyncio.Task[T]:
        """Run a background task of the role (machine.ipc.tasks): an exception in it panics
        the role; close() cancels and awaits it."""
        return self._tasks.spawn(coro, name)

    def _task_failed(self, name: str, exc: BaseException) -> None:
        self.panic(f"background task {name} failed: {exc!r}")

    async def close(self) -> None:
        await self._tasks.close()
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

    def _on_kernel(self, raw: bytes) -> bytes | Awaitable[bytes | None] | None:
        self.recorder.record(
            "req", self._ep_kernel, self._kserver.conn if self._kserver else 0, raw
        )
        return self.handle(raw, Scope.KERNEL)

    def _on_user(self, raw: bytes) -> bytes | Awaitable[bytes | None] | None:
        self.recorder.record("req", self._ep_user, self._userver.conn if self._userver else 0, raw)
        return self.handle(raw, Scope.USER)

    def handle(self, raw: bytes, endpoint: Scope) -> bytes | Awaitable[bytes | None] | None:
        """One request's bytes -> its reply's bytes (or an awaitable of them).

        A handler written as a plain function runs right here and its reply goes
        back without creating a task; a coroutine handler runs as a task. (The
        transport's callbacks, _on_kernel and _on_user, record it first.)
        => never raises: every request gets a reply (steps 1-7 of the module), except a
           Notice that passed the checks (one-way: None).
        """
        try:
            checked = self._check(raw, endpoint)
        except Exception as e:
            self.recorder.refused(raw)
            return encode(self._check_failed(raw, e))
        if isinstance(checked, Reply):
            self.recorder.refused(raw)
            return encode(checked)
        msg, fn = checked
        if msg.notice:
            return self._notice(msg, fn)
        if type(msg) not in self._async:
            try:
                out = fn(msg)
                if not isinstance(out, Pending):
                    return encode_out(out)
            except Exception as e:
                return encode(self._failed(msg, e))
            return self._deferred(msg, out, endpoint)
        # Eager start (machine.ipc.eager): the coroutine runs here until it first waits;
        # only then does the transport make it a task. One that never waits costs none.
        try:
            started = eager.start(fn(msg))
        except Exception as e:
            return encode(self._failed(msg, e))
        if isinstance(started, eager.Ready):
            return encode_out(started.value)
        sid = msg.h.incarnation if endpoint is Scope.USER else 0
        if sid:
            self.inflight.take(sid)
        return self._finish(msg, started, sid)

    def _deferred(self, msg: Request, out: Pending[Reply], endpoint: Scope) -> Pending[bytes]:
        """A plain handler's Pending reply (machine.ipc.pending) as the reply's bytes, set
        synchronously in the handler that completes it; counted in flight until then."""
        sid = msg.h.incarnation if endpoint is Scope.USER else 0
        if sid:
            self.inflight.take(sid)

        def encoded(rep: Reply) -> bytes:
            if sid:
                self.inflight.give(sid)
            try:
                return encode_out(rep)
            except Exception as e:
                return encode(self._failed(msg, e))

        return out.map(encoded)

    def _notice(self, msg: Request, fn: Callable[[Any], Any]) -> Awaitable[None] | None:
        """A one-way request (proto.Notice): run its handler, send nothing back. A handler
        that fails is handled as any (an errno is only traced; a panic is a panic)."""
        try:
            out = fn(msg)
            if type(msg) in self._async:
                started = eager.start(out)
                if not isinstance(started, eager.Ready):
                    return self._finish_notice(msg, started)
        except Exception as e:
            self._notice_failed(msg, e)
        return None

    async def _finish_notice(self, msg: Request, rest: eager.Resumed[Any]) -> None:
        try:
            await rest
        except Exception as e:
            self._notice_failed(msg, e)

    def _notice_failed(self, msg: Request, e: Exception) -> None:
        rep = self._failed(msg, e)
        self.trace.append(f"notice {tag_of(msg)} failed: {rep.errno}: {rep.detail}")

    async def _finish(self, msg: Request, rest: eager.Resumed[Reply], sid: int = 0) -> bytes:
        try:
            return encode_out(await rest)
        except Exception as e:
            return encode(self._failed(msg, e))
        finally:
            if sid:
                self.inflight.give(sid)

    async def dispatch(self, raw: bytes, endpoint: Scope) -> Reply:
        """handle(), decoded: for tests and tools that want the Reply object (a multipart
        reply's frames copied into its payloads, then sent)."""
        out = self.handle(raw, endpoint)
        got = out if out is None or isinstance(out, bytes) else await out
        if got is None:
            raise LookupError("a notice has no reply")
        return decode_out(got)

    def _check(self, raw: bytes, endpoint: Scope) -> Reply | tuple[Request, Callable[[Any], Any]]:
        try:
            msg, body, tag = checks.decode_frame(raw, endpoint)
        except BadMessage as e:
            return self.error(e.msg_id, e.errno, e.detail)
        h = msg.h
        refused = checks.refusal(msg, endpoint, self.role)
        if refused is not None:
            return self.error(h.msg_id, *refused)
        if endpoint is Scope.USER and h.incarnation:  # 3a: a session's signed request
            why = self.auth.check(h.incarnation, h.msg_id, body, tag)
            if why:
                return self.error(h.msg_id, Errno.EPERM, why)
            if not self.session_ok(h):
                return self.error(
                    h.msg_id, Errno.ESESSION, "the session has ended (detached or reaped)"
                )
            if type(msg) in self._limited:
                fs = self.inflight
                if fs.held.get(h.incarnation, 0) >= self.limits.inflight:
                    return self.error(
                        h.msg_id,
                        Errno.EAGAIN,
                        f"too many requests in flight at {self.role} "
                        f"(limit inflight {self.limits.inflight})",
                    )
                if not fs.grants(h.incarnation):
                    return self.error(
                        h.msg_id,
                        Errno.EAGAIN,
                        f"too many requests in flight at {self.role}: " + fs.refusal(h.incarnation),
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
        return self.error(
            checks.salvaged_msg_id(raw), Errno.EINVAL, f"request refused: {type(e).__name__}"
        )

    def _failed(self, msg: Request, e: Exception) -> ErrorReply:
        """The reply for a handler that raised: an errno, or EPANIC after a panic."""
        return self.failure(e, msg.h.msg_id, tag_of(msg))

    def failure(self, e: Exception, re: int, what: str) -> ErrorReply:
        """An exception of work done for `what` (a request's tag, a trap) as the error
        reply to msg_id `re`: a caller's mistake is its errno; a kernel bug panics the role
        (KernelPanic, or anything unexpected, with the traceback in the trace)."""
        if isinstance(e, UserError):
            return self.error(re, e.errno, e.detail)
        err: Any = e  # a core error class: .errno (an Errno name) and .detail
        if isinstance(e, self.user_errors) and err.errno in Errno.__members__:
            return self.error(re, Errno(err.errno), str(err.detail))
        if isinstance(e, PeerPanic):
            return self.error(re, Errno.EPANIC, e.detail)
        if isinstance(e, CallTimeout):
            return self.error(re, Errno.ETIMEDOUT, e.detail)
        if isinstance(e, KernelPanic):
            self.panic(str(e))
            return self.error(re, Errno.EPANIC, str(e))
        # Anything else is a bug in the kernel: a panic, with the traceback in the trace.
        tb = traceback.format_exception(e, limit=8)
        self.trace.extend("".join(tb).strip().splitlines()[-6:])
        self.panic(f"{self.role}: unexpected {type(e).__name__} in {what}: {e}")
        return self.error(re, Errno.EPANIC, self.panic_message)

    def session_ok(self, h: Header) -> bool:
        """Hook: is h's (authenticated) session still live? (uvm holds the registry; the
        other roles know the sessions uvm told them ended: machine.ipc.auth)."""
        return not self.auth.ended(h.incarnation)

    def user_seen(self, h: Header) -> None:
        """Hook: a user request from session h.incarnation arrived (uvm renews leases)."""
