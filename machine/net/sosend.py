"""sosend: a send cut into chunks, each loaned or copied into an mbuf, queued in order.

NetBSD sosend / sosend_loan (uvm-semantics.md section 10). A send of n bytes from va
is cut into chunks of at most `loan_chunk` (SOCK_LOAN_CHUNK, 64 KiB) and of at most
the socket's sndbuf; each chunk first waits for send-buffer space (sbwait).
  * Loan path, when the knobs allow loans, the bytes left are at least the threshold
    and the buffer has that much room: reserve loan KVA (waits while
    socurkva + len > somaxkva), one uvm.loan (the pages, write-protected, counted as
    loaned), one pmap.kenter of every page read-only at that KVA, an mbuf with
    external storage there. A refused loan (modern: a wired page) frees the KVA and
    the chunk is copied instead.
  * Copy path otherwise: mbuf storage from the pool (waits while it is full), then
    mmu.copyin of the chunk's bytes; a fault is resolved through uvm.kfault on the
    process's behalf (EFAULT ends the send).
Up to PIPELINE chunks of a send (a window) are set up concurrently (their round trips
overlap), then queued in order; the send returns once every chunk is queued (write(2)).
Known limit: the copied chunks of a window hold their pool storage until the whole
window is set up, so a pool (limits.mbufs) smaller than a window's copies deadlocks
the send (tests/unit/net/test_sosend.py, xfail).

Invariants:
  * one send at a time per socket (sblock); its mbufs are queued in send order;
  * sb_cc <= sndbuf: a chunk's bytes count in sb_cc from the moment it has room
    until the driver puts its mbuf on the wire (or the chunk is given up);
  * a send that fails (EFAULT, EBADF at soclose, a peer's error) leaves nothing
    behind: the chunks not queued give back their sb_cc, their pool storage and their
    KVA, and a chunk whose pages were loaned goes to sopendfree (kremove, unloan,
    KVA release); the chunks already queued are still sent, as write(2)'s partial
    write (the reply is the error);
  * a loaned chunk counts in its socket's `loans` until sopendfree frees it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from machine.ipc.peer import PeerPanic, RemoteError
from machine.net.driver import Driver
from machine.net.kernel import KernelOps, PageFault
from machine.net.knobs import PIPELINE, SOCK_LOAN_CHUNK, NetKnobs, new_stats
from machine.net.kva import KvaArena
from machine.net.mbuf import Mbuf, MbufPool
from machine.net.socket import Socket, SocketTable
from machine.net.synch import WaitChannel
from machine.params import PAGE_MASK, PAGE_SHIFT, round_page, trunc_page
from machine.proto import Errno, UserError


def npages_of(va: int, length: int) -> int:
    """Pages [va, va + length) spans."""
    return (round_page(va + length) - trunc_page(va)) >> PAGE_SHIFT


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


@dataclass(frozen=True)
class Slot:
    """A chunk of the window: its room in the send buffer is taken, its KVA reserved."""

    off: int
    length: int
    loan: bool
    kva: int  # loan KVA reserved for it (loan only)


@dataclass
class SendResult:
    """What net.send answers: the send's sequence number and what it took."""

    seq: int = 0
    loaned_pages: int = 0
    copied_bytes: int = 0
    messages: int = 0  # kernel messages the send path used


