"""The net role: sockets, the send path (sosend with page loaning), the mbuf driver, the wire.

Send path (uvm-semantics.md section 10, NetBSD sosend / sosend_loan):
  * net.send(asid, sock, va, n) is cut into chunks of at most SOCK_LOAN_CHUNK
    (64 KiB), each waiting for send-buffer space (sbwait).
  * Loan path, when the profile's LOAN_THRESHOLD >= 0, the bytes left are at
    least the threshold and the buffer has that much space: reserve loan KVA
    (waits while socurkva + len > somaxkva, sokvareserve), uvm.loan (one
    message per chunk: the pages, write-protected, counted as loaned), one
    pmap.kenter of every page read-only, an mbuf with external storage at
    that KVA. A refused loan (modern: a wired page) frees the KVA and the
    chunk is copied instead.
  * Copy path otherwise: mmu.copyin of the chunk's bytes (a fault is resolved
    through uvm.kfault on the process's behalf; EFAULT ends the send).
  * Up to PIPELINE chunks of a send are set up concurrently (their round trips
    overlap) and queued in order; the send returns once every chunk is queued
    (write(2) semantics).
Driver: one task takes mbufs in order and, once the link is up (`hold`
stops it), starts each loaned mbuf's DMA up to RING mbufs ahead (a NIC's
descriptor ring): its KVA is translated through the mmu (pmap.kextract, one
request per mbuf) and the bytes are read straight from RAM; a missing
translation is a kernel page fault sent to uvm (uvm.kfault) with the mmu's
evidence, which uvm resolves or panics on. A second task puts the mbufs on
the wire in order at the link's speed (bandwidth, latency).
The mbuf is then freed off the transmit path (sopendfree): pmap.kremove,
uvm.unloan, KVA released, waiters woken.

The wire is per session: an mbuf on the wire is queued for its session's
listener (net.listen / net.recv, a long poll) and for every operator tap
(net.tap_listen / net.tap_recv, kernel endpoint); nothing carrying a payload
is published. A queue holds at most limits.wire_bytes (payload plus
WIRE_OVERHEAD per mbuf): beyond it its oldest mbufs are dropped. Every queue
together, listeners and taps, holds at most limits.wire_total (`wire_queued`):
a packet that would pass it drops the oldest mbufs of the LARGEST queue (the
receiver that hoards pays, not those that read), whichever queue that is.
Drops are counted (the queue's `dropped`, net's `wiredrops`), never
back-pressure on the driver. A session's listener ends at net.unlisten or when
the session ends; its queue is then freed (the bytes go back to the allocator,
which may keep the heap's pages for reuse rather than return them to the host).

Sockets close (soclose, as NetBSD's exit closes every descriptor) on
net.close, when their process exits or is reaped and when their session
detaches: queued mbufs are still sent and their loans still returned, a send
waiting on the socket fails with EBADF, and the socket's record is freed once
its last mbuf is (its session's count, `sockets`, then goes down). net learns
of exits from uvm.proc_exited (fast, may be lost) and, reliably, from
uvm.owners every RECONCILE_S (the asids of open sockets, the sessions of
listeners). net.socket names a live process of the calling session (asked of
uvm; else ESRCH); a session holds at most limits.sockets socket records
(EMFILE).

Invariants:
  * mbufs of one socket reach the wire in send order (one queue, one driver).
  * sb_cc (bytes queued, not yet on the wire) <= sndbuf; socurkva <= somaxkva.
  * mbuf_bytes (copied data held, every session) <= limits.mbufs, but for one
    chunk let into an empty pool; it is 0 when nothing is queued.
  * every loaned mbuf is eventually kremoved and unloaned exactly once.
  * a listener's queue holds only its session's mbufs; bytes queued <= wire_bytes.
  * wire_queued == the sum of every listener's and tap's bytes <= wire_total, after
    every enqueue (a tap shares its packets' payloads, so memory is at most that).
  * a socket's record lives until it is closed, sb_cc is 0, its loaned mbufs
    are freed and no send holds it; then it is freed exactly once.
Recovery contract: in-flight mbufs are lost with the role (a dead role is a
machine panic today).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from dataclasses import dataclass, field
from typing import Any, ClassVar

from machine.ipc.peer import PeerPanic, RemoteError, raise_for
from machine.ipc.service import Service
from machine.ipc.transport import Subscription
from machine.limits import Limits
from machine.params import KERNEL_MIN, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, round_page, trunc_page
from machine.profile import DEFAULT_PROFILE, load_profile
from machine.proto import (
    NO_HEADER,
    CtlAck,
    Errno,
    MmuAccessReply,
    MmuCopyin,
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
    PmapCountReply,
    PmapKenter,
    PmapKextract,
    PmapKextractReply,
    PmapKremove,
    Reply,
    Request,
    Status,
    UserError,
    UvmKfault,
    UvmLoan,
    UvmLoanReply,
    UvmOwners,
    UvmOwnersReply,
    UvmProcExited,
    UvmUnloan,
    WirePacket,
    decode_event,
)
from machine.proto.types import Prot
from machine.ram import Ram

DEFAULT_BANDWIDTH_BPS = 0  # unthrottled
DEFAULT_LATENCY_US = 0
SOCK_LOAN_CHUNK = 64 << 10  # SOCK_LOAN_CHUNK
SOMAXKVA = 16 << 20  # SOMAXKVA
KVA_SLOT_PAGES = 2048  # VA per mbuf slot (8 MiB): any chunk, page aligned or not, fits
KVA_BASE = KERNEL_MIN + (1 << 40)  # the loan KVA arena
PIPELINE = 8  # chunks of one send set up concurrently (their loans' round trips overlap)
RING = 8  # the driver's descriptor ring: mbufs whose DMA may run ahead of the wire
WIRE_OVERHEAD = 256  # bytes a queued mbuf costs beyond its payload (measured: ~140-330)
RECV_MAX_BYTES = 1 << 20  # payload in one net.recv reply (at least one mbuf)
MAX_TAPS = 16  # operator taps at once
RECONCILE_S = 2.0  # how often net asks uvm which processes and sessions still live
OWNERS_BATCH = 4096  # asids or sessions per uvm.owners request


@dataclass(eq=False)
class Socket:
    id: int
    session: int
    asid: int
    sndbuf: int
    cc: int = 0  # bytes queued and not yet on the wire (sb_cc)
    next_seq: int = 1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # sblock: one send at a time
    closed: bool = False  # no descriptor any more (soclose); the record may still drain
    loans: int = 0  # loaned mbufs not yet freed by sopendfree
    sends: int = 0  # net.send requests holding (or waiting for) the socket


@dataclass(eq=False)
class WireQueue:
    """One receiver's queue of mbufs from the wire: a session's listener or a tap."""

    packets: collections.deque[WirePacket] = field(default_factory=collections.deque)
    nbytes: int = 0  # payload + WIRE_OVERHEAD of each queued mbuf
    dropped: int = 0  # dropped since the last recv
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # set while not empty
    closed: bool = False


def _cost(pkt: WirePacket) -> int:
    """What a queued mbuf counts against wire_bytes and wire_total."""
    return len(pkt.payload) + WIRE_OVERHEAD


@dataclass(frozen=True)
class Chunk:
    """One chunk of a send being set up: its bytes at va in the sender's memory."""

    so: Socket
    seq: int
    off: int  # offset in the send
    total: int  # bytes of the whole send
    va: int
    length: int
    owner: int  # the client session that owns the process


