"""The async client library: attach to a machine and act as emulated user processes.

    async with Machine.attach("tcp://127.0.0.1:7700") as m:
        p = await m.spawn()
        va = await p.mmap(64 * 4096, prot="rw")
        await p.store(va + 10, b"hello")          # faults resolved transparently
        assert await p.load(va + 10, 5) == b"hello"
        await p.munmap(va, 64 * 4096)
        await p.exit()

Zero-copy sends and the wire (this session's own packets; the operator's tap,
Wire.tap, sees every session's):

        async with m.wire() as w:
            s = await p.socket()
            r = await p.send(s, va, 8192)     # loaned if >= LOAN_THRESHOLD
            pkt = await w.get()               # pkt.payload: memory as it was at send

A Process's load/store is a CPU access: the mmu performs it, or answers a
trap; the library then calls uvm.fault and retries, as a CPU would after the
kernel's fault handler returned. An unresolvable fault raises Segv.

Errors a caller can see (all MachineError):
  Segv            the access had no valid mapping (SIGSEGV); the machine is fine
  OutOfMemory     no frame could be had for the fault
  MachinePanic    the machine panicked; every pending and later call raises it
  MachineStopped  the machine stopped cleanly (or is stopping); every pending
                  and later call raises it, within a second of the stop
  MachineTimeout  a role did not answer in time (the machine may be gone)
  RequestError    any other error reply (errno + detail)

A session is this attachment, made by the machine (uvm.attach): a public id,
the `incarnation` in every header, and a secret key with which every request
is signed (machine.ipc.auth); nobody else can act as this session. Leaving
the `async with` detaches (every process of the session exits); a session
that vanishes is reaped by uvm when its lease (renewed by a keepalive task)
runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from machine.ipc.peer import CallTimeout, Identity, Peer, PeerPanic, RemoteError
from machine.ipc.transport import Subscription, Transport
from machine.params import MAX_ACCESS_BYTES, PAGE_SHIFT, PAGE_SIZE
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
    ErrnoError,
    MmuAccessReply,
    MmuLoad,
    MmuStore,
    NetClose,
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
    Status,
    UvmAttach,
    UvmAttachReply,
    UvmClose,
    UvmDetach,
    UvmExit,
    UvmFault,
    UvmFork,
    UvmForkReply,
    UvmMmap,
    UvmMmapReply,
    UvmMprotect,
    UvmMsync,
    UvmMunmap,
    UvmOpen,
    UvmOpenReply,
    UvmSpawn,
    UvmSpawnReply,
    UvmUnwire,
    UvmWire,
    WirePacket,
    decode_event,
)
from machine.proto.types import Prot

_H = NO_HEADER


class MachineError(Exception):
    """Base of every error the client library raises."""


class Segv(MachineError):
    """SIGSEGV: the access to `va` had no valid mapping; `reason` says why."""

    def __init__(self, va: int, access: Prot, reason: str) -> None:
        super().__init__(f"SIGSEGV at {va:#x} ({access.letters()}): {reason}")
        self.va, self.access, self.reason = va, access, reason


class MachinePanic(MachineError):
    """The machine panicked. `message` is the panic string; `role` who; `dump` the crash dump."""

    def __init__(self, message: str, role: str = "", dump: str = "") -> None:
        super().__init__(f"machine panic: {role + ': ' if role else ''}{message}")
        self.message, self.role, self.dump = message, role, dump


class MachineStopped(MachineError):
    """The machine stopped (cleanly): `reason` as the supervisor gave it."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"machine stopped: {reason}")
        self.reason = reason


class MachineTimeout(MachineError):
    pass


class RequestError(MachineError, ErrnoError):
    """An error reply to a request: `errno` and `detail` as the machine sent them."""


class OutOfMemory(RequestError):
    """ENOMEM: no frame (or swap, or address space, or the range is not mapped for mlock)."""

    def __init__(self, detail: str) -> None:
        super().__init__(Errno.ENOMEM, detail)