class Sosend:
    """The send path of every socket."""

    def __init__(
        self,
        ops: KernelOps,
        knobs: NetKnobs,
        kva: KvaArena,
        pool: MbufPool,
        driver: Driver,
        sockets: SocketTable,
        chan: WaitChannel,
        stats: dict[str, int] | None = None,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.ops = ops
        self.knobs = knobs
        self.kva = kva
        self.pool = pool
        self.driver = driver
        self.sockets = sockets
        self.chan = chan  # sbwait's channel (woken by transmit, frees and soclose)
        self.stats = stats if stats is not None else new_stats()
        self.log = log
        self.loan_chunk = SOCK_LOAN_CHUNK  # net.link may change it

    async def send(self, so: Socket, asid: int, va: int, n: int, owner: int) -> SendResult:
        """Send n bytes at va of process asid (owned by session owner) on socket so.
        => once every byte is queued; EINVAL (another process's socket), EBADF (closed,
        also while waiting), EFAULT (the buffer), or a peer's error."""
        if asid != so.asid:
            raise UserError(Errno.EINVAL, f"socket {so.id} belongs to process {so.asid}")
        so.sends += 1
        try:
            return await self._sosend(so, va, n, owner)
        finally:
            so.sends -= 1
            self.sockets.sofree(so)

    async def _sosend(self, so: Socket, va: int, n: int, owner: int) -> SendResult:
        async with so.lock:
            if so.closed:
                raise UserError(Errno.EBADF, f"socket {so.id} was closed")
            res = SendResult(seq=so.next_seq)
            so.next_seq += 1
            window: list[Slot] = []
            off = 0
            while off < n:
                resid = n - off
                want = min(resid, self.loan_chunk, so.sndbuf)
                if window and so.space < want:
                    await self._flush(so, va, n, owner, res, window)  # frees our space
                space = await self._sbwait(so, want)
                if space is None:  # soclose kicked us out of sbwait (sorestart)
                    self._abandon(so, va, window)
                    raise UserError(Errno.EBADF, f"socket {so.id} was closed during the send")
                loan = 0 <= self.knobs.loan_thresh <= min(resid, space)
                kva = 0
                if loan:
                    npages = npages_of(va + off, want)
                    if window and not self.kva.fits(npages):
                        await self._flush(so, va, n, owner, res, window)
                    kva = await self.kva.reserve(npages)
                so.cc += want
                window.append(Slot(off, want, loan, kva))
                off += want
                if len(window) >= PIPELINE:
                    await self._flush(so, va, n, owner, res, window)
            if window:
                await self._flush(so, va, n, owner, res, window)
            self.stats["sends"] += 1
        return res

    async def _sbwait(self, so: Socket, want: int) -> int | None:
        """Wait until the send buffer has room for `want` bytes. => the room there is;
        None if the socket was closed meanwhile."""
        if so.space < want:
            self.stats["sbwaits"] += 1
        await self.chan.sleep_until(lambda: so.closed or so.space >= want)
        return None if so.closed else so.space

    async def _flush(
        self, so: Socket, va: int, total: int, owner: int, res: SendResult, window: list[Slot]
    ) -> None:
        """Set up the window's chunks concurrently (their loans or copies overlap), then
        queue them in order. A chunk that failed ends the send: the chunks after it are
        never queued (loaned ones go straight to sopendfree) and the error is raised."""
        seq = res.seq
        results = await asyncio.gather(
            *(
                self._make_mbuf(Chunk(so, seq, s.off, total, va + s.off, s.length, owner), s)
                for s in window
            ),
            return_exceptions=True,
        )
        failed: BaseException | None = None
        for s, r in zip(window, results, strict=True):
            if failed is None and isinstance(r, BaseException):
                failed = r
            if failed is not None or isinstance(r, BaseException):
                so.cc -= s.length
                if not isinstance(r, BaseException):
                    self._give_up(r[0])
                continue
            mb, used = r
            res.messages += used
            if mb.loaned:
                res.loaned_pages += mb.npages
            else:
                res.copied_bytes += mb.length
            self.driver.enqueue(mb)
        window.clear()
        if failed is not None:
            self.chan.wakeup()
            raise failed

    def _give_up(self, mb: Mbuf) -> None:
        """An mbuf set up but never to be queued: its loan or its storage goes back."""
        if mb.loaned:
            self.driver.loanfree_later(mb)
        else:
            self.pool.mclfree(mb.length)

    def _abandon(self, so: Socket, va: int, window: list[Slot]) -> None:
        """Give back what chunks not yet set up reserved: buffer space and loan KVA."""
        for s in window:
            so.cc -= s.length
            if s.loan:
                self.kva.free(s.kva, npages_of(va + s.off, s.length))
        window.clear()
        self.chan.wakeup()

    async def _make_mbuf(self, c: Chunk, s: Slot) -> tuple[Mbuf, int]:
        """=> the chunk's mbuf (loaned, or copied when the loan was refused) and the
        kernel messages it took."""
        used = 0
        if s.loan:
            mb, used = await self._loan_chunk(c, s.kva)
            if mb is not None:
                return mb, used
        mb, more = await self._copy_chunk(c)
        return mb, used + more

    async def _loan_chunk(self, c: Chunk, kva: int) -> tuple[Mbuf | None, int]:
        """sosend_loan for one chunk, at reserved KVA. => (the mbuf, or None to copy
        instead; messages used)."""
        npages = npages_of(c.va, c.length)
        try:
            pfns = await self.ops.loan(c.so.asid, c.owner, trunc_page(c.va), npages)
        except PeerPanic:
            raise
        except RemoteError as e:
            self.kva.free(kva, npages)
            self.stats["loan_fallbacks"] += 1
            self.log(f"loan refused ({e.errno}): copying chunk of send {c.seq}")
            return None, 1
        mb = Mbuf(c.so, c.seq, c.off, c.total, c.length, kva=kva, pgoff=c.va & PAGE_MASK, pfns=pfns)
        c.so.loans += 1  # until sopendfree frees the mbuf
        try:
            await self.ops.kenter(kva, pfns)
        except BaseException:
            self.driver.loanfree_later(mb)  # the loan is returned, the KVA released
            raise
        self.stats["loaned_chunks"] += 1
        self.stats["loaned_pages"] += npages
        return mb, 2

    async def _copy_chunk(self, c: Chunk) -> tuple[Mbuf, int]:
        """The copy path: mbuf storage from the pool, then copyin, resolving faults on
        the process's behalf. => the storage is held until the mbuf is sent."""
        await self.pool.mclget(c.length)
        try:
            return await self._copyin(c)
        except BaseException:
            self.pool.mclfree(c.length)
            raise

    async def _copyin(self, c: Chunk) -> tuple[Mbuf, int]:
        used = 0
        while True:
            try:
                data = await self.ops.copyin(c.so.asid, c.owner, c.va, c.length)
                used += 1
                break
            except PageFault as f:
                used += 1
                fault_va = f.va
            try:
                await self.ops.kfault(fault_va, asid=c.so.asid, owner=c.owner)
            except PeerPanic:
                raise
            except RemoteError as e:
                raise UserError(Errno.EFAULT, f"send buffer: {e.detail}") from None
            used += 1
        self.stats["copied_chunks"] += 1
        self.stats["copied_bytes"] += c.length
        return Mbuf(c.so, c.seq, c.off, c.total, c.length, data=data), used
