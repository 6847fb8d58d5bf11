"""The driver: the NIC's descriptor ring, transmit at the link's speed, and sopendfree.

Three loops, run together in one task group (`Driver.run`):
  * the ring: take mbufs from the transmit queue in order, once the link is up
    (`hold` stops it), up to RING mbufs ahead of the wire. With the kernel's page table
    in shared memory (machine.kpt, the machine's case), a loaned mbuf's DMA runs when
    transmit takes it: it translates its KVA by reading the table, as an IOMMU walks
    page tables, and copies its bytes straight from RAM (no message); a cleared entry
    is a kernel page fault: the driver asks the mmu for that range (one
    pmap.kextract_ranges, which carries the mmu's evidence: who revoked it, why) and
    sends uvm.kfault with it and the pfn loaned there; uvm resolves or panics, and
    the DMA reads again. A range the table does not cover is translated by that
    message. Without a table (unit tests), one ring pass translates every loaned mbuf
    it takes in one pmap.kextract_ranges (one in flight at a time, the passes made
    meanwhile share the next) and starts their DMA at once;
  * transmit: put the ring's mbufs on the wire in order, at the link's speed
    (latency, bandwidth); a copied mbuf's storage goes back to the pool at once, a
    loaned one is deferred to sopendfree (soloanfree: never freed on this path). A
    loaned mbuf bound for net's own wire (the machine's case) is not copied at all:
    its DMA pins its frames in the table (KernelPageTable.pin) and the packet carries
    views of RAM (machine.net.dma); it reaches sopendfree when that DMA completes (the
    wire has taken the bytes: a net.recv reply sent, or a copy made by the hold timer
    after DMA_HOLD_S, `_dma_timer`; or no queue holds the packet);
  * sopendfree (sodoloanfree): every loaned mbuf waiting is freed in one pass: one
    pmap.kremove of all their KVA, then one uvm.unloan of all their pages (per mbuf
    in order, as before: kremove, unloan), then each one's loan KVA is released.
`driver_msgs` counts the kernel messages these loops send (kextract, kfault,
kremove, unloan), each batch of at most MAX_CHUNKS mbufs being one message.
A peer that panics stops the driver: `run` returns the PeerPanic once every loop has
ended (the mbufs still queued are lost with the machine).

Invariants:
  * mbufs reach the wire in the order they were queued (one queue, one ring, one
    transmit loop), so the mbufs of one socket in send order;
  * at most RING mbufs are in the ring; none is transmitted while the link is held;
  * every loaned mbuf queued is eventually freed by sopendfree exactly once: kremoved,
    unloaned, its KVA released, its socket's `loans` taken down; a pinned one only
    after its DMA completed, so its frames stay loaned (and a revocation's reply
    waits, machine.kpt K3) while the wire may still read them;
  * a socket's sb_cc goes down by an mbuf's length when that mbuf is on the wire.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Protocol, cast

from machine.ipc.peer import PeerPanic
from machine.kpt import KernelPageTable, copy_frames
from machine.net.dma import DMA_HOLD_S, Dma
from machine.net.kernel import KernelOps, PageFault
from machine.net.knobs import DEFAULT_BANDWIDTH_BPS, DEFAULT_LATENCY_US, RING, new_stats
from machine.net.kva import KvaArena
from machine.net.mbuf import Mbuf, MbufPool
from machine.net.socket import SocketTable
from machine.net.synch import WaitChannel
from machine.net.wire import Wire
from machine.params import PAGE_SHIFT
from machine.proto import WirePacket
from machine.proto.pmap import MAX_CHUNKS


class PhysMem(Protocol):
    """The machine's RAM, as the driver's DMA reads it (machine.ram.Ram)."""

    view: memoryview


class Sleeper(Protocol):
    """The clock the link's delays are taken on (machine.ipc.transport.Clock)."""

    async def sleep(self, seconds: float) -> None: ...