class Machine:
    """One attachment (session) to a running machine."""

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
        self._keepalive: asyncio.Task[None] | None = None
        self._feed: WireFeed | None = None  # this session's wire (shared by its Wires)
        self.processes: dict[int, Process] = {}

    # -- attach / detach -----------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def attach(
        cls,
        endpoint: str,
        *,
        transport: Transport | None = None,
        timeout_s: float = 30.0,
        keepalive: bool = True,
    ) -> AsyncIterator[Machine]:
        """Attach (async context manager); detaches on the way out."""
        own = transport is None
        if transport is None:
            from machine.ipc.zmqtransport import ZmqTransport

            transport = ZmqTransport()
        m = cls(transport, endpoint, timeout_s=timeout_s, own_transport=own)
        try:
            await m.connect(keepalive=keepalive)
            yield m
        finally:
            await m.close()

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
            self._keepalive = asyncio.ensure_future(self._keep_alive(d.lease_s / 4))

    async def close(self) -> None:
        """Detach: every process of this session exits. Safe after a panic."""
        if self._feed is not None:
            await self._feed.stop()
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
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
        if isinstance(ev, CtlPanic) and (self.panic is None or not self.panic.role):
            # The event names the role and the dump; an EPANIC reply may have come first.
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
        if rep.errno is Errno.ENOMEM:
            raise OutOfMemory(rep.detail)
        raise RequestError(rep.errno or Errno.EINVAL, rep.detail)

    async def call_role(self, role: str, req: Request, expect: type[Any] = Reply) -> Any:
        """Send any request to a role's user endpoint (tools and tests)."""
        return await self._call(self._peers[role], req, expect)

    @property
    def session(self) -> int:
        """This session's public id (0 before attach); it authorises nothing by itself."""
        return self.ident.incarnation

    # -- the API ---------------------------------------------------------------------

    async def spawn(self) -> Process:
        """Create an emulated process with an empty address space."""
        rep = await self._call(self._peers["uvm"], UvmSpawn(h=_H), UvmSpawnReply)
        p = Process(self, rep.asid)
        self.processes[rep.asid] = p
        return p

    async def open(self, name: str, create: bool = False, size: int | None = None) -> File:
        """Open (or create) a file under the machine's disk/ directory, for mmap."""
        rep = await self._call(
            self._peers["uvm"],
            UvmOpen(h=_H, name=name, create=create, size=-1 if size is None else size),
            UvmOpenReply,
        )
        return File(self, rep.handle, name, rep.size)

    def wire(self) -> Wire:
        """A receiver of this session's packets on the wire (see Wire)."""
        return Wire(self)

    def _session_feed(self) -> WireFeed:
        if self._feed is None:
            net = self._peers["net"]

            async def listen() -> None:
                await self._call(net, NetListen(h=_H), Reply)

            async def recv(max_packets: int, wait_ms: int) -> NetRecvReply:
                req = NetRecv(h=_H, max_packets=max_packets, wait_ms=wait_ms)
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
        import msgspec

        out: dict[str, Any] = msgspec.to_builtins(await self.status())
        for k in ("t", "h", "status", "errno", "detail"):
            out.pop(k, None)
        return out


@dataclass(frozen=True)
class SendResult:
    """What a send queued: its sequence number on the socket, and how (loan or copy)."""

    sock: int
    seq: int
    n: int
    loaned_pages: int
    copied_bytes: int
    messages: int  # kernel messages the send path used


@dataclass(frozen=True)
class Packet:
    """One send as the wire carried it (its mbufs reassembled)."""

    session: int
    asid: int
    sock: int
    seq: int
    payload: bytes
    loaned: bool  # at least one mbuf was loaned pages (zero copy)


class Socket:
    def __init__(self, proc: Process, sock: int) -> None:
        self.proc, self.id = proc, sock

    async def close(self) -> None:
        """close(2): queued data is still sent. => RequestError EBADF if already closed
        (the machine also closes it when its process exits or the session detaches)."""
        await self.proc.m._call(self.proc.m._peers["net"], NetClose(h=_H, sock=self.id), Reply)


KCall = Callable[[str, Request], Awaitable[Reply]]

#: One long poll: at most this many mbufs, waiting at most this long for the first.
RECV_PACKETS = 256
RECV_WAIT_MS = 1000


