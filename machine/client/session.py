"""Session: one attachment to a running machine, and every request it sends.

A session is made by the machine (uvm.attach): a public id, the `incarnation`
in every header, and a secret key with which every request is signed
(machine.ipc.auth); nobody else can act as this session. Closing it detaches
(every process of the session exits); a session that vanishes is reaped by
uvm when its lease runs out, which the keepalive task renews.

States: connecting (anonymous, `session == 0`) -> attached -> panicked
(`panic` set) or stopped (`stopped` set) -> closed. Invariants:
  - once `panic` (`stopped`) is set it never changes, and every pending and
    later call raises that same object (peers fail their pending calls at once);
  - the keepalive task (in `_tasks`, machine.ipc.tasks) and the wire feed's
    poll task are owned by the session: close() cancels and awaits both, so no
    task outlives it; a keepalive that fails other than by a MachineError is
    reported to the loop's exception handler at once, never dropped;
  - _call turns every reply into a value or a MachineError (errors.py); the
    one exception is an mmu access trap (EFAULT in an MmuAccessReply), which
    goes back to the caller, the CPU (process.py).
Layering: errors <- feed <- session <- process, wire <- machine.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec

from machine.client.errors import (
    MachineError,
    MachinePanic,
    MachineStopped,
    MachineTimeout,
    RequestError,
    reply_error,
)
from machine.client.feed import WireFeed
from machine.ipc.peer import CallTimeout, Identity, Peer, PeerPanic, RemoteError
from machine.ipc.tasks import TaskSet
from machine.ipc.transport import Subscription, Transport
from machine.proto import (
    NO_HEADER,
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
    NetListen,
    NetRecv,
    NetRecvReply,
    NetUnlisten,
    Reply,
    Request,
    Status,
    UvmAttach,
    UvmAttachReply,
    UvmDetach,
    decode_event,
)

_H = NO_HEADER


class Session:
    """One attachment (session) to a running machine: its peers, keepalive and calls."""

    def __init__(
        self,
        transport: Transport,
        endpoint: str,
        *,
        timeout_s: float = 30.0,
        own_transport: bool = False,
    ) -> None:
        self.transport = transport
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.ident = Identity("client", 0)  # anonymous until uvm.attach makes the session
        self.directory: CtlDirectoryReply | None = None
        self.panic: MachinePanic | None = None
        self.stopped: MachineStopped | None = None
        self._own_transport = own_transport
        self._sup: Peer | None = None
        self._peers: dict[str, Peer] = {}
        self._sub: Subscription | None = None
        self._tasks = TaskSet()  # the keepalive: a failure is reported at once (loop handler)
        self._feed: WireFeed | None = None  # this session's wire (shared by its Wires)

    # -- attach / detach -----------------------------------------------------

    async def connect(self, keepalive: bool = True) -> None:
        self._sup = await Peer(self.ident, self.endpoint, self.timeout_s).open(self.transport)
        await self._call(self._sup, CtlHello(h=_H), CtlHelloReply)
        d = await self._call(self._sup, CtlDirectory(h=_H), CtlDirectoryReply)
        self.directory = d
        self._sub = await self.transport.subscribe(d.events, "ctl.", self._on_event)
        for role, eps in d.roles.items():
            peer = await Peer(self.ident, eps.user, self.timeout_s).open(self.transport)
            self._peers[role] = peer
        for peer in self._peers.values():
            await self._call(peer, CtlHello(h=_H), CtlHelloReply)
        a = await self._call(self._peers["uvm"], UvmAttach(h=_H), UvmAttachReply)
        self.ident.become(a.session, a.key)  # from here on every request is signed
        if keepalive and d.lease_s > 0:
            self._tasks.spawn(self._keep_alive(d.lease_s / 4), "client keepalive")

    async def close(self) -> None:
        """Detach: every process of this session exits. Safe after a panic."""
        if self._feed is not None:
            await self._feed.stop()
        await self._tasks.close()
        if self.panic is None and self.stopped is None and self.session and "uvm" in self._peers:
            with contextlib.suppress(MachineError):
                await self._call(self._peers["uvm"], UvmDetach(h=_H), Reply, timeout_s=5.0)
        for peer in (*self._peers.values(), *([self._sup] if self._sup else [])):
            await peer.close()
        self._peers.clear()
        if self._sub is not None:
            await self._sub.close()
        if self._own_transport:
            await self.transport.close()

    async def _keep_alive(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            with contextlib.suppress(MachineError):
                await self._call(self._peers["uvm"], CtlPing(h=_H), Reply, timeout_s=every_s)

    def _on_event(self, raw: bytes) -> None:
        try:
            ev = decode_event(raw)
        except Exception:
            return
        known = self.panic
        if isinstance(ev, CtlPanic) and (
            known is None or not known.role or (ev.dump and not known.dump)
        ):
            # The event names the role (an EPANIC reply may have come first), and the
            # supervisor's second one the crash dump's path too.
            self._panicked(MachinePanic(ev.message, ev.role, ev.dump))
        elif isinstance(ev, CtlStopping) and self.panic is None and self.stopped is None:
            self._stopping(MachineStopped(ev.reason))

    def _stopping(self, exc: MachineStopped) -> None:
        self.stopped = exc
        for peer in (*self._peers.values(), *([self._sup] if self._sup else [])):
            peer.fail_all(exc)

    def _panicked(self, exc: MachinePanic) -> None:
        self.panic = exc
        for peer in (*self._peers.values(), *([self._sup] if self._sup else [])):
            peer.fail_all(exc)

    # -- calls -----------------------------------------------------------------

    async def _call(
        self, peer: Peer, req: Request, expect: type[Any], timeout_s: float | None = None
    ) -> Any:
        """One request; error replies become the library's exceptions."""
        if self.panic is not None:
            raise self.panic
        if self.stopped is not None:
            raise self.stopped
        try:
            rep = await peer.call(req, timeout_s)
        except CallTimeout as e:
            if self.panic is not None:
                raise self.panic from None
            if self.stopped is not None:
                raise self.stopped from None
            raise MachineTimeout(e.detail) from None
        except PeerPanic as e:
            self._panicked(MachinePanic(e.detail))
            raise self.panic from None  # type: ignore[misc]
        except RemoteError as e:
            raise RequestError(e.errno, e.detail) from None
        if rep.status is Status.OK:
            if not isinstance(rep, expect):
                raise RequestError(Errno.EBADMSG, f"unexpected reply {type(rep).__name__}")
            return rep
        if rep.errno is Errno.EPANIC:
            self._panicked(MachinePanic(rep.detail))
            raise self.panic  # type: ignore[misc]
        if rep.errno is Errno.ESHUTDOWN:
            if self.stopped is None:
                self._stopping(MachineStopped(rep.detail))
            raise self.stopped  # type: ignore[misc]
        if isinstance(rep, expect) and isinstance(rep, MmuAccessReply):
            return rep  # a trap: the caller handles it
        raise reply_error(rep)

    async def call_role(self, role: str, req: Request, expect: type[Any] = Reply) -> Any:
        """Send any request to a role's user endpoint (processes, files, tools and tests)."""
        return await self._call(self._peers[role], req, expect)

    @property
    def session(self) -> int:
        """This session's public id (0 before attach); it authorises nothing by itself."""
        return self.ident.incarnation

    def session_feed(self) -> WireFeed:
        """This session's wire queue in net, made on first use and shared by its Wires."""
        if self._feed is None:
            net = self._peers["net"]

            async def listen() -> None:
                await self._call(net, NetListen(h=_H), Reply)

            async def recv(max_packets: int, wait_ms: int) -> NetRecvReply:
                req = NetRecv(
                    h=_H,
                    max_packets=max_packets,
                    wait_ms=wait_ms,
                    frames=self.transport.multipart,  # payloads as frames, read in place
                )
                return await self._call(net, req, NetRecvReply)  # type: ignore[no-any-return]

            async def unlisten() -> None:
                await self._call(net, NetUnlisten(h=_H), Reply)

            self._feed = WireFeed(listen, recv, unlisten)
        return self._feed

    async def status(self) -> CtlStatusReply:
        assert self._sup is not None
        return await self._call(self._sup, CtlStatus(h=_H), CtlStatusReply)  # type: ignore[no-any-return]

    async def stats(self) -> dict[str, Any]:
        """The machine's status as plain data (the `uvm-machine status --json` shape)."""
        return status_data(await self.status())


def status_data(rep: CtlStatusReply) -> dict[str, Any]:
    """A status reply as plain data: roles, frames, profile, state, panic (no header)."""
    out: dict[str, Any] = msgspec.to_builtins(rep)
    for k in ("t", "h", "status", "errno", "detail"):
        out.pop(k, None)
    return out
