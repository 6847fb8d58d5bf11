"""The async client library: attach to a machine and act as emulated user processes.

    async with Machine.attach("tcp://127.0.0.1:7700") as m:
        p = await m.spawn()
        va = await p.mmap(64 * 4096, prot="rw")
        await p.store(va + 10, b"hello")          # faults resolved transparently
        assert await p.load(va + 10, 5) == b"hello"
        await p.munmap(va, 64 * 4096)
        await p.exit()

Zero-copy sends and the wire:

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
  MachineTimeout  a role did not answer in time (the machine may be gone)
  RequestError    any other error reply (errno + detail)

A session is this attachment; its id is the `incarnation` in every header.
Leaving the `async with` detaches (every process of the session exits); a
session that vanishes is reaped by uvm when its lease (renewed by a
keepalive task) runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
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
    Errno,
    MmuAccessReply,
    MmuLoad,
    MmuStore,
    NetClose,
    NetMark,
    NetMarked,
    NetPacket,
    NetSend,
    NetSendReply,
    NetSocket,
    NetSocketReply,
    Reply,
    Request,
    Status,
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


class MachineTimeout(MachineError):
    pass


class RequestError(MachineError):
    def __init__(self, errno: Errno, detail: str) -> None:
        super().__init__(f"{errno}: {detail}")
        self.errno, self.detail = errno, detail


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
        session: int | None = None,
        own_transport: bool = False,
    ) -> None:
        self.transport = transport
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.session = session if session is not None else random.getrandbits(62) | 1
        self.ident = Identity("client", self.session)
        self.directory: CtlDirectoryReply | None = None
        self.panic: MachinePanic | None = None
        self._own_transport = own_transport
        self._sup: Peer | None = None
        self._peers: dict[str, Peer] = {}
        self._sub: Subscription | None = None
        self._keepalive: asyncio.Task[None] | None = None
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
        session: int | None = None,
        keepalive: bool = True,
    ) -> AsyncIterator[Machine]:
        """Attach (async context manager); detaches on the way out."""
        own = transport is None
        if transport is None:
            from machine.ipc.zmqtransport import ZmqTransport

            transport = ZmqTransport()
        m = cls(transport, endpoint, timeout_s=timeout_s, session=session, own_transport=own)
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
        self._sub = await self.transport.subscribe(d.events, "ctl.panic", self._on_event)
        for role, eps in d.roles.items():
            peer = await Peer(self.ident, eps.user, self.timeout_s).open(self.transport)
            self._peers[role] = peer
        for peer in self._peers.values():
            await self._call(peer, CtlHello(h=_H), CtlHelloReply)
        if keepalive and d.lease_s > 0:
            self._keepalive = asyncio.ensure_future(self._keep_alive(d.lease_s / 4))

    async def close(self) -> None:
        """Detach: every process of this session exits. Safe after a panic."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        if self.panic is None and "uvm" in self._peers:
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
        try:
            rep = await peer.call(req, timeout_s)
        except CallTimeout as e:
            if self.panic is not None:
                raise self.panic from None
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
        if isinstance(rep, expect) and isinstance(rep, MmuAccessReply):
            return rep  # a trap: the caller handles it
        if rep.errno is Errno.ENOMEM:
            raise OutOfMemory(rep.detail)
        raise RequestError(rep.errno or Errno.EINVAL, rep.detail)

    async def call_role(self, role: str, req: Request, expect: type[Any] = Reply) -> Any:
        """Send any request to a role's user endpoint (tools and tests)."""
        return await self._call(self._peers[role], req, expect)

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
        """A receiver on the wire (see Wire)."""
        return Wire(self)

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
        await self.proc.m._call(self.proc.m._peers["net"], NetClose(h=_H, sock=self.id), Reply)


class Wire:
    """A receiver on the machine's wire: every send of every client, in order per socket.

    async with m.wire() as w:        # subscribed (and proven live) on entry
        ...
        pkt = await w.get()
    async for pkt in m.wire(): ...   # also works; subscribes on first use
    """

    def __init__(self, m: Machine) -> None:
        self.m = m
        self._q: asyncio.Queue[Packet] = asyncio.Queue()
        self._partial: dict[tuple[int, int, int], tuple[bytearray, int, bool]] = {}
        self._marks: set[int] = set()
        self._sub: Subscription | None = None
        self.mbufs = 0

    def _on_event(self, raw: bytes) -> None:
        try:
            ev = decode_event(raw)
        except Exception:
            return
        if isinstance(ev, NetMarked):
            self._marks.add(ev.token)
        elif isinstance(ev, NetPacket):
            self.mbufs += 1
            key = (ev.session, ev.sock, ev.seq)
            buf, got, loaned = self._partial.pop(key, (bytearray(ev.total), 0, False))
            buf[ev.off : ev.off + len(ev.payload)] = ev.payload  # placed by offset
            got += len(ev.payload)
            loaned = loaned or ev.loaned
            if got >= ev.total:
                self._q.put_nowait(Packet(ev.session, ev.asid, ev.sock, ev.seq, bytes(buf), loaned))
            else:
                self._partial[key] = (buf, got, loaned)

    async def open(self) -> Wire:
        if self._sub is not None:
            return self
        d = self.m.directory
        assert d is not None
        self._sub = await self.m.transport.subscribe(d.roles["net"].pub, "net.", self._on_event)
        token = random.getrandbits(62)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        while token not in self._marks:  # PUB/SUB joins late: wait until a mark arrives
            if loop.time() > deadline:
                raise MachineTimeout("the wire subscription never became live")
            await self.m.call_role("net", NetMark(h=_H, token=token))
            for _ in range(20):
                if token in self._marks:
                    break
                await asyncio.sleep(0.005)
        return self

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.close()
            self._sub = None

    async def __aenter__(self) -> Wire:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get(self, timeout_s: float = 30.0) -> Packet:
        """The next complete send. => MachinePanic if the machine panicked meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self.m.panic is not None:
                raise self.m.panic
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