class WireFeed:
    """One receiver queue in net, long-polled by a background task that hands every
    mbuf to each Wire registered: a session's queue (net.listen / net.recv, shared by
    all the session's Wires) or an operator's tap (kernel endpoint).

    Invariant: the queue is listened to (in net) while at least one Wire is open;
    `error` is what ended the poll (a panic, a stop, a timeout), raised by Wire.get.
    """

    def __init__(
        self,
        listen: Callable[[], Awaitable[None]],
        recv: Callable[[int, int], Awaitable[NetRecvReply]],
        unlisten: Callable[[], Awaitable[None]],
    ) -> None:
        self._listen, self._recv, self._unlisten = listen, recv, unlisten
        self.wires: set[Wire] = set()
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def add(self, w: Wire) -> None:
        async with self._lock:
            if self._task is None:
                await self._listen()  # from its reply on, every mbuf is queued for us
                self.error = None
                self._task = asyncio.ensure_future(self._poll())
            self.wires.add(w)

    async def remove(self, w: Wire) -> None:
        async with self._lock:
            self.wires.discard(w)
            if not self.wires:
                await self._halt(unlisten=True)

    async def stop(self) -> None:
        """The session is going: stop polling (net ends its listener at detach)."""
        self.wires.clear()
        await self._halt(unlisten=False)

    async def _halt(self, unlisten: bool) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if unlisten and self.error is None:
            with contextlib.suppress(MachineError):
                await self._unlisten()

    async def _poll(self) -> None:
        try:
            while True:
                rep = await self._recv(RECV_PACKETS, RECV_WAIT_MS)
                for w in list(self.wires):
                    w.dropped += rep.dropped
                    for pkt in rep.packets:
                        w._on_packet(pkt)
        except Exception as e:  # a panic, a stop, a timeout: Wire.get raises it
            self.error = e


class Wire:
    """A receiver on the machine's wire: every send of this session's sockets, in
    order per socket (another session's packets never reach it); Wire.tap is the
    operator's receiver of every session's packets.

    async with m.wire() as w:        # listening on entry: every later send arrives
        ...
        pkt = await w.get()
    async for pkt in m.wire(): ...   # also works; listens on first use

    `dropped`: mbufs net dropped because this receiver's queue held more than the
    wire_bytes limit, or was the largest when every queue together held wire_total
    (the oldest go first); `lost`: sends that therefore never
    arrived whole (discarded once a later send of their socket arrives).
    """

    def __init__(self, m: Machine | None, feed: WireFeed | None = None) -> None:
        self.m = m
        self._feed = feed
        self._q: asyncio.Queue[Packet] = asyncio.Queue()
        # (session, sock) -> (seq, bytes so far, bytes got, loaned): mbufs of one socket
        # arrive in send order, so at most one send per socket is partial.
        self._partial: dict[tuple[int, int], tuple[int, bytearray, int, bool]] = {}
        self._open = False
        self.mbufs = 0
        self.dropped = 0
        self.lost = 0

    @classmethod
    def tap(cls, kcall: KCall, m: Machine | None = None) -> Wire:
        """The operator's tap: every packet of every session, through net's kernel
        endpoint (`kcall(role, request) -> reply`, as SimMachine.kcall). `m`, if
        given, is the client whose panic and stop end get()."""
        tap = 0

        async def call(req: Request, expect: type[Reply]) -> Reply:
            rep = await kcall("net", req)
            if rep.status is not Status.OK or not isinstance(rep, expect):
                if rep.errno is Errno.EPANIC:
                    raise MachinePanic(rep.detail)
                raise RequestError(rep.errno or Errno.EINVAL, rep.detail)
            return rep

        async def listen() -> None:
            nonlocal tap
            rep = await call(NetTapListen(h=_H), NetTapListenReply)
            assert isinstance(rep, NetTapListenReply)
            tap = rep.tap

        async def recv(max_packets: int, wait_ms: int) -> NetRecvReply:
            req = NetTapRecv(h=_H, tap=tap, max_packets=max_packets, wait_ms=wait_ms)
            rep = await call(req, NetRecvReply)
            assert isinstance(rep, NetRecvReply)
            return rep

        async def unlisten() -> None:
            await call(NetTapUnlisten(h=_H, tap=tap), Reply)

        return cls(m, WireFeed(listen, recv, unlisten))

    def _on_packet(self, pkt: WirePacket) -> None:
        self.mbufs += 1
        key = (pkt.session, pkt.sock)
        part = self._partial.pop(key, None)
        if part is not None and part[0] != pkt.seq:
            self.lost += 1  # a later send: the rest of that one was dropped
            part = None
        seq, buf, got, loaned = part or (pkt.seq, bytearray(pkt.total), 0, False)
        buf[pkt.off : pkt.off + len(pkt.payload)] = pkt.payload  # placed by offset
        got += len(pkt.payload)
        loaned = loaned or pkt.loaned
        if got >= pkt.total:
            self._q.put_nowait(Packet(pkt.session, pkt.asid, pkt.sock, seq, bytes(buf), loaned))
        else:
            self._partial[key] = (seq, buf, got, loaned)

    def _feed_of(self) -> WireFeed:
        if self._feed is None:
            assert self.m is not None
            self._feed = self.m._session_feed()
        return self._feed

    async def open(self) -> Wire:
        if not self._open:
            await self._feed_of().add(self)
            self._open = True
        return self

    async def close(self) -> None:
        if self._open:
            self._open = False
            await self._feed_of().remove(self)

    async def __aenter__(self) -> Wire:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get(self, timeout_s: float = 30.0) -> Packet:
        """The next complete send. => MachinePanic (MachineStopped) if the machine
        panicked (stopped) meanwhile; MachineTimeout after timeout_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if not self._q.empty():
                return self._q.get_nowait()
            if self.m is not None and self.m.panic is not None:
                raise self.m.panic
            if self.m is not None and self.m.stopped is not None:
                raise self.m.stopped
            if self._feed is not None and self._feed.error is not None:
                raise self._feed.error
            try:
                return await asyncio.wait_for(self._q.get(), 0.05)
            except TimeoutError:
                if loop.time() > deadline:
                    raise MachineTimeout(f"no packet on the wire within {timeout_s} s") from None

    def __aiter__(self) -> Wire:
        return self

    async def __anext__(self) -> Packet:
        await self.open()
        return await self.get()


class File:
    """An open file of the machine's disk/ (a vnode): map it with Process.mmap(file=...)."""

    def __init__(self, machine: Machine, handle: int, name: str, size: int) -> None:
        self.m, self.handle, self.name, self.size = machine, handle, name, size

    async def close(self) -> None:
        await self.m._call(self.m._peers["uvm"], UvmClose(h=_H, handle=self.handle), Reply)


