"""The net role's service: net.* requests decoded, the core called, the reply built.

The logic is the core's (machine.net.core.Net and its parts: sockets, sosend, loan
KVA, the mbuf pool, the driver, the wire); every message net sends to uvm or the mmu
is built by machine.net.kernel.BusKernel, which holds the two peers. What is here:
  * the handlers (net.socket, send, close, link, listen, recv, unlisten and the
    operator's tap_listen, tap_recv, tap_unlisten). net.recv with `frames` answers a
    Framed reply (machine.ipc.framed): each payload is its own ZeroMQ frame (a pinned
    DMA's views of RAM, machine.net.dma) and the packets' DMAs are released once the
    transport has sent it; without `frames` (and for taps) a pinned payload is copied
    into the reply (`taken`) and released at once;
  * the connections (machine.rolespec): connect() opens uvm and the mmu (BusKernel's
    peers), subscribes to uvm.proc_exited (fast, may be lost), starts the reconciler,
    which asks uvm.owners every RECONCILE_S (reliable), the lease reporter
    (uvm.sessions_seen every lease_s / 4: the sessions served here, whose leases
    uvm renews; uvm.session_ended events and its replies say which ended: those
    get ESESSION), and the driver; start()
    then publishes net.link_up.
  * the driver's end. The driver stops when a peer it calls panicked (PeerPanic). net
    itself did not panic: it publishes no ctl.panic and still answers ctl.ping, so the
    supervisor reports the role that did (its ctl.panic, its EPANIC to pings). But net is
    no longer "running": its state becomes "halted" (the reason in panic_message, as
    ctl.halt leaves it), net.send answers EPANIC, and the supervisor's ctl.halt then
    makes it "panicked" like every other role. Any other failure of the driver is a
    bug in net: net panics (Service.spawn).
Recovery contract: in-flight mbufs are lost with the role (a dead role is a machine
panic today).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import msgspec

from machine.ipc.framed import Framed
from machine.ipc.peer import PeerPanic, RemoteError
from machine.ipc.service import Service
from machine.ipc.transport import Subscription
from machine.limits import Limits
from machine.net.core import Net
from machine.net.dma import dma_of
from machine.net.kernel import BusKernel
from machine.net.knobs import net_knobs
from machine.net.wire import release
from machine.profile import DEFAULT_PROFILE, Profile
from machine.proto import (
    SESSIONS_BATCH,
    Errno,
    NetClose,
    NetLink,
    NetLinkUp,
    NetListen,
    NetRecv,
    NetRecvReply,
    NetSend,
    NetSendReply,
    NetSocket,
    NetSocketReply,
    NetTapListen,
    NetTapListenReply,
    NetTapRecv,
    NetTapUnlisten,
    NetUnlisten,
    Reply,
    Request,
    UserError,
    UvmProcExited,
    UvmSessionEnded,
    WirePacket,
    decode_event,
)
from machine.ram import Ram

RECONCILE_S = 2.0  # how often net asks uvm which processes and sessions still live
HALTED = "halted"  # the driver stopped because a peer panicked (see the module docstring)


class NetService(Service):
    role: ClassVar[str] = "net"
    user_errors: ClassVar[tuple[type[Exception], ...]] = (RemoteError,)
    serves: ClassVar[tuple[type[Request], ...]] = (
        NetSocket,
        NetSend,
        NetClose,
        NetLink,
        NetListen,
        NetRecv,
        NetUnlisten,
        NetTapListen,
        NetTapRecv,
        NetTapUnlisten,
    )

    def __init__(
        self,
        transport: Any,
        *,
        ram: Ram | None = None,
        profile: str | Profile = DEFAULT_PROFILE,
        limits: Limits | None = None,
        uvm: str = "",
        mmu: str = "",
        uvm_pub: str = "",
        lease_s: float = 10.0,
        **kw: Any,
    ) -> None:
        """uvm, mmu: the roles' kernel endpoints, uvm_pub uvm's events (opened by
        connect(); machine.net.spec names them)."""
        super().__init__(transport, limits=limits, **kw)
        self.ram = ram
        self.uvm_pub = uvm_pub
        self.lease_s = lease_s
        self.kernel = BusKernel(self.peer("uvm", uvm), self.peer("mmu", mmu))
        self.net = Net(
            self.kernel,
            knobs=net_knobs(profile),
            limits=self.limits,
            ram=ram,
            clock=self.clock,
            log=self.trace.append,
            note=self.recorder.note,
            live=self.auth.live,
            kpt=ram.kpt if ram is not None else None,
        )
        self._uvm_sub: Subscription | None = None
        self._end_sub: Subscription | None = None
        self._driver: asyncio.Task[None] | None = None

    # -- connections ------------------------------------------------------------------

    async def connect(self) -> None:
        """Open uvm and the mmu, learn of process exits, start the driver (the link is
        announced once the role serves: start)."""
        await super().connect()
        await self._watch(self.uvm_pub)
        self._start_driver()

    async def start(self, kernel: str | None, user: str | None, pub: str) -> dict[str, str]:
        eps = await super().start(kernel, user, pub)
        if self._driver is not None:
            self._announce()
        return eps

    async def link_up(self) -> None:
        """Start the driver and announce the link on a role that serves already (a unit
        test's service whose core has a fake kernel; connect() and start() do it)."""
        self._start_driver()
        self._announce()

    async def _watch(self, uvm_pub: str) -> None:
        """uvm.proc_exited (fast, may be lost) and the reconciler's uvm.owners (reliable)."""
        self._uvm_sub = await self.subscribe("uvm", uvm_pub, "uvm.proc_exited", self._on_uvm)
        self._end_sub = await self.subscribe("uvm", uvm_pub, "uvm.session_ended", self._on_uvm)
        self.spawn(self._reconciler(), "socket reconciler")
        self.spawn(self._lease_reporter(), "lease reporter")

    def _start_driver(self) -> None:
        if self._driver is None:
            self._driver = self.spawn(self._run_driver(), "driver")

    def _announce(self) -> None:
        link = self.net.driver
        self.publish(
            NetLinkUp(
                h=self.event_header(), bandwidth_bps=link.bandwidth_bps, latency_us=link.latency_us
            )
        )

    async def close(self) -> None:
        for sub in (self._uvm_sub, self._end_sub):
            if sub is not None:
                await sub.close()
        self._uvm_sub = self._end_sub = None
        await super().close()

    def _on_uvm(self, raw: bytes) -> None:
        try:
            ev = decode_event(raw)
        except Exception:
            return
        if isinstance(ev, UvmProcExited):
            self.net.sockets.process_exited(ev.asid, ev.reason)
        elif isinstance(ev, UvmSessionEnded):
            self.auth.forget(ev.session)

    async def _run_driver(self) -> None:
        self.driver_stopped(await self.net.driver.run())

    def driver_stopped(self, e: PeerPanic) -> None:
        """The driver ended because a peer panicked: net is halted (not panicked)."""
        self.trace.append(f"driver stopped: a peer panicked: {e.detail}")
        if self.state == "running":
            self.state = HALTED
            self.panic_message = f"net halted: a peer panicked: {e.detail}"

    async def _reconciler(self) -> None:
        """Every RECONCILE_S, while running: the core's reconciliation with uvm."""
        while True:
            await self.clock.sleep(RECONCILE_S)
            if self.state == "running":
                await self.net.reconcile()

    async def _lease_reporter(self) -> None:
        """Every lease_s / 4: uvm.sessions_seen with the sessions served here since the
        last report (uvm renews their leases); forget those uvm says ended."""
        while True:
            await self.clock.sleep(self.lease_s / 4)
            seen = self.auth.take_seen(SESSIONS_BATCH)
            if not seen or self.state != "running":
                continue
            try:
                ended = await self.kernel.sessions_seen(seen)
            except RemoteError as e:
                self.trace.append(f"uvm.sessions_seen failed ({e.errno}); next time")
                continue
            for sid in ended:
                self.auth.forget(sid)

    # -- sockets ----------------------------------------------------------------------

    async def on_socket(self, msg: NetSocket) -> Reply:
        so = await self.net.socreate(msg.h.incarnation, msg.asid, msg.sndbuf)
        return self.reply(msg, NetSocketReply, sock=so.id)

    def on_close(self, msg: NetClose) -> Reply:
        sockets = self.net.sockets
        sockets.soclose(sockets.lookup(msg.sock, msg.h.incarnation), "close")
        return self.ack(msg)

    async def on_send(self, msg: NetSend) -> Reply:
        if self.state == HALTED:
            raise UserError(Errno.EPANIC, self.panic_message)
        so = self.net.sockets.lookup(msg.sock, msg.h.incarnation)
        res = await self.net.sosend.send(so, msg.asid, msg.va, msg.n, msg.h.incarnation)
        return self.reply(
            msg,
            NetSendReply,
            seq=res.seq,
            loaned_pages=res.loaned_pages,
            copied_bytes=res.copied_bytes,
            messages=res.messages,
        )

    def on_link(self, msg: NetLink) -> Reply:
        self.net.set_link(msg.bandwidth_bps, msg.latency_us, msg.hold, msg.somaxkva, msg.loan_chunk)
        return self.ack(msg)

    # -- the wire: per-session listeners and the operator's taps ------------------------

    async def on_listen(self, msg: NetListen) -> Reply:
        await self.net.listen(msg.h.incarnation)
        return self.ack(msg)

    async def on_recv(self, msg: NetRecv) -> Reply | Framed:
        q = self.net.wire.listener(msg.h.incarnation)
        packets, dropped = await self.net.wire.recv(q, msg.max_packets, msg.wait_ms)
        if not msg.frames:
            return self.reply(msg, NetRecvReply, packets=taken(packets), dropped=dropped)
        # each payload its own frames: a pinned DMA's views of RAM, read by the send itself
        frames: list[bytes | memoryview] = []
        heads = []
        for pkt in packets:
            d = dma_of(pkt)
            bufs: list[bytes] | list[memoryview] = [pkt.payload] if d is None else d.buffers()
            frames += bufs
            heads.append(msgspec.structs.replace(pkt, payload=b"", frames=len(bufs)))
        rep = self.reply(msg, NetRecvReply, packets=heads, dropped=dropped)

        def sent() -> None:
            for pkt in packets:
                release(pkt)

        return Framed(rep, frames, sent)

    def on_unlisten(self, msg: NetUnlisten) -> Reply:
        self.net.wire.unlisten(msg.h.incarnation)
        return self.ack(msg)

    def on_tap_listen(self, msg: NetTapListen) -> Reply:
        return self.reply(msg, NetTapListenReply, tap=self.net.wire.tap_listen())

    async def on_tap_recv(self, msg: NetTapRecv) -> Reply:
        q = self.net.wire.tap(msg.tap)
        packets, dropped = await self.net.wire.recv(q, msg.max_packets, msg.wait_ms)
        return self.reply(msg, NetRecvReply, packets=taken(packets), dropped=dropped)

    def on_tap_unlisten(self, msg: NetTapUnlisten) -> Reply:
        self.net.wire.tap_unlisten(msg.tap)
        return self.ack(msg)

    # -- reporting ----------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return self.net.counters()

    def dump_state(self) -> dict[str, Any]:
        return self.net.dump_state()


def taken(packets: list[WirePacket]) -> list[WirePacket]:
    """Packets for a reply without frames: a pinned DMA's bytes copied out of RAM into
    the packet, then every hold released (a DMA completes when no queue holds it)."""
    out = []
    for pkt in packets:
        d = dma_of(pkt)
        out.append(pkt if d is None else msgspec.structs.replace(pkt, payload=d.tobytes()))
    for pkt in packets:
        release(pkt)
    return out
