"""The synchronous client for gevent (Locust users): the machine's protocol, ZMTP on gevent.

    with GreenMachine.attach("tcp://127.0.0.1:7700") as m:
        p = m.spawn()
        va = p.mmap(64 * 4096)
        p.store(va + 10, b"hello")          # faults resolved in the kernel: one reply
        assert p.load(va + 10, 5) == b"hello"

Why a second client: Locust's users are greenlets, and asyncio's running loop
is per OS thread, so two users' awaits cannot overlap in one loop (locust#1251).
This client blocks only the calling greenlet (its sockets are gevent's, and
yield to the hub), and since the kernel resolves faults (one request, one reply
per access) it is small: a call is send, then receive until the reply to it.
Each role connection speaks ZeroMQ's wire protocol itself (zmtp.Dealer: one
send(2) per request, no libzmq I/O thread or mailbox; zmtp.py says what that
saved); the events (EventWatch) and kcall stay on zmq.green. docs/stress.md
"Which client" has the measurement against the bridge (bridge.py).

What it shares with the async client, so the two cannot drift apart: the
protocol classes, the signing (machine.ipc.peer.Identity), the error classes
and mapping (machine.client.errors), the Process/File/Socket request code
(machine.client.process: its coroutines are run here by `_finish`, which works
because GreenMachine.call_role returns without awaiting), and the wire's
reassembly (machine.client.wire.Wire).

Invariants:
  - one call in flight per role connection (`_Conn.lock`): a session's keepalive
    and its user take turns; a reply whose `re` is not the call's (a late one) is
    dropped; a connection the role closed is made again by the next call (the
    call in flight then waits, as for a lost reply, to its timeout or the panic);
  - no call waits past its timeout, nor past a panic or stop the session's
    EventWatch has seen (it waits in slices of _SLICE_S and looks);
  - once a session has seen MachinePanic / MachineStopped it raises that same
    object for every later call (as the async Session);
  - close() detaches (every process of the session exits), kills the keepalive
    and closes every socket, whatever happened before.
"""

from __future__ import annotations

import contextlib
import os
import time
from types import TracebackType
from typing import Any

import gevent
import gevent.lock
import zmq.green as zmq

from machine.client.errors import (
    MachineError,
    MachinePanic,
    MachineStopped,
    MachineTimeout,
    RequestError,
    reply_error,
)
from machine.client.process import File, Process
from machine.client.session import status_data
from machine.ipc.peer import Identity
from machine.ipc.transport import Clock
from machine.proto import (
    NO_HEADER,
    O_RDWR,
    CtlDirectory,
    CtlDirectoryReply,
    CtlHello,
    CtlHelloReply,
    CtlPanic,
    CtlPing,
    CtlStatus,
    CtlStatusReply,
    CtlStopping,
    Errno,
    MmuAccessReply,
    Reply,
    Request,
    Status,
    UvmAttach,
    UvmAttachReply,
    UvmDetach,
    UvmOpen,
    UvmOpenReply,
    UvmSpawn,
    UvmSpawnReply,
    decode_event,
    decode_reply,
    tag_of,
    with_header,
)
from machine.stress.greenproc import GreenFile, GreenProcess, GreenSocket, GreenWire
from machine.stress.zmtp import Dealer

_H = NO_HEADER
_SLICE_S = 0.25  # a waiting call looks at the EventWatch this often
_ctx: zmq.Context | None = None  # type: ignore[type-arg]


def context() -> zmq.Context:  # type: ignore[type-arg]
    """The process's one zmq.green context (made on first use)."""
    global _ctx
    if _ctx is None:
        _ctx = zmq.Context()
    return _ctx


def _dealer(endpoint: str) -> zmq.Socket:  # type: ignore[type-arg]
    s: zmq.Socket = context().socket(zmq.DEALER)  # type: ignore[type-arg]
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


class _GreenClock(Clock):
    """A header's sent_ns from the monotonic clock (there is no asyncio loop here)."""

    def now_ns(self) -> int:
        return time.monotonic_ns()


