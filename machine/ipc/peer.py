"""Typed request/reply over one connection: `await peer.call(PmapEnter(...))`.

A Peer stamps each request with its sender's header (msg_id, role,
incarnation, clock), sends it, and resolves the future whose msg_id the
reply's `re` names. Replies nobody waits for (late, or re=0) are dropped.

Errors: call() returns error replies as they are; call_ok() raises
RemoteError for them (PeerPanic for EPANIC), and CallTimeout when no reply
arrives within the timeout. No call ever waits forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ClassVar, TypeVar

from machine.ipc.auth import Mac, SignedFrames
from machine.ipc.recorder import FlightRecorder
from machine.ipc.timing import Timing, now_ns
from machine.ipc.transport import Clock, Connection, Transport, running_loop
from machine.proto import (
    PROTOCOL_VERSION,
    Errno,
    ErrnoError,
    Header,
    Notice,
    Reply,
    Request,
    Status,
    attach_frames,
    decode_reply,
    encode,
    tag_of,
    with_header,
)

R = TypeVar("R", bound=Reply)

DEFAULT_TIMEOUT_S = 30.0


class RemoteError(ErrnoError):
    """An error reply: `errno` and `detail` as the peer sent them (`tag`: the request)."""

    def __init__(self, errno: Errno, detail: str, tag: str = "") -> None:
        super().__init__(errno, detail)
        if tag:
            self.args = (f"{tag}: {errno}: {detail}",)


class PeerPanic(RemoteError):
    """The peer (or the machine) has panicked; detail is the panic message."""


class CallTimeout(RemoteError):
    def __init__(self, detail: str) -> None:
        super().__init__(Errno.ETIMEDOUT, detail)


class Identity:
    """Who sends: role name, incarnation, a msg_id counter and the clock.

    A client session's identity also holds the session key: every request it
    sends is then signed (machine.ipc.auth). `become` turns the anonymous
    identity a client starts with (incarnation 0) into its session's.
    `last_id` is the msg_id of the last header made (0: none yet); a role's flight
    recorder (machine.ipc.recorder) notes it with each input, and records the replies
    its peers receive (`recorder`, set by the role's Service; None for a client).
    """

    def __init__(
        self, sender: str, incarnation: int, clock: Clock | None = None, key: bytes | None = None
    ) -> None:
        self.sender = sender
        self.incarnation = incarnation
        self.clock = clock or Clock()
        self.key = key
        self._mac = Mac(key) if key is not None else None
        #: The transport's notes of frames signed here (machine.ipc.auth; set by Peer.open
        #: on a transport that keeps them, the in-memory bus), or None.
        self.signed: SignedFrames | None = None
        self.last_id = 0
        self.recorder: FlightRecorder | None = None

    def become(self, incarnation: int, key: bytes) -> None:
        self.incarnation, self.key, self._mac = incarnation, key, Mac(key)

    def frame(self, msg: Request) -> bytes:
        """The bytes to send: the message, and its tag when this identity has a key."""
        body = encode(msg)
        if self._mac is None:
            return body
        if self.signed is not None:
            return self.signed.sign(self._mac, body)
        return body + self._mac.tag(body)

    def header(self, re: int = 0) -> Header:
        self.last_id += 1
        return Header(
            msg_id=self.last_id,
            sender=self.sender,
            incarnation=self.incarnation,
            re=re,
            proto=PROTOCOL_VERSION,
            sent_ns=self.clock.now_ns(),
        )


def raise_for(reply: Reply) -> None:
    """Raise the exception an error reply stands for."""
    if reply.status is Status.OK:
        return
    errno = reply.errno or Errno.EINVAL
    if errno is Errno.EPANIC:
        raise PeerPanic(errno, reply.detail)
    raise RemoteError(errno, reply.detail)


class _Then:
    """A call's waiter that hands the reply (or the call's error) to a callback, in the
    reply's own receive callback: no future, no task step (Peer.call_then)."""

    __slots__ = ("cb",)

    def __init__(self, cb: Callable[[Reply | BaseException], None]) -> None:
        self.cb: Callable[[Reply | BaseException], None] | None = cb

    def done(self) -> bool:
        return self.cb is None

    def _give(self, out: Reply | BaseException) -> None:
        cb, self.cb = self.cb, None
        if cb is not None:
            cb(out)

    set_result = set_exception = _give