@dataclass(eq=False)
class Mbuf:
    sock: Socket
    seq: int
    off: int  # offset of this mbuf's bytes in its send
    total: int  # bytes of the whole send
    length: int
    data: bytes = b""  # copy path: the bytes themselves
    kva: int = 0  # loan path: external storage at kva + pgoff
    pgoff: int = 0
    pfns: list[int] = field(default_factory=list)

    @property
    def loaned(self) -> bool:
        return bool(self.pfns)


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
        profile: str = DEFAULT_PROFILE,
        limits: Limits | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(transport, limits=limits, **kw)
        self.ram = ram
        knobs = load_profile(profile).knobs
        self.loan_thresh = int(knobs["LOAN_THRESHOLD"])  # sock_loan_thresh; -1: no loans
        self.bandwidth_bps = DEFAULT_BANDWIDTH_BPS
        self.latency_us = DEFAULT_LATENCY_US
        self.somaxkva = SOMAXKVA
        self.loan_chunk = SOCK_LOAN_CHUNK
        self.socurkva = 0
        self.mbuf_bytes = 0  # copied data held in mbufs, every session (<= limits.mbufs)
        self.sockets: dict[int, Socket] = {}  # every socket record, open or draining
        self._sock_ids = itertools.count(1)
        self._open_by_asid: dict[int, set[Socket]] = {}  # open sockets of each process
        self._records: collections.Counter[int] = collections.Counter()  # session -> records
        self.listeners: dict[int, WireQueue] = {}  # session -> its queue
        self.taps: dict[int, WireQueue] = {}
        self.wire_queued = 0  # bytes queued over every listener and tap (<= limits.wire_total)
        self._tap_ids = itertools.count(1)
        self._uvm_sub: Subscription | None = None
        self._kva_slots: list[int] = []
        self._kva_next = 0
        self._txq: asyncio.Queue[Mbuf] = asyncio.Queue()
        self._pendfree: asyncio.Queue[Mbuf] = asyncio.Queue()
        self._ring: asyncio.Queue[tuple[Mbuf, asyncio.Future[bytes] | None]] = asyncio.Queue(RING)
        self._space = asyncio.Condition()  # send-buffer space or KVA freed
        self._unheld = asyncio.Event()
        self._unheld.set()
        self.stats = dict.fromkeys(
            (
                "sends",
                "tx_packets",
                "tx_bytes",
                "loaned_chunks",
                "loaned_pages",
                "copied_chunks",
                "copied_bytes",
                "loan_fallbacks",
                "kvawaits",
                "sbwaits",
                "mbufwaits",
                "kfaults",
                "pendfree",
                "soclosed",
                "sofreed",
                "wiredrops",
                "reconciles",
            ),
            0,
        )

    async def link_up(self) -> None:
        self.spawn(self._driver(), "driver")
        self.spawn(self._transmit(), "transmit")
        self.spawn(self._sopendfree(), "sopendfree")
        self.publish(
            NetLinkUp(
                h=self.event_header(), bandwidth_bps=self.bandwidth_bps, latency_us=self.latency_us
            )
        )

    async def watch_uvm(self, uvm_pub: str) -> None:
        """Learn of process exits: uvm.proc_exited (fast) and uvm.owners (reliable)."""
        self._uvm_sub = await self.transport.subscribe(uvm_pub, "uvm.proc_exited", self._on_uvm)
        self.spawn(self._reconciler(), "socket reconciler")

    async def close(self) -> None:
        if self._uvm_sub is not None:
            await self._uvm_sub.close()
            self._uvm_sub = None
        await super().close()

    def _on_uvm(self, raw: bytes) -> None:
        try:
            ev = decode_event(raw)
        except Exception:
            return
        if isinstance(ev, UvmProcExited):
            self._process_exited(ev.asid, ev.reason)

    # -- sockets --------------------------------------------------------------

    async def _owners(self, asids: list[int], sessions: list[int]) -> tuple[list[int], list[bool]]:
        rep = await self.peers["uvm"].call_ok(
            UvmOwners(h=NO_HEADER, asids=asids, sessions=sessions), UvmOwnersReply
        )
        return list(rep.owners), list(rep.live)

    async def on_socket(self, msg: NetSocket) -> Reply:
        session = msg.h.incarnation
        owners, _ = await self._owners([msg.asid], [])
        if owners != [session]:  # alike for no such process and another session's
            raise UserError(Errno.ESRCH, f"no process with asid {msg.asid}")
        if self._records[session] >= self.limits.sockets:
            raise UserError(
                Errno.EMFILE, f"the session holds its limit of {self.limits.sockets} sockets"
            )
        sid = next(self._sock_ids)
        so = Socket(sid, session, msg.asid, msg.sndbuf)
        self.sockets[sid] = so
        self._records[session] += 1
        self._open_by_asid.setdefault(msg.asid, set()).add(so)
        return self.reply(msg, NetSocketReply, sock=sid)

    def _socket(self, sid: int, session: int) -> Socket:
        """The session's open socket sid. => EBADF, alike for no such socket, a closed
        one and another session's (the reply does not tell whether it exists)."""
        so = self.sockets.get(sid)
        if so is None or so.closed or so.session != session:
            raise UserError(Errno.EBADF, f"no socket {sid}")
        return so

    def on_close(self, msg: NetClose) -> Reply:
        self._soclose(self._socket(msg.sock, msg.h.incarnation), "close")
        return self.ack(msg)

    def _soclose(self, so: Socket, why: str) -> None:
        """The descriptor goes: no more sends; what is queued still leaves. Idempotent."""
        if so.closed:
            return
        so.closed = True
        self.stats["soclosed"] += 1
        opened = self._open_by_asid.get(so.asid)
        if opened is not None:
            opened.discard(so)
            if not opened:
                del self._open_by_asid[so.asid]
        self.trace.append(f"soclose socket {so.id} of process {so.asid}: {why}")
        self._wake()  # a send waiting for space on it fails
        self._sofree(so)

    def _sofree(self, so: Socket) -> None:
        """Free a closed socket's record once nothing refers to it any more."""
        if not so.closed or so.cc or so.loans or so.sends or so.id not in self.sockets:
            return
        del self.sockets[so.id]
        self._records[so.session] -= 1
        if self._records[so.session] <= 0:
            del self._records[so.session]
        self.stats["sofreed"] += 1

    def _process_exited(self, asid: int, why: str) -> None:
        """Exit closes every descriptor of the process (fdfree)."""
        for so in sorted(self._open_by_asid.get(asid, ()), key=lambda so: so.id):
            self._soclose(so, why)

    async def _reconciler(self) -> None:
        """Every RECONCILE_S: close the sockets of processes that are gone and end the
        listeners of sessions that are gone (a lost uvm.proc_exited leaks nothing)."""
        try:
            while True:
                await self.clock.sleep(RECONCILE_S)
                if self.state == "running":
                    await self.reconcile()
        except PeerPanic:
            return

    async def reconcile(self) -> None:
        asids = sorted(self._open_by_asid)
        sessions = sorted(self.listeners)
        if not asids and not sessions:
            return
        self.stats["reconciles"] += 1
        for i in range(0, max(len(asids), len(sessions)), OWNERS_BATCH):
            some_asids = asids[i : i + OWNERS_BATCH]
            some_sessions = sessions[i : i + OWNERS_BATCH]
            try:
                owners, live = await self._owners(some_asids, some_sessions)
            except RemoteError as e:
                self.trace.append(f"reconcile: uvm.owners failed ({e.errno}); next time")
                return
            for asid, owner in zip(some_asids, owners, strict=False):
                if owner == 0:
                    self._process_exited(asid, "exited (reconciled with uvm)")
            for session, alive in zip(some_sessions, live, strict=False):
                if not alive:
                    self._unlisten(self.listeners, session)

    # -- the wire: per-session listeners and the operator's taps ---------------

    async def on_listen(self, msg: NetListen) -> Reply:
        session = msg.h.incarnation
        if session not in self.listeners:
            _, live = await self._owners([], [session])
            if live != [True]:
                raise UserError(Errno.EPERM, "the session has ended (detached or reaped)")
            self.listeners.setdefault(session, WireQueue())
        return self.ack(msg)

    async def on_recv(self, msg: NetRecv) -> Reply:
        q = self.listeners.get(msg.h.incarnation)
        if q is None:
            raise UserError(Errno.EINVAL, "not listening: send net.listen first")
        return await self._recv(msg, q, msg.max_packets, msg.wait_ms)

    def on_unlisten(self, msg: NetUnlisten) -> Reply:
        self._unlisten(self.listeners, msg.h.incarnation)
        return self.ack(msg)

    def on_tap_listen(self, msg: NetTapListen) -> Reply:
        if len(self.taps) >= MAX_TAPS:
            raise UserError(Errno.EAGAIN, f"the machine holds its limit of {MAX_TAPS} taps")
        tap = next(self._tap_ids)
        self.taps[tap] = WireQueue()
        return self.reply(msg, NetTapListenReply, tap=tap)

    async def on_tap_recv(self, msg: NetTapRecv) -> Reply:
        q = self.taps.get(msg.tap)
        if q is None:
            raise UserError(Errno.EINVAL, f"no tap {msg.tap}")
        return await self._recv(msg, q, msg.max_packets, msg.wait_ms)

    def on_tap_unlisten(self, msg: NetTapUnlisten) -> Reply:
        self._unlisten(self.taps, msg.tap)
        return self.ack(msg)

    def _unlisten(self, queues: dict[int, WireQueue], key: int) -> None:
        q = queues.pop(key, None)
        if q is not None:
            q.closed = True
            q.packets.clear()
            self.wire_queued -= q.nbytes
            q.nbytes = 0
            q.ready.set()  # a pending recv answers now

    async def _recv(self, msg: Request, q: WireQueue, max_packets: int, wait_ms: int) -> Reply:
        if not q.packets and wait_ms and not q.closed:
            try:
                await asyncio.wait_for(q.ready.wait(), wait_ms / 1000)
            except TimeoutError:
                pass
        out: list[WirePacket] = []
        size = 0
        while q.packets and len(out) < max_packets:
            pkt = q.packets[0]
            if out and size + len(pkt.payload) > RECV_MAX_BYTES:
                break
            q.packets.popleft()
            q.nbytes -= _cost(pkt)
            self.wire_queued -= _cost(pkt)
            size += len(pkt.payload)
            out.append(pkt)
        if not q.packets:
            q.ready.clear()
        dropped, q.dropped = q.dropped, 0
        return self.reply(msg, NetRecvReply, packets=out, dropped=dropped)

    def _enqueue(self, q: WireQueue, pkt: WirePacket) -> None:
        """Queue an mbuf for one receiver. => q.nbytes <= wire_bytes (q's own oldest go)
        and wire_queued <= wire_total (the oldest of the largest queue go, q or not)."""
        cost = _cost(pkt)
        q.packets.append(pkt)
        q.nbytes += cost
        self.wire_queued += cost
        while q.nbytes > self.limits.wire_bytes:
            self._wire_drop(q)
        while self.wire_queued > self.limits.wire_total:  # then some queue is not empty
            self._wire_drop(max(self._queues(), key=lambda x: x.nbytes))
        if q.packets:
            q.ready.set()

    def _wire_drop(self, q: WireQueue) -> None:
        """Drop q's oldest mbuf and count it (q is not empty)."""
        old = q.packets.popleft()
        q.nbytes -= _cost(old)
        self.wire_queued -= _cost(old)
        q.dropped += 1
        self.stats["wiredrops"] += 1
        if not q.packets:
            q.ready.clear()

    def _queues(self) -> itertools.chain[WireQueue]:
        return itertools.chain(self.listeners.values(), self.taps.values())

    def _deliver(self, pkt: WirePacket) -> None:
        """Put an mbuf on the wire: its session's listener and every tap."""
        q = self.listeners.get(pkt.session)
        if q is not None:
            self._enqueue(q, pkt)
        for tq in self.taps.values():
            self._enqueue(tq, pkt)

    def on_link(self, msg: NetLink) -> Reply:
        self.bandwidth_bps, self.latency_us = msg.bandwidth_bps, msg.latency_us
        if msg.somaxkva:
            self.somaxkva = msg.somaxkva
        if msg.loan_chunk:
            self.loan_chunk = msg.loan_chunk
        if msg.hold:
            self._unheld.clear()
        else:
            self._unheld.set()
        return self.ack(msg)

    # -- sosend -----------------------------------------------------------------

    async def on_send(self, msg: NetSend) -> Reply:
        so = self._socket(msg.sock, msg.h.incarnation)
        if msg.asid != so.asid:
            raise UserError(Errno.EINVAL, f"socket {so.id} belongs to process {so.asid}")
        so.sends += 1
        try:
            return await self._sosend(so, msg)
        finally:
            so.sends -= 1
            self._sofree(so)

    async def _sosend(self, so: Socket, msg: NetSend) -> Reply:
        owner = msg.h.incarnation
        tally = {"loaned": 0, "copied": 0, "messages": 0}
        async with so.lock:
            if so.closed:
                raise UserError(Errno.EBADF, f"socket {so.id} was closed")
            seq = so.next_seq
            so.next_seq += 1
            window: list[tuple[int, int, bool, int]] = []  # (off, length, loan, kva)
            off = 0
            while off < msg.n:
                resid = msg.n - off
                want = min(resid, self.loan_chunk, so.sndbuf)
                if window and so.sndbuf - so.cc < want:
                    await self._flush(so, seq, msg, owner, window, tally)  # frees our space
                space = await self._sbwait(so, want)
                if space is None:  # soclose kicked us out of sbwait (sorestart)
                    self._abandon(so, msg.va, window)
                    raise UserError(Errno.EBADF, f"socket {so.id} was closed during the send")
                loan = 0 <= self.loan_thresh <= min(resid, space)
                kva = 0
                if loan:
                    npages = self._npages(msg.va + off, want)
                    if window and self.socurkva + (npages << PAGE_SHIFT) > self.somaxkva:
                        await self._flush(so, seq, msg, owner, window, tally)
                    kva = await self._kva_reserve(npages)
                so.cc += want
                window.append((off, want, loan, kva))
                off += want
                if len(window) >= PIPELINE:
                    await self._flush(so, seq, msg, owner, window, tally)
            if window:
                await self._flush(so, seq, msg, owner, window, tally)
            self.stats["sends"] += 1
        return self.reply(
            msg,
            NetSendReply,
            seq=seq,
            loaned_pages=tally["loaned"],
            copied_bytes=tally["copied"],
            messages=tally["messages"],
        )

    @staticmethod
    def _npages(va: int, length: int) -> int:
        return (round_page(va + length) - trunc_page(va)) >> PAGE_SHIFT

    async def _flush(
        self,
        so: Socket,
        seq: int,
        msg: NetSend,
        owner: int,
        window: list[tuple[int, int, bool, int]],
        tally: dict[str, int],
    ) -> None:
        """Set up a window of chunks concurrently (their loans or copies overlap), then
        queue them in order. A chunk that failed ends the send: the chunks after it are
        never queued (loaned ones go straight to sopendfree) and the error is raised."""
        results = await asyncio.gather(
            *(
                self._make_mbuf(Chunk(so, seq, off, msg.n, msg.va + off, length, owner), loan, kva)
                for off, length, loan, kva in window
            ),
            return_exceptions=True,
        )
        failed: BaseException | None = None
        for (_, length, _, _), res in zip(window, results, strict=True):
            if failed is None and isinstance(res, BaseException):
                failed = res
            if failed is not None or isinstance(res, BaseException):
                so.cc -= length
                if not isinstance(res, BaseException):
                    if res[0].loaned:
                        self._pendfree.put_nowait(res[0])
                    else:
                        self._mclfree(res[0].length)
                continue
            mb, used = res
            tally["messages"] += used
            if mb.loaned:
                tally["loaned"] += len(mb.pfns)
            else:
                tally["copied"] += mb.length
            self._txq.put_nowait(mb)
        window.clear()
        if failed is not None:
            self._wake()
            raise failed

    def _abandon(self, so: Socket, va: int, window: list[tuple[int, int, bool, int]]) -> None:
        """Give back what chunks not yet set up reserved: buffer space and loan KVA."""
        for off, length, loan, kva in window:
            so.cc -= length
            if loan:
                self._kva_release(kva, self._npages(va + off, length))
        window.clear()
        self._wake()

    async def _make_mbuf(self, c: Chunk, loan: bool, kva: int) -> tuple[Mbuf, int]:
        used = 0
        if loan:
            mb, used = await self._loan_chunk(c, kva)
            if mb is not None:
                return mb, used
        mb, more = await self._copy_chunk(c)
        return mb, used + more

    async def _sbwait(self, so: Socket, want: int) -> int | None:
        """Wait until the send buffer has room for `want` bytes. => the space there is;
        None if the socket was closed meanwhile."""
        async with self._space:
            if so.sndbuf - so.cc < want:
                self.stats["sbwaits"] += 1
            await self._space.wait_for(lambda: so.closed or so.sndbuf - so.cc >= want)
            return None if so.closed else so.sndbuf - so.cc

    async def _loan_chunk(self, c: Chunk, kva: int) -> tuple[Mbuf | None, int]:
        """sosend_loan for one chunk, at reserved KVA. => (the mbuf, or None to copy
        instead; messages used)."""
        sva = trunc_page(c.va)
        npages = self._npages(c.va, c.length)
        try:
            rep = await self.peers["uvm"].call_ok(
                UvmLoan(h=NO_HEADER, asid=c.so.asid, owner=c.owner, va=sva, npages=npages),
                UvmLoanReply,
            )
        except PeerPanic:
            raise
        except RemoteError as e:
            self._kva_release(kva, npages)
            self.stats["loan_fallbacks"] += 1
            self.trace.append(f"loan refused ({e.errno}): copying chunk of send {c.seq}")
            return None, 1
        await self.peers["mmu"].call_ok(
            PmapKenter(h=NO_HEADER, va=kva, pfns=rep.pfns, prot=int(Prot.READ)), CtlAck
        )
        self.stats["loaned_chunks"] += 1
        self.stats["loaned_pages"] += npages
        c.so.loans += 1  # until sopendfree frees the mbuf
        mb = Mbuf(
            c.so, c.seq, c.off, c.total, c.length, kva=kva, pgoff=c.va & PAGE_MASK, pfns=rep.pfns
        )
        return mb, 2

    async def _copy_chunk(self, c: Chunk) -> tuple[Mbuf, int]:
        """The copy path: mbuf storage from the machine's pool, then copyin, resolving
        faults on the process's behalf. => the storage is held until the mbuf is sent."""
        await self._mclget(c.length)
        try:
            return await self._copyin(c)
        except BaseException:
            self._mclfree(c.length)
            raise

    async def _mclget(self, n: int) -> None:
        """Take n bytes of mbuf storage (NetBSD's nmbclusters): the bytes of copied data
        net holds, over every session, stay within limits.mbufs; a copy waits for
        storage as m_get(M_WAIT) does (one chunk always fits an empty pool)."""
        async with self._space:
            if self.mbuf_bytes + n > self.limits.mbufs:
                self.stats["mbufwaits"] += 1
            await self._space.wait_for(
                lambda: self.mbuf_bytes == 0 or self.mbuf_bytes + n <= self.limits.mbufs
            )
            self.mbuf_bytes += n

    def _mclfree(self, n: int) -> None:
        self.mbuf_bytes -= n
        self._wake()

    async def _copyin(self, c: Chunk) -> tuple[Mbuf, int]:
        used = 0
        while True:
            rep = await self.peers["mmu"].call(
                MmuCopyin(h=NO_HEADER, asid=c.so.asid, owner=c.owner, va=c.va, n=c.length)
            )
            used += 1
            if rep.status == Status.OK and isinstance(rep, MmuAccessReply):
                break
            if not isinstance(rep, MmuAccessReply) or rep.errno != Errno.EFAULT:
                raise_for(rep)  # EPANIC -> PeerPanic; other errnos -> RemoteError
                raise RemoteError(Errno.EBADMSG, f"mmu.copyin answered {rep!r}")
            try:
                await self.peers["uvm"].call_ok(
                    UvmKfault(
                        h=NO_HEADER,
                        va=rep.fault_va,
                        access=int(Prot.READ),
                        asid=c.so.asid,
                        owner=c.owner,
                    ),
                    CtlAck,
                )
            except PeerPanic:
                raise
            except RemoteError as e:
                raise UserError(Errno.EFAULT, f"send buffer: {e.detail}") from None
            used += 1
        self.stats["copied_chunks"] += 1
        self.stats["copied_bytes"] += c.length
        return Mbuf(c.so, c.seq, c.off, c.total, c.length, data=rep.data), used

    # -- loan KVA (sokvareserve / sokvaunreserve) ---------------------------------

    async def _kva_reserve(self, npages: int) -> int:
        size = npages << PAGE_SHIFT
        async with self._space:
            if self.socurkva + size > self.somaxkva:
                self.stats["kvawaits"] += 1
            await self._space.wait_for(lambda: self.socurkva + size <= self.somaxkva)
            self.socurkva += size
        if self._kva_slots:
            slot = self._kva_slots.pop()
        else:
            slot = self._kva_next
            self._kva_next += 1
        return KVA_BASE + slot * KVA_SLOT_PAGES * PAGE_SIZE

    def _kva_release(self, kva: int, npages: int) -> None:
        self._kva_slots.append((kva - KVA_BASE) // (KVA_SLOT_PAGES * PAGE_SIZE))
        self.socurkva -= npages << PAGE_SHIFT
        self._wake()

    def _wake(self) -> None:
        async def notify() -> None:
            async with self._space:
                self._space.notify_all()

        self.spawn(notify(), "wake")

    # -- the driver -----------------------------------------------------------------

    async def _driver(self) -> None:
        """The NIC's descriptor ring: take mbufs in order and, once the link is up, start
        each loaned one's DMA (translate, read RAM) up to RING mbufs ahead."""
        try:
            while True:
                mb = await self._txq.get()
                await self._unheld.wait()
                dma = asyncio.ensure_future(self._dma_read(mb)) if mb.loaned else None
                await self._ring.put((mb, dma))
        except PeerPanic:
            return

    async def _transmit(self) -> None:
        """Put ring entries on the wire in order, at the link's speed."""
        try:
            while True:
                mb, dma = await self._ring.get()
                await self._unheld.wait()
                delay = self.latency_us / 1e6
                if self.bandwidth_bps:
                    delay += mb.length * 8 / self.bandwidth_bps
                if delay:
                    await self.clock.sleep(delay)
                payload = await dma if dma is not None else mb.data
                self._deliver(
                    WirePacket(
                        session=mb.sock.session,
                        asid=mb.sock.asid,
                        sock=mb.sock.id,
                        seq=mb.seq,
                        off=mb.off,
                        total=mb.total,
                        payload=payload,
                        loaned=mb.loaned,
                    )
                )
                self.stats["tx_packets"] += 1
                self.stats["tx_bytes"] += mb.length
                mb.sock.cc -= mb.length
                if mb.loaned:
                    self._pendfree.put_nowait(mb)  # soloanfree: defer, never free here
                else:
                    self._mclfree(mb.length)
                    self._sofree(mb.sock)
                self._wake()
        except PeerPanic:
            return

    async def _dma_read(self, mb: Mbuf) -> bytes:
        """Translate the mbuf's KVA (one request) and read its bytes from RAM."""
        assert self.ram is not None
        npages = len(mb.pfns)
        while True:
            rep = await self.peers["mmu"].call(PmapKextract(h=NO_HEADER, va=mb.kva, npages=npages))
            if isinstance(rep, PmapKextractReply) and rep.status == Status.OK:
                break
            if not isinstance(rep, PmapKextractReply) or rep.errno != Errno.EFAULT:
                raise_for(rep)
                raise RemoteError(Errno.EBADMSG, f"pmap.kextract answered {rep!r}")
            # A kernel page fault: uvm resolves it or panics (section 9).
            self.stats["kfaults"] += 1
            idx = (rep.fault_va - mb.kva) >> PAGE_SHIFT
            evidence = (
                f"net driver reading mbuf of socket {mb.sock.id} send {mb.seq} "
                f"(bytes {mb.off}..{mb.off + mb.length} of {mb.total}, process {mb.sock.asid}) "
                f"found {rep.detail}"
            )
            await self.peers["uvm"].call_ok(
                UvmKfault(
                    h=NO_HEADER,
                    va=rep.fault_va,
                    access=int(Prot.READ),
                    evidence=evidence[:4096],
                    pfn=mb.pfns[idx] if 0 <= idx < npages else -1,
                ),
                CtlAck,
            )
        view = self.ram.view
        out = bytearray()
        for pfn in rep.pfns:
            base = pfn << PAGE_SHIFT
            out += view[base : base + PAGE_SIZE]
        return bytes(out[mb.pgoff : mb.pgoff + mb.length])

    async def _sopendfree(self) -> None:
        """sodoloanfree, off the transmit path: every mbuf waiting is freed concurrently
        (per mbuf: kremove, then unloan, then its KVA is released)."""
        try:
            while True:
                batch = [await self._pendfree.get()]
                while not self._pendfree.empty():
                    batch.append(self._pendfree.get_nowait())
                await asyncio.gather(*(self._loanfree(mb) for mb in batch))
        except PeerPanic:
            return

    async def _loanfree(self, mb: Mbuf) -> None:
        npages = len(mb.pfns)
        await self.peers["mmu"].call_ok(
            PmapKremove(h=NO_HEADER, va=mb.kva, npages=npages), PmapCountReply
        )
        await self.peers["uvm"].call_ok(
            UvmUnloan(h=NO_HEADER, pfns=mb.pfns, kva=mb.kva, npages=npages), CtlAck
        )
        self._kva_release(mb.kva, npages)
        self.stats["pendfree"] += 1
        mb.sock.loans -= 1
        self._sofree(mb.sock)

    # -- reporting ---------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return {
            **self.stats,
            "sockets": len(self.sockets),
            "listeners": len(self.listeners),
            "taps": len(self.taps),
            "wire_queued": self.wire_queued,
            "txq": self._txq.qsize() + self._ring.qsize(),
            "pendfree_q": self._pendfree.qsize(),
            "socurkva": self.socurkva,
            "mbuf_bytes": self.mbuf_bytes,
            "held": int(not self._unheld.is_set()),
        }

    def dump_state(self) -> dict[str, Any]:
        return {
            "counters": self.counters(),
            "loan_thresh": self.loan_thresh,
            "somaxkva": self.somaxkva,
            "link": {"bandwidth_bps": self.bandwidth_bps, "latency_us": self.latency_us},
        }