class Process:
    """An emulated user process: its address space and a CPU to access it."""

    #: Retries of one access before giving up (a page may be revoked between
    #: the fault's resolution and the retry, e.g. by the page daemon).
    MAX_TRAPS_PER_PAGE = 8

    def __init__(self, machine: Machine, asid: int) -> None:
        self.m = machine
        self.asid = asid
        self.exited = False
        self.faults = 0

    @property
    def pid(self) -> int:
        return self.asid

    async def mmap(
        self,
        length: int,
        prot: str | int = "rw",
        *,
        va: int = 0,
        fixed: bool = False,
        file: File | None = None,
        offset: int = 0,
        shared: bool = False,
    ) -> int:
        """Map memory. => start VA.

        Anonymous (file None) or a file at `offset`; private (copy-on-write:
        stores stay in this process and its forks' copies, the file never
        changes) or shared (stores are seen by every process mapping it and
        reach the file on msync, munmap, exit and shutdown).
        """
        rep = await self.m._call(
            self.m._peers["uvm"],
            UvmMmap(
                h=_H,
                asid=self.asid,
                length=length,
                prot=int(Prot.parse(prot)),
                va=va,
                fixed=fixed,
                handle=file.handle if file is not None else 0,
                offset=offset,
                shared=shared,
            ),
            UvmMmapReply,
        )
        return int(rep.va)

    async def _range_call(self, cls: Any, va: int, length: int, **kw: Any) -> Any:
        return await self.m._call(
            self.m._peers["uvm"], cls(h=_H, asid=self.asid, va=va, length=length, **kw), Reply
        )

    async def mprotect(self, va: int, length: int, prot: str | int) -> None:
        await self._range_call(UvmMprotect, va, length, prot=int(Prot.parse(prot)))

    async def mlock(self, va: int, length: int) -> None:
        """Wire the range: every page faulted in now (COW copied now), never paged out."""
        await self._range_call(UvmWire, va, length)

    async def munlock(self, va: int, length: int) -> None:
        await self._range_call(UvmUnwire, va, length)

    async def msync(self, va: int, length: int) -> int:
        """Write dirty pages of shared file mappings in the range to their file. => pages."""
        rep = await self._range_call(UvmMsync, va, length)
        return int(rep.pages)

    async def fork(self) -> Process:
        """A child process with a copy-on-write copy of this one's private memory."""
        rep = await self.m._call(self.m._peers["uvm"], UvmFork(h=_H, asid=self.asid), UvmForkReply)
        child = Process(self.m, rep.asid)
        self.m.processes[rep.asid] = child
        return child

    async def munmap(self, va: int, length: int) -> None:
        await self.m._call(
            self.m._peers["uvm"], UvmMunmap(h=_H, asid=self.asid, va=va, length=length), Reply
        )

    async def exit(self) -> None:
        await self.m._call(self.m._peers["uvm"], UvmExit(h=_H, asid=self.asid), Reply)
        self.exited = True
        self.m.processes.pop(self.asid, None)

    async def _trap(self, rep: MmuAccessReply) -> None:
        access = Prot(rep.fault_access)
        self.faults += 1
        try:
            await self.m._call(
                self.m._peers["uvm"],
                UvmFault(h=_H, asid=self.asid, va=rep.fault_va, access=int(access)),
                Reply,
            )
        except RequestError as e:
            if e.errno is Errno.EFAULT:
                raise Segv(rep.fault_va, access, e.detail) from None
            raise

    async def _access(self, req_for: Any, va: int, n: int) -> MmuAccessReply:
        pages = ((va + n - 1) >> PAGE_SHIFT) - (va >> PAGE_SHIFT) + 1
        for _ in range(self.MAX_TRAPS_PER_PAGE * pages + 4):
            rep: MmuAccessReply = await self.m._call(
                self.m._peers["mmu"], req_for(), MmuAccessReply
            )
            if rep.status is Status.OK:
                return rep
            if rep.errno is not Errno.EFAULT:
                raise RequestError(rep.errno or Errno.EINVAL, rep.detail)
            await self._trap(rep)
        raise MachineError(f"access at {va:#x}: faults keep recurring ({self.faults} so far)")

    async def store(self, va: int, data: bytes) -> None:
        """A CPU store; faults are resolved transparently. => Segv if unmapped."""
        for off in range(0, len(data), MAX_ACCESS_BYTES):
            chunk = bytes(data[off : off + MAX_ACCESS_BYTES])
            a = va + off
            await self._access(
                lambda c=chunk, a=a: MmuStore(h=_H, asid=self.asid, va=a, data=c), a, len(chunk)
            )

    async def load(self, va: int, n: int) -> bytes:
        """A CPU load of n bytes; faults are resolved transparently. => Segv if unmapped."""
        out = bytearray()
        for off in range(0, n, MAX_ACCESS_BYTES):
            take = min(MAX_ACCESS_BYTES, n - off)
            a = va + off
            rep = await self._access(
                lambda a=a, t=take: MmuLoad(h=_H, asid=self.asid, va=a, n=t), a, take
            )
            out += rep.data
        return bytes(out)

    async def socket(self, sndbuf: int = 1 << 20) -> Socket:
        """socket(2) for this process; sends wait while `sndbuf` bytes are queued."""
        rep = await self.m._call(
            self.m._peers["net"], NetSocket(h=_H, asid=self.asid, sndbuf=sndbuf), NetSocketReply
        )
        return Socket(self, rep.sock)

    async def send(self, sock: Socket, va: int, n: int) -> SendResult:
        """Send n bytes from va (write(2) on a socket). Returns once the data is queued:
        the receiver gets what memory held now, whatever this process does next.
        => Segv-like RequestError EFAULT for a bad buffer."""
        rep = await self.m._call(
            self.m._peers["net"],
            NetSend(h=_H, asid=self.asid, sock=sock.id, va=va, n=n),
            NetSendReply,
        )
        return SendResult(sock.id, rep.seq, n, rep.loaned_pages, rep.copied_bytes, rep.messages)

    async def touch(self, va: int, npages: int) -> None:
        """Write one byte in each of npages pages (first-touch faults)."""
        for i in range(npages):
            await self.store(va + i * PAGE_SIZE, b"\x01")