class Peer:
    """One connection to one endpoint, with request/reply matching.

    Timeouts: each call has a deadline (its timeout_s, or the peer's); one timer per
    peer, set for the earliest deadline of the calls in flight, expires the overdue
    ones (CallTimeout) and re-arms for the next. A call costs a dict entry, not a timer
    of its own: a cancelled asyncio timer stays in the loop's heap until its time,
    and thousands of them made every other timer slower (~15 % of an in-memory fault).
    The timer may outlive the calls; it then fires once and finds nothing due.
    """

    #: Call timing (machine.ipc.timing) for every peer of the process; None: off, which
    #: costs two `is not None` tests per call.
    timing: ClassVar[Timing | None] = None

    def __init__(
        self,
        ident: Identity,
        endpoint: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        label: str = "",
    ):
        self.ident = ident
        self.endpoint = endpoint
        #: How the flight recorder names this connection's replies ("uvm/kernel").
        self.label = label or endpoint
        self.timeout_s = timeout_s
        self._conn: Connection | None = None
        self._pending: dict[int, asyncio.Future[Reply] | _Then] = {}
        self._deadlines: dict[int, float] = {}  # msg_id -> loop time it is overdue
        self._sweep: asyncio.TimerHandle | None = None
        self.sent = 0

    async def open(self, transport: Transport) -> Peer:
        if self._conn is None:
            self._conn = await transport.connect(self.endpoint, self._on_reply)
            signed = getattr(transport, "signed", None)  # a test's stand-in may lack it
            if signed is not None:
                self.ident.signed = signed
        return self

    def _on_reply(self, raw: bytes) -> None:
        rec = self.ident.recorder
        if rec is not None:
            rec.record("rep", self.label, 0, raw)
        try:
            reply = decode_reply(raw)
            frames = getattr(raw, "frames", None)  # a multipart reply (transport.Multipart)
            if frames is not None:
                reply = attach_frames(reply, frames)
        except Exception:
            return
        fut = self._pending.pop(reply.h.re, None)
        if fut is not None and not fut.done():
            self._deadlines.pop(reply.h.re, None)
            fut.set_result(reply)

    def fail_all(self, exc: BaseException) -> None:
        """Fail every pending call (the machine panicked or is gone)."""
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def _start(
        self, req: Request, waiter: asyncio.Future[Reply] | _Then, timeout_s: float | None
    ) -> Request:
        """Stamp req, register its waiter and deadline, send it. => the message sent."""
        assert self._conn is not None, "peer not opened"
        msg = with_header(req, self.ident.header())
        mid = msg.h.msg_id
        self._pending[mid] = waiter
        self.sent += 1
        loop = running_loop()
        deadline = loop.time() + (timeout_s or self.timeout_s)
        self._deadlines[mid] = deadline
        sweep = self._sweep
        if sweep is None or deadline < sweep.when():
            if sweep is not None:
                sweep.cancel()
            self._sweep = loop.call_at(deadline, self._expire_overdue)
        try:
            self._conn.send(self.ident.frame(msg))
        except BaseException:
            self._pending.pop(mid, None)
            self._deadlines.pop(mid, None)
            raise
        return msg

    def call_then(
        self,
        req: Request,
        cb: Callable[[Reply | BaseException], None],
        timeout_s: float | None = None,
    ) -> None:
        """Send req; its reply (or CallTimeout, or the error of fail_all) goes to cb, called
        from the reply's receive callback: a long poll's next step runs without a task.
        cb must not raise."""
        timing = self.timing
        if timing is None:
            self._start(req, _Then(cb), timeout_s)
            return
        t_call, sent = now_ns(), list[Request]()

        def timed(out: Reply | BaseException) -> None:
            timing.on_call(self.ident.sender, tag_of(sent[0]), sent[0].h.msg_id, t_call, now_ns())
            cb(out)

        sent.append(self._start(req, _Then(timed), timeout_s))

    async def call(self, req: Request, timeout_s: float | None = None) -> Reply:
        assert self._conn is not None, "peer not opened"
        timing = self.timing
        t_call = now_ns() if timing is not None else 0
        fut: asyncio.Future[Reply] = running_loop().create_future()
        msg = self._start(req, fut, timeout_s)
        mid = msg.h.msg_id
        try:
            rep = await fut
        finally:
            self._pending.pop(mid, None)
            self._deadlines.pop(mid, None)
        if timing is not None:
            timing.on_call(self.ident.sender, tag_of(msg), mid, t_call, now_ns())
        return rep

    def notify(self, req: Notice) -> None:
        """Send a one-way request (proto.Notice): nothing comes back. It is handled after
        every request this peer sent before it, and before every one sent after it."""
        assert self._conn is not None, "peer not opened"
        self.sent += 1
        self._conn.send(self.ident.frame(with_header(req, self.ident.header())))

    def _expire_overdue(self) -> None:
        """The sweep timer: expire every call past its deadline, re-arm for the next."""
        self._sweep = None
        loop = running_loop()
        now = loop.time()
        nxt: float | None = None
        for mid, deadline in list(self._deadlines.items()):
            if deadline <= now:
                del self._deadlines[mid]
                self._expire(mid)
            elif nxt is None or deadline < nxt:
                nxt = deadline
        if nxt is not None:
            self._sweep = loop.call_at(nxt, self._expire_overdue)

    def _expire(self, mid: int) -> None:
        fut = self._pending.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_exception(
                CallTimeout(f"no reply from {self.endpoint} to request {mid} within the timeout")
            )

    async def call_ok(self, req: Request, expect: type[R], timeout_s: float | None = None) -> R:
        """Call and return the reply as `expect`; raise for error replies."""
        reply = await self.call(req, timeout_s)
        raise_for(reply)
        if not isinstance(reply, expect):
            raise RemoteError(Errno.EBADMSG, f"expected {expect.__name__}, got {reply!r}")
        return reply

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self.fail_all(ConnectionAbortedError(f"connection to {self.endpoint} closed"))
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