class Driver:
    """The transmit queue, the ring, the link and the pending frees."""

    def __init__(
        self,
        ops: KernelOps,
        ram: PhysMem | None,
        clock: Sleeper,
        deliver: Callable[[WirePacket], None],
        kva: KvaArena,
        pool: MbufPool,
        sockets: SocketTable,
        chan: WaitChannel,
        stats: dict[str, int] | None = None,
        note: Callable[..., None] | None = None,
        kpt: KernelPageTable | None = None,
    ) -> None:
        self.ops = ops
        self.ram = ram
        self.kpt = kpt  # the kernel's page table in shared memory (machine.kpt)
        self.clock = clock
        self.deliver = deliver  # puts a packet on the wire
        self.kva = kva
        self.pool = pool
        self.sockets = sockets
        self.chan = chan  # woken after every mbuf sent (its socket has room again)
        self.stats = stats if stats is not None else new_stats()
        #: The flight recorder's note (machine.ipc.recorder): each mbuf put on the wire,
        #: after the link's delay (the timer that changes state here).
        self.note: Callable[..., None] = note or (lambda what, **fields: None)
        self.bandwidth_bps = DEFAULT_BANDWIDTH_BPS
        self.latency_us = DEFAULT_LATENCY_US
        self.txq: asyncio.Queue[Mbuf] = asyncio.Queue()
        self.pendfree: asyncio.Queue[Mbuf] = asyncio.Queue()
        self.ring: asyncio.Queue[tuple[Mbuf, asyncio.Task[bytes] | None]] = asyncio.Queue(RING)
        self.passing = 0  # mbufs taken from txq by the ring pass, not yet in the ring
        self._xlating: asyncio.Task[None] | None = None  # the translation in flight
        self._xlate_wait: list[tuple[list[Mbuf], asyncio.Future[list[list[int] | PageFault]]]] = []
        self._unheld = asyncio.Event()
        self._unheld.set()
        #: The wire whose queues may hold a pinned DMA (machine.net.dma): used while
        #: `deliver` is its deliver (a test that captures packets gets bytes).
        self.wire: Wire | None = None
        self._pinned: collections.deque[Dma] = collections.deque()  # the hold timer's
        self._pins = asyncio.Event()  # set while _pinned is not empty

    # -- what sosend and net.link use ------------------------------------------------

    def enqueue(self, mb: Mbuf) -> None:
        """Queue an mbuf for transmission (after every mbuf queued before it)."""
        self.txq.put_nowait(mb)

    def loanfree_later(self, mb: Mbuf) -> None:
        """Hand a loaned mbuf to sopendfree (sent, or never to be sent)."""
        self.pendfree.put_nowait(mb)

    @property
    def held(self) -> bool:
        return not self._unheld.is_set()

    def hold(self, held: bool) -> None:
        """Stop (True) or restart (False) the ring and the transmit loop."""
        if held:
            self._unheld.clear()
        else:
            self._unheld.set()

    @property
    def queued(self) -> int:
        """mbufs queued or in the ring, not yet on the wire."""
        return self.txq.qsize() + self.passing + self.ring.qsize()

    # -- the loops ---------------------------------------------------------------------

    async def run(self) -> PeerPanic:
        """Run the ring, transmit and sopendfree until a peer panics. => that PeerPanic,
        once every loop and DMA has ended; any other failure is raised."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._fill_ring(tg))
                tg.create_task(self._transmit())
                tg.create_task(self._sopendfree())
                tg.create_task(self._dma_timer())
        except BaseExceptionGroup as eg:
            panics, rest = eg.split(PeerPanic)
            if rest is not None:
                raise _first(rest) from eg
            assert panics is not None
            first = _first(panics)
            assert isinstance(first, PeerPanic)
            return first
        raise AssertionError("the driver's loops never end")  # pragma: no cover

    async def _fill_ring(self, tg: asyncio.TaskGroup) -> None:
        """Take mbufs in order and, once the link is up, start the loaned ones' DMA up to
        RING mbufs ahead: one pass takes what the ring has room for (at least one, which
        then waits for a slot) and translates them in one pmap.kextract."""
        while True:
            batch = [await self.txq.get()]
            self.passing = 1
            await self._unheld.wait()
            room = min(RING - self.ring.qsize(), MAX_CHUNKS)
            while len(batch) < room and not self.txq.empty():
                batch.append(self.txq.get_nowait())
                self.passing += 1
            loaned = [mb for mb in batch if mb.loaned] if self.kpt is None else []
            xlate = self._translate(tg, loaned) if loaned else None
            for mb in batch:
                dma = None
                if xlate is not None and mb.loaned:
                    dma = tg.create_task(self.dma_read(mb, xlate, loaned.index(mb)))
                await self.ring.put((mb, dma))
                self.passing -= 1

    def _translate(
        self, tg: asyncio.TaskGroup, mbs: list[Mbuf]
    ) -> asyncio.Future[list[list[int] | PageFault]]:
        """The translation of one ring pass's loaned mbufs: sent at once in one
        pmap.kextract if none is in flight, else with every pass that comes meanwhile
        in the next one (one translation in flight at a time). => its answers."""
        fut: asyncio.Future[list[list[int] | PageFault]] = (
            asyncio.get_running_loop().create_future()
        )
        self._xlate_wait.append((mbs, fut))
        if self._xlating is None or self._xlating.done():
            self._xlating = tg.create_task(self._translator())
        return fut

    async def _translator(self) -> None:
        """Send the waiting passes' translations, as many as one message holds, until
        none waits."""
        while self._xlate_wait:
            take: list[tuple[list[Mbuf], asyncio.Future[list[list[int] | PageFault]]]] = []
            n = 0
            while self._xlate_wait and (not take or n + len(self._xlate_wait[0][0]) <= MAX_CHUNKS):
                take.append(self._xlate_wait.pop(0))
                n += len(take[-1][0])
            try:
                got = await self._kextract([mb for mbs, _ in take for mb in mbs])
            except BaseException as e:
                for _, fut in take:
                    if not fut.done():
                        fut.set_exception(e)
                        fut.exception()  # the DMA raises it; the task group sees it there
                raise
            for mbs, fut in take:
                fut.set_result(got[: len(mbs)])
                got = got[len(mbs) :]

    async def _kextract(self, mbs: list[Mbuf]) -> list[list[int] | PageFault]:
        """One pmap.kextract for loaned mbufs (those of one or more ring passes)."""
        self.stats["driver_msgs"] += 1
        return await self.ops.kextract([(mb.kva, mb.npages) for mb in mbs])

    async def _transmit(self) -> None:
        """Put ring entries on the wire in order, at the link's speed."""
        while True:
            mb, dma = await self.ring.get()
            await self._unheld.wait()
            delay = self.latency_us / 1e6
            if self.bandwidth_bps:
                delay += mb.length * 8 / self.bandwidth_bps
            if delay:
                await self.clock.sleep(delay)
            pinned = None
            if dma is not None:
                payload = await dma
            elif not mb.loaned:
                payload = mb.data
            elif (pinned := self._pin(mb)) is None:  # a table walk at the DMA's start
                payload = await self.dma_read(mb)
            so = mb.sock
            self.note(
                "tx",
                session=so.session,
                sock=so.id,
                seq=mb.seq,
                off=mb.off,
                n=mb.length,
                kva=mb.kva if mb.loaned else 0,
                pgoff=mb.pgoff,
                pfns=list(mb.pfns),
                delay_us=round(delay * 1e6),
            )
            self.deliver(
                WirePacket(
                    session=so.session,
                    asid=so.asid,
                    sock=so.id,
                    seq=mb.seq,
                    off=mb.off,
                    total=mb.total,
                    # a pinned DMA's views of RAM travel as the payload (net's side only)
                    payload=payload if pinned is None else cast(bytes, pinned),
                    loaned=mb.loaned,
                )
            )
            self.stats["tx_packets"] += 1
            self.stats["tx_bytes"] += mb.length
            so.cc -= mb.length
            if pinned is not None:
                pinned.release()  # the driver's hold: done now if no queue took it
                if pinned.pinned:
                    self._pinned.append(pinned)
                    self._pins.set()
            elif mb.loaned:
                self.loanfree_later(mb)  # soloanfree: defer, never free here
            else:
                self.pool.mclfree(mb.length, so.session)
                self.sockets.sofree(so)
            self.chan.wakeup()

    def _pin(self, mb: Mbuf) -> Dma | None:
        """The DMA straight from RAM (machine.net.dma): views of the mbuf's frames, read
        from the table, its reader inside them until the DMA completes. => None when
        the packet goes elsewhere than the wire, or the table cannot pin it (a fault, a
        range it does not cover): then `dma_read` copies (and faults)."""
        kpt, wire, ram = self.kpt, self.wire, self.ram
        if kpt is None or wire is None or ram is None or self.deliver != wire.deliver:
            return None
        vpn = mb.kva >> PAGE_SHIFT
        got = kpt.pin(ram.view, vpn, mb.npages, mb.pgoff, mb.length)
        if not isinstance(got, tuple):
            return None
        views, gens = got
        self.stats["kpt_reads"] += 1
        self.stats["dma_pins"] += 1
        self.stats["dma_frames"] += len(views)

        def done() -> None:
            if not kpt.leave(vpn, gens):
                self.stats["dma_revoked"] += 1  # its reply waited for this reader (K3)
            self.loanfree_later(mb)

        return Dma(views, mb.length, done, asyncio.get_running_loop().time())

    async def _dma_timer(self) -> None:
        """Copy out of RAM the pinned packets no receiver has taken within DMA_HOLD_S."""
        loop = asyncio.get_running_loop()
        while True:
            await self._pins.wait()
            while self._pinned:
                d = self._pinned[0]
                if not d.pinned:
                    self._pinned.popleft()
                    continue
                left = d.since + DMA_HOLD_S - loop.time()
                if left > 0:
                    await self.clock.sleep(left)
                    continue
                self._pinned.popleft()
                self.stats["dma_timeouts"] += 1
                d.materialize()
            self._pins.clear()

    async def dma_read(
        self, mb: Mbuf, xlate: asyncio.Future[list[list[int] | PageFault]] | None = None, i: int = 0
    ) -> bytes:
        """Read the mbuf's bytes from RAM at the pfns its KVA translates to: read from the
        kernel's page table (machine.kpt), else entry i of the ring pass's translation or
        its own pmap.kextract; a missing translation is a kernel page fault, resolved by
        uvm (or uvm panics), and the mbuf is translated again."""
        assert self.ram is not None, "net has no RAM to read loaned mbufs from"
        view, kpt, npages = self.ram.view, self.kpt, mb.npages
        got = (await xlate)[i] if xlate is not None else None
        while True:
            if got is None:
                if kpt is not None:
                    data = kpt.read(view, mb.kva >> PAGE_SHIFT, npages, mb.pgoff, mb.length)
                    if isinstance(data, bytes):
                        self.stats["kpt_reads"] += 1
                        return data
                # not in the table, or no translation there: the mmu says (and why)
                (got,) = await self._kextract([mb])
            if isinstance(got, list):
                return copy_frames(view, got, mb.pgoff, mb.length)
            f = got
            self.stats["kfaults"] += 1
            idx = (f.va - mb.kva) >> PAGE_SHIFT
            so = mb.sock
            evidence = (
                f"net driver reading mbuf of socket {so.id} send {mb.seq} "
                f"(bytes {mb.off}..{mb.off + mb.length} of {mb.total}, process {so.asid}) "
                f"found {f.detail}"
            )
            pfn = mb.pfns[idx] if 0 <= idx < npages else -1
            self.stats["driver_msgs"] += 1
            await self.ops.kfault(f.va, evidence=evidence, pfn=pfn)
            got = None

    async def _sopendfree(self) -> None:
        """sodoloanfree, off the transmit path: every mbuf waiting is freed in one pass."""
        while True:
            batch = [await self.pendfree.get()]
            while not self.pendfree.empty() and len(batch) < MAX_CHUNKS:
                batch.append(self.pendfree.get_nowait())
            await self.loanfree(batch)

    async def loanfree(self, mbs: list[Mbuf]) -> None:
        """Free loaned mbufs: kremove their KVA, unloan their pages (one message each,
        per mbuf in order), then release each one's KVA."""
        self.stats["driver_msgs"] += 2
        await self.ops.kremove([(mb.kva, mb.npages) for mb in mbs])
        await self.ops.unloan([(mb.pfns, mb.kva, mb.npages) for mb in mbs])
        for mb in mbs:
            self.kva.free(mb.kva, mb.npages)
            self.stats["pendfree"] += 1
            mb.sock.loans -= 1
            self.sockets.sofree(mb.sock)


def _first(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf exception of a (nested) exception group."""
    exc: BaseException = eg
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
