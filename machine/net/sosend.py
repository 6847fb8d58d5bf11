"""sosend: a send cut into chunks, each loaned or copied into an mbuf, queued in order.

NetBSD sosend / sosend_loan (uvm-semantics.md section 10). A send of n bytes from va
is cut into chunks of at most `loan_chunk` (SOCK_LOAN_CHUNK, 64 KiB) and of at most
the socket's sndbuf; each chunk first waits for send-buffer space (sbwait).
  * Loan path, when the knobs allow loans, the bytes left are at least the threshold
    and the buffer has that much room: reserve loan KVA (waits while
    socurkva + len > somaxkva); the window's loan chunks then go in one uvm.loan_chunks
    with their KVA (a whole-send loan: uvm loans each as its own uvm.loan, in order, the
    pages write-protected, counted as loaned, and enters every loaned page read-only
    at its KVA on its own pmap connection before it answers); an mbuf per chunk with
    external storage there. A refused chunk (modern: a wired page)
    frees its KVA and is copied instead.
  * Copy path otherwise: mbuf storage from the pool per chunk (waits while it is full),
    then machine.net.copyin for each run of consecutive copied chunks: the frames held
    (pmap.uhold), the bytes read from RAM, the hold released (pmap.urelease, sent at
    once; its answer is awaited before the send's last window is queued); a fault is
    resolved through uvm.kfault on the process's behalf (EFAULT ends the send; the
    chunks wholly before the fault are still copied).
The chunks of a send are set up in windows (the loans and the copies overlap), then
queued in order: a window holds up to LOAN_WINDOW chunks (64: one uvm.loan_chunks)
whose loans hold at most an eighth of RAM (loan_window_pages: a loaned page
cannot be paged out, so a bigger window could wait for itself), and up to PIPELINE
copied ones, more while their bytes stay within a quarter of
the pool; the send returns once every chunk is queued (write(2)), and nothing is
awaited between its last enqueue and its answer. SendResult.messages counts every
kernel message the send path sent.
The copied chunks of a window (its refused loans too) hold their pool storage until
the whole window is set up, so a window's copies stop short of the session's fair
share of the pool (machine.share, machine.net.mbuf): one chunk more would pass it.
Known limit: a refused loan is copied in a window sized for loans, so a window
of refused loans can still pass a small share and wait until other storage frees.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from machine.ipc.peer import PeerPanic, RemoteError
from machine.net.copyin import copyin
from machine.net.driver import Driver
from machine.net.kernel import KernelOps
from machine.net.knobs import LOAN_WINDOW, PIPELINE, SOCK_LOAN_CHUNK, NetKnobs, new_stats
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
    #: pmap.urelease answers not awaited yet (awaited before the send answers)
    releases: list[Awaitable[None]] = field(default_factory=list, repr=False)


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
        #: Pages a window may hold on loan at once: a loaned page cannot be paged out, so
        #: a window larger than what RAM can spare would wait for itself (Net sets it
        #: from the RAM size: an eighth of it).
        self.loan_window_pages = LOAN_WINDOW * (SOCK_LOAN_CHUNK >> PAGE_SHIFT)

    async def send(self, so: Socket, asid: int, va: int, n: int, owner: int) -> SendResult:
        """Send n bytes at va of process asid (owned by session owner) on socket so.
        => once every byte is queued; EINVAL (another process's socket), EBADF (closed,
        also while waiting), EFAULT (the buffer), or a peer's error."""
        if asid != so.asid:
            raise UserError(Errno.EINVAL, f"socket {so.id} belongs to process {so.asid}")
        so.sends += 1
        res = SendResult(seq=so.next_seq)
        try:
            await self._sosend(so, va, n, owner, res)
        finally:
            try:
                await _released(res.releases)  # every hold's release answered
            finally:
                so.sends -= 1
                self.sockets.sofree(so)
        return res

    async def _sosend(self, so: Socket, va: int, n: int, owner: int, res: SendResult) -> None:
        async with so.lock:
            if so.closed:
                raise UserError(Errno.EBADF, f"socket {so.id} was closed")
            res.seq = so.next_seq
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
                    if window and (
                        not self.kva.fits(npages)
                        or self._loaned(va, window) + npages > self.loan_window_pages
                    ):
                        await self._flush(so, va, n, owner, res, window)
                    kva = await self.kva.reserve(npages)
                so.cc += want
                window.append(Slot(off, want, loan, kva))
                off += want
                if len(window) >= LOAN_WINDOW or self._copies_full(window, so.session):
                    await self._flush(so, va, n, owner, res, window)
            if window:
                await self._flush(so, va, n, owner, res, window)
            self.stats["sends"] += 1

    @staticmethod
    def _loaned(va: int, window: list[Slot]) -> int:
        """Pages the window's loans hold resident (none of them can be paged out)."""
        return sum(npages_of(va + s.off, s.length) for s in window if s.loan)

    def _copies_full(self, window: list[Slot], session: int) -> bool:
        """The window holds as many copied chunks as one may: PIPELINE, or more while
        their bytes stay within a quarter of the mbuf pool; and never so many that one
        more chunk would pass the session's fair share of the pool (machine.share): a
        window's storage is held until the window is queued, so a window past the share
        could wait for ever for storage only its own queueing would free."""
        copies = [s.length for s in window if not s.loan]
        held = sum(copies)
        if held and held + self.loan_chunk > self.pool.share.share():
            return True
        return len(copies) >= PIPELINE and held >= self.pool.limit // 4

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
        """Set up the window's chunks (one uvm.loan_chunks for its loans, mapped by uvm,
        its copies alongside), then queue them in order. A chunk that failed ends the send:
        the chunks after it are never queued (loaned ones go straight to sopendfree)
        and the error is raised. Before the send's last window is queued, the releases
        of its holds are awaited: nothing then comes between the last enqueue and the
        answer, so a send is answered before its last mbuf can reach the wire."""
        chunks = [Chunk(so, res.seq, s.off, total, va + s.off, s.length, owner) for s in window]
        made: list[Mbuf | BaseException | None] = [None] * len(window)
        await asyncio.gather(
            self._loan_window(chunks, window, made, res),
            self._copy_chunks(chunks, [i for i, s in enumerate(window) if not s.loan], made, res),
        )
        failed: BaseException | None = None
        if window[-1].off + window[-1].length == total:  # the send's last window:
            try:  # its answer must follow its last mbuf's enqueue at once
                await _released(res.releases)
            except BaseException as e:
                failed = e
        for s, r in zip(window, made, strict=True):
            assert r is not None
            if failed is None and isinstance(r, BaseException):
                failed = r
            if failed is not None or isinstance(r, BaseException):
                so.cc -= s.length
                if not isinstance(r, BaseException):
                    self._give_up(r)
                continue
            if r.loaned:
                res.loaned_pages += r.npages
            else:
                res.copied_bytes += r.length
            self.driver.enqueue(r)
        window.clear()
        if failed is not None:
            self.chan.wakeup()
            raise failed

    def _give_up(self, mb: Mbuf) -> None:
        """An mbuf set up but never to be queued: its loan or its storage goes back."""
        if mb.loaned:
            self.driver.loanfree_later(mb)
        else:
            self.pool.mclfree(mb.length, mb.sock.session)

    def _abandon(self, so: Socket, va: int, window: list[Slot]) -> None:
        """Give back what chunks not yet set up reserved: buffer space and loan KVA."""
        for s in window:
            so.cc -= s.length
            if s.loan:
                self.kva.free(s.kva, npages_of(va + s.off, s.length))
        window.clear()
        self.chan.wakeup()

    async def _loan_window(
        self, chunks: list[Chunk], window: list[Slot], made: list[Mbuf | BaseException | None],
        res: SendResult,
    ) -> None:  # fmt: skip
        """sosend_loan for the window's loan chunks, at their reserved KVA: one
        uvm.loan_chunks, answered per chunk once uvm has entered the loaned ones at their
        KVA; a refused chunk frees its KVA and is copied instead."""
        idx = [i for i, s in enumerate(window) if s.loan]
        if not idx:
            return
        c0 = chunks[idx[0]]
        ranges = [(trunc_page(c.va), npages_of(c.va, c.length)) for c in (chunks[i] for i in idx)]
        res.messages += 1
        got: list[list[int] | RemoteError]
        try:
            got = await self.ops.loan(c0.so.asid, c0.owner, ranges, [window[i].kva for i in idx])
        except PeerPanic as e:
            for i, (_, npages) in zip(idx, ranges, strict=True):
                self.kva.free(window[i].kva, npages)
                made[i] = e
            return
        except RemoteError as e:
            got = [e] * len(idx)
        fallback: list[int] = []
        for i, (_, npages), r in zip(idx, ranges, got, strict=True):
            c = chunks[i]
            if isinstance(r, RemoteError):
                self.kva.free(window[i].kva, npages)
                self.stats["loan_fallbacks"] += 1
                self.log(f"loan refused ({r.errno}): copying chunk of send {c.seq}")
                fallback.append(i)
                continue
            mb = Mbuf(c.so, c.seq, c.off, c.total, c.length, kva=window[i].kva,
                      pgoff=c.va & PAGE_MASK, pfns=r)  # fmt: skip
            c.so.loans += 1  # until sopendfree frees the mbuf
            made[i] = mb
            self.stats["loaned_chunks"] += 1
            self.stats["loaned_pages"] += mb.npages
        await self._copy_chunks(chunks, fallback, made, res)

    async def _copy_chunks(
        self, chunks: list[Chunk], idx: list[int], made: list[Mbuf | BaseException | None],
        res: SendResult,
    ) -> None:  # fmt: skip
        """The copy path: mbuf storage from the pool for each chunk (in order), then one
        copyin per run of consecutive chunks (frame holds, bytes read from RAM); the
        storage is held until the mbuf is sent, given back if the chunk fails."""
        if not idx:
            return
        got = 0
        try:
            for i in idx:
                await self.pool.mclget(chunks[i].length, chunks[i].so.session)
                got += 1
            runs: list[list[int]] = []
            for i in idx:
                if runs and runs[-1][-1] == i - 1:
                    runs[-1].append(i)
                else:
                    runs.append([i])
            for run in runs:
                await self._copy_run([chunks[i] for i in run], run, made, res)
        except Exception as e:
            for i in idx:
                if made[i] is None:
                    made[i] = e  # raised by _flush in the chunks' order
        finally:
            for n, i in enumerate(idx):
                if n >= got:
                    break
                if not isinstance(made[i], Mbuf):
                    self.pool.mclfree(chunks[i].length, chunks[i].so.session)

    async def _copy_run(
        self, run: list[Chunk], idx: list[int], made: list[Mbuf | BaseException | None],
        res: SendResult,
    ) -> None:  # fmt: skip
        """copyin of consecutive chunks; those wholly before an unresolvable fault are
        still copied, the others fail with EFAULT."""
        c0 = run[0]
        start = c0.va
        n = run[-1].va + run[-1].length - start
        assert self.driver.ram is not None, "net has no RAM to copy into mbufs from"
        ram, cuts = self.driver.ram, [c.length for c in run]  # consecutive chunks
        pieces, err, msgs = await copyin(
            self.ops, ram, c0.so.asid, c0.owner, start, n, res.releases, cuts
        )
        res.messages += msgs
        for k, (i, c) in enumerate(zip(idx, run, strict=True)):
            if k >= len(pieces):
                assert err is not None
                made[i] = err
                continue
            made[i] = Mbuf(c.so, c.seq, c.off, c.total, c.length, data=pieces[k])
            self.stats["copied_chunks"] += 1
            self.stats["copied_bytes"] += c.length


async def _released(releases: list[Awaitable[None]]) -> None:
    """Await the releases of a send's holds; the first failure is raised (after all)."""
    if not releases:
        return
    done = await asyncio.gather(*releases, return_exceptions=True)
    releases.clear()
    for r in done:
        if isinstance(r, BaseException):
            raise r
