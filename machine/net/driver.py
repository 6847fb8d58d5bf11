"""The driver: the NIC's descriptor ring, transmit at the link's speed, and sopendfree.

Three loops, run together in one task group (`Driver.run`):
  * the ring: take mbufs from the transmit queue in order and, once the link is up
    (`hold` stops it), start each loaned mbuf's DMA up to RING mbufs ahead: its KVA is
    translated (pmap.kextract, one request per mbuf) and the bytes read straight from
    RAM; a missing translation is a kernel page fault sent to uvm (uvm.kfault, with the
    mmu's evidence and the pfn loaned there), which uvm resolves or panics on;
  * transmit: put the ring's mbufs on the wire in order, at the link's speed
    (latency, bandwidth); a copied mbuf's storage goes back to the pool at once, a
    loaned one is deferred to sopendfree (soloanfree: never freed on this path);
  * sopendfree (sodoloanfree): every loaned mbuf waiting is freed concurrently; per
    mbuf, pmap.kremove, then uvm.unloan, then its loan KVA is released.
A peer that panics stops the driver: `run` returns the PeerPanic once every loop has
ended (the mbufs still queued are lost with the machine).

Invariants:
  * mbufs reach the wire in the order they were queued (one queue, one ring, one
    transmit loop), so the mbufs of one socket in send order;
  * at most RING mbufs are in the ring; none is transmitted while the link is held;
  * every loaned mbuf queued is eventually freed by sopendfree exactly once: kremoved,
    unloaned, its KVA released, its socket's `loans` taken down;
  * a socket's sb_cc goes down by an mbuf's length when that mbuf is on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from machine.ipc.peer import PeerPanic
from machine.net.kernel import KernelOps, PageFault
from machine.net.knobs import DEFAULT_BANDWIDTH_BPS, DEFAULT_LATENCY_US, RING, new_stats
from machine.net.kva import KvaArena
from machine.net.mbuf import Mbuf, MbufPool
from machine.net.socket import SocketTable
from machine.net.synch import WaitChannel
from machine.params import PAGE_SHIFT, PAGE_SIZE
from machine.proto import WirePacket


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
    ) -> None:
        self.ops = ops
        self.ram = ram
        self.clock = clock
        self.deliver = deliver  # puts a packet on the wire
        self.kva = kva
        self.pool = pool
        self.sockets = sockets
        self.chan = chan  # woken after every mbuf sent (its socket has room again)
        self.stats = stats if stats is not None else new_stats()
        self.bandwidth_bps = DEFAULT_BANDWIDTH_BPS
        self.latency_us = DEFAULT_LATENCY_US
        self.txq: asyncio.Queue[Mbuf] = asyncio.Queue()
        self.pendfree: asyncio.Queue[Mbuf] = asyncio.Queue()
        self.ring: asyncio.Queue[tuple[Mbuf, asyncio.Task[bytes] | None]] = asyncio.Queue(RING)
        self._unheld = asyncio.Event()
        self._unheld.set()

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
        return self.txq.qsize() + self.ring.qsize()

    # -- the loops ---------------------------------------------------------------------

    async def run(self) -> PeerPanic:
        """Run the ring, transmit and sopendfree until a peer panics. => that PeerPanic,
        once every loop and DMA has ended; any other failure is raised."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._fill_ring(tg))
                tg.create_task(self._transmit())
                tg.create_task(self._sopendfree())
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
        """Take mbufs in order and, once the link is up, start each loaned one's DMA
        (translate, read RAM) up to RING mbufs ahead."""
        while True:
            mb = await self.txq.get()
            await self._unheld.wait()
            dma = tg.create_task(self.dma_read(mb)) if mb.loaned else None
            await self.ring.put((mb, dma))

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
            payload = await dma if dma is not None else mb.data
            so = mb.sock
            self.deliver(
                WirePacket(
                    session=so.session,
                    asid=so.asid,
                    sock=so.id,
                    seq=mb.seq,
                    off=mb.off,
                    total=mb.total,
                    payload=payload,
                    loaned=mb.loaned,
                )
            )
            self.stats["tx_packets"] += 1
            self.stats["tx_bytes"] += mb.length
            so.cc -= mb.length
            if mb.loaned:
                self.loanfree_later(mb)  # soloanfree: defer, never free here
            else:
                self.pool.mclfree(mb.length)
                self.sockets.sofree(so)
            self.chan.wakeup()

    async def dma_read(self, mb: Mbuf) -> bytes:
        """Translate the mbuf's KVA (one request) and read its bytes from RAM; a missing
        translation is a kernel page fault, resolved by uvm (or uvm panics)."""
        assert self.ram is not None, "net has no RAM to read loaned mbufs from"
        npages = mb.npages
        while True:
            try:
                pfns = await self.ops.kextract(mb.kva, npages)
                break
            except PageFault as f:
                self.stats["kfaults"] += 1
                idx = (f.va - mb.kva) >> PAGE_SHIFT
                so = mb.sock
                evidence = (
                    f"net driver reading mbuf of socket {so.id} send {mb.seq} "
                    f"(bytes {mb.off}..{mb.off + mb.length} of {mb.total}, process {so.asid}) "
                    f"found {f.detail}"
                )
                pfn = mb.pfns[idx] if 0 <= idx < npages else -1
                await self.ops.kfault(f.va, evidence=evidence, pfn=pfn)
        view = self.ram.view
        out = bytearray()
        for pfn in pfns:
            base = pfn << PAGE_SHIFT
            out += view[base : base + PAGE_SIZE]
        return bytes(out[mb.pgoff : mb.pgoff + mb.length])

    async def _sopendfree(self) -> None:
        """sodoloanfree, off the transmit path: every mbuf waiting is freed concurrently."""
        while True:
            batch = [await self.pendfree.get()]
            while not self.pendfree.empty():
                batch.append(self.pendfree.get_nowait())
            async with asyncio.TaskGroup() as tg:
                for mb in batch:
                    tg.create_task(self.loanfree(mb))

    async def loanfree(self, mb: Mbuf) -> None:
        """Free one loaned mbuf: kremove its KVA, unloan its pages, release the KVA."""
        npages = mb.npages
        await self.ops.kremove(mb.kva, npages)
        await self.ops.unloan(mb.pfns, mb.kva, npages)
        self.kva.free(mb.kva, npages)
        self.stats["pendfree"] += 1
        mb.sock.loans -= 1
        self.sockets.sofree(mb.sock)


def _first(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf exception of a (nested) exception group."""
    exc: BaseException = eg
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