class EventWatch:
    """The machine's events (SUB), read by one greenlet: the panic (with its role and
    dump) and the stop, for every session of this process to look at."""

    def __init__(self, events_endpoint: str) -> None:
        self.endpoint = events_endpoint
        self.panic: CtlPanic | None = None
        self.stopping: str | None = None
        self._sock: zmq.Socket | None = None  # type: ignore[type-arg]
        self._glet: gevent.Greenlet[Any, Any] | None = None

    def start(self) -> EventWatch:
        if self._glet is None:
            s = context().socket(zmq.SUB)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SUBSCRIBE, b"ctl.")
            s.connect(self.endpoint)
            self._sock = s
            self._glet = gevent.spawn(self._run)
        return self

    def _run(self) -> None:
        assert self._sock is not None
        while True:
            frames = self._sock.recv_multipart()
            try:
                ev = decode_event(frames[-1])
            except Exception:
                continue
            if isinstance(ev, CtlPanic) and (
                self.panic is None or (ev.dump and not self.panic.dump)
            ):
                self.panic = ev  # the first, then the one that names the crash dump
            elif isinstance(ev, CtlStopping) and self.stopping is None:
                self.stopping = ev.reason

    def close(self) -> None:
        if self._glet is not None:
            self._glet.kill()
            self._glet = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _Conn:
    """One DEALER to one endpoint, one call at a time (`lock`): a ZMTP connection of its
    own (zmtp.Dealer, not libzmq's: see zmtp.py for why), made on first use and made
    again after the peer closed it."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.lock = gevent.lock.Semaphore()
        self.dealer: Dealer | None = None

    def send(self, frame: bytes, deadline: float) -> bool:
        """=> True once the message is written to a live connection; False if none could
        be had (the role is gone, or not there yet): the caller waits as for a lost reply."""
        d = self.dealer
        try:
            if d is None or d.broken:
                self.dealer = None
                d = self.dealer = Dealer.connect(
                    self.endpoint, max(0.001, deadline - time.monotonic())
                )
            d.send(frame, deadline)
            return True
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        if self.dealer is not None:
            self.dealer.close()
            self.dealer = None


class GreenMachine:
    """One attachment (session) to a running machine, driven from greenlets."""

    def __init__(
        self, endpoint: str, *, timeout_s: float = 30.0, watch: EventWatch | None = None
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.watch = watch
        self.ident = Identity("client", 0, _GreenClock())
        self.directory = CtlDirectoryReply(h=_H)
        self.processes: dict[int, GreenProcess] = {}
        self.panic: MachinePanic | None = None
        self.stopped: MachineStopped | None = None
        self._conns: dict[str, _Conn] = {}
        self._keepalive: gevent.Greenlet[Any, Any] | None = None
        self._listening = False

    # -- attach / detach -------------------------------------------------------------

    @classmethod
    def attach(
        cls, endpoint: str, *, timeout_s: float = 30.0, watch: EventWatch | None = None
    ) -> GreenMachine:
        """Attach (also a context manager that detaches on exit)."""
        m = cls(endpoint, timeout_s=timeout_s, watch=watch)
        try:
            m._connect()
        except BaseException:
            m.close()
            raise
        return m

    def _connect(self) -> None:
        self._conns["supervisor"] = _Conn(self.endpoint)
        self._call("supervisor", CtlHello(h=_H), CtlHelloReply)
        d: CtlDirectoryReply = self._call("supervisor", CtlDirectory(h=_H), CtlDirectoryReply)
        self.directory = d
        for role, eps in d.roles.items():
            self._conns[role] = _Conn(eps.user)
            self._call(role, CtlHello(h=_H), CtlHelloReply)
        a: UvmAttachReply = self._call("uvm", UvmAttach(h=_H), UvmAttachReply)
        self.ident.become(a.session, a.key)
        if d.lease_s > 0:
            self._keepalive = gevent.spawn(self._keep_alive, d.lease_s / 4)

    def _keep_alive(self, every_s: float) -> None:
        while True:
            gevent.sleep(every_s)
            with contextlib.suppress(MachineError):
                self._call("uvm", CtlPing(h=_H), Reply, timeout_s=every_s)

    def close(self) -> None:
        """Detach: every process of this session exits. Safe after a panic."""
        if self._keepalive is not None:
            self._keepalive.kill()
            self._keepalive = None
        ok = self.panic is None and self.stopped is None and self.session != 0
        if ok and "uvm" in self._conns:
            with contextlib.suppress(MachineError):
                self._call("uvm", UvmDetach(h=_H), Reply, timeout_s=5.0)
        for c in self._conns.values():
            c.close()
        self._conns.clear()

    def __enter__(self) -> GreenMachine:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def session(self) -> int:
        """This session's public id (0 before attach); it authorises nothing by itself."""
        return self.ident.incarnation

    # -- calls -----------------------------------------------------------------------

    def _ended(self) -> MachineError | None:
        """The panic or stop this session has seen, or its watch has."""
        if self.panic is None and self.watch is not None and self.watch.panic is not None:
            ev = self.watch.panic
            self.panic = MachinePanic(ev.message, ev.role, ev.dump)
        if self.stopped is None and self.watch is not None and self.watch.stopping is not None:
            self.stopped = MachineStopped(self.watch.stopping)
        return self.panic or self.stopped

    def _call(
        self, role: str, req: Request, expect: type[Any], timeout_s: float | None = None
    ) -> Any:
        """One request to a role's user endpoint; error replies become exceptions."""
        ended = self._ended()
        if ended is not None:
            raise ended
        conn = self._conns[role]
        timeout_s = timeout_s or self.timeout_s
        with conn.lock:
            msg = with_header(req, self.ident.header())
            mid = msg.h.msg_id
            deadline = time.monotonic() + timeout_s
            sent = conn.send(self.ident.frame(msg), deadline)
            rep = self._await_reply(conn if sent else None, mid, deadline, timeout_s, req)
        return self._value(rep, expect)

    def _await_reply(
        self, conn: _Conn | None, mid: int, deadline: float, timeout_s: float, req: Request
    ) -> Reply:
        """The reply to `mid`, waiting in slices of _SLICE_S that look at the EventWatch.
        conn None (nothing could be sent), or its connection closed meanwhile: the reply
        is lost, as a libzmq DEALER loses it; the wait ends at the deadline or the panic."""
        d = conn.dealer if conn is not None else None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MachineTimeout(f"{tag_of(req)}: no reply within {timeout_s} s")
            raw = None
            if d is not None and not d.broken:
                try:
                    raw = d.recv(min(left, _SLICE_S))
                except (OSError, ValueError):
                    pass  # closed: the role is gone (a panic, a stop): wait for the news
            else:
                gevent.sleep(min(left, _SLICE_S))
            if raw is not None:
                try:
                    rep = decode_reply(raw)
                except Exception:
                    continue  # not a reply of ours (a peer bug, dropped as Peer drops it)
                if rep.h.re == mid:
                    return rep
                continue  # a late reply: the next one may be ours at once
            ended = self._ended()
            if ended is not None:
                raise ended

    def _value(self, rep: Reply, expect: type[Any]) -> Any:
        if rep.status is Status.OK:
            if not isinstance(rep, expect):
                raise RequestError(Errno.EBADMSG, f"unexpected reply {type(rep).__name__}")
            return rep
        err = reply_error(rep)
        # EPANIC / ESHUTDOWN first, as Session._call: an access whose trap uvm answered
        # with EPANIC comes back as an MmuAccessReply, and is the machine's panic
        if isinstance(err, MachinePanic):
            if self.panic is None:
                self.panic = err
            raise self.panic
        if isinstance(err, MachineStopped):
            if self.stopped is None:
                self.stopped = err
            raise self.stopped
        if isinstance(rep, expect) and isinstance(rep, MmuAccessReply):
            return rep  # a trap: the CPU (Process._access) handles it
        raise err

    def call(self, role: str, req: Request, expect: type[Any] = Reply) -> Any:
        """Send any request to a role's user endpoint (blocking this greenlet)."""
        return self._call(role, req, expect)

    async def call_role(self, role: str, req: Request, expect: type[Any] = Reply) -> Any:
        """machine.client.process's entry: returns without awaiting (see `_finish`)."""
        return self._call(role, req, expect)

    def status(self) -> CtlStatusReply:
        return self._call("supervisor", CtlStatus(h=_H), CtlStatusReply)  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        """The machine's status as plain data (the `uvm-machine status --json` shape)."""
        return status_data(self.status())

    # -- processes, files, the wire --------------------------------------------------------

    def spawn(self) -> GreenProcess:
        rep: UvmSpawnReply = self._call("uvm", UvmSpawn(h=_H), UvmSpawnReply)
        return GreenProcess(Process(self, rep.asid), self.processes)

    def open(
        self, name: str, create: bool = False, size: int | None = None, flags: int = O_RDWR
    ) -> GreenFile:
        """open(2) of a file under the machine's disk/ directory, for mmap (Machine.open)."""
        req = UvmOpen(
            h=_H, name=name, create=create, size=-1 if size is None else size, flags=flags
        )
        rep: UvmOpenReply = self._call("uvm", req, UvmOpenReply)
        return GreenFile(File(self, rep.handle, name, rep.size))

    def wire(self) -> GreenWire:
        return GreenWire(self)


def kcall(endpoint: str, req: Request, timeout_s: float = 5.0) -> Reply:
    """One request to a role's KERNEL endpoint (<state>/machine.json), as the operator's
    tools send it: unsigned, as the kernel debugger. => the reply, error or not."""
    ident = Identity("kdebug", os.getpid(), _GreenClock())
    s = _dealer(endpoint)
    try:
        msg = with_header(req, ident.header())
        s.send(ident.frame(msg))
        if not s.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise MachineTimeout(f"{tag_of(req)}: no reply from {endpoint} in {timeout_s} s")
        return decode_reply(s.recv())
    finally:
        s.close()


__all__ = [
    "EventWatch",
    "GreenFile",
    "GreenMachine",
    "GreenProcess",
    "GreenSocket",
    "GreenWire",
    "kcall",
]
