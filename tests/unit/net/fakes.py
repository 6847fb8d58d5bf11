"""A fake kernel for the net core's unit tests: uvm and the mmu as plain dicts, no bus.

One process (ASID, owned by session OWNER) whose page i at VA0 + i pages is frame
PFN0 + i of a small RAM; every byte of RAM holds a pattern that differs from page to
page and within a page, so a payload tells which bytes it came from. The fake records
every call (`calls`: (operation, arguments)) and keeps the state a real kernel would:
the kernel's mappings at loan KVA (`kmap`), the loan count of each frame (`loans`),
the frame holds of copies (`holds`). A batched call is recorded once as the message
("loans", "kextracts", "kremoves", "unloans") and then once per chunk or
range under the singular name, with that chunk's arguments.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from machine.ipc.peer import PeerPanic, RemoteError
from machine.kpt import KernelPageTable
from machine.limits import Limits
from machine.net.core import Net
from machine.net.kernel import PageFault
from machine.net.knobs import NetKnobs
from machine.params import PAGE_SHIFT, PAGE_SIZE
from machine.proto import Errno, WirePacket

ASID = 5
OWNER = 77
VA0 = 0x4000_0000
PFN0 = 16
RAM_PAGES = 512


def _image(npages: int) -> bytes:
    """RAM's bytes: byte x of frame p holds (7x + 13p) mod 256."""
    base = bytes(7 * x & 0xFF for x in range(PAGE_SIZE))
    return b"".join(
        base.translate(bytes((b + 13 * p) & 0xFF for b in range(256))) for p in range(npages)
    )


IMAGE = _image(RAM_PAGES)


class FakeRam:
    def __init__(self) -> None:
        self.view = memoryview(bytearray(IMAGE))


def user_bytes(va: int, n: int) -> bytes:
    """What the process's memory holds at [va, va + n)."""
    pa = (va - VA0) + (PFN0 << PAGE_SHIFT)
    return IMAGE[pa : pa + n]


class FakeClock:
    """Records the link's delays; while `gate` is set to an unset event, sleeps wait on it."""

    def __init__(self) -> None:
        self.slept: list[float] = []
        self.gate: asyncio.Event | None = None

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)


class FakeKernel:
    """KernelOps over dicts. Knobs: refuse (user VAs whose loan is refused), faulting
    (user page VAs without a mapping until a kfault), unresolvable (user page VAs whose
    kfault fails), kfault_resolves (a kernel fault re-enters the page, else uvm panics),
    gate (when set, loan and uhold wait for it), panic_on (operations that answer
    EPANIC), fail_kenter, slow (kvas whose kextract waits for an event)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.kmap: dict[int, int] = {}  # kernel vpn -> pfn
        self.kpt: KernelPageTable | None = None  # the mmu's shared table, when given
        self.loans: collections.Counter[int] = collections.Counter()
        self.refuse: set[int] = set()
        self.faulting: set[int] = set()
        self.unresolvable: set[int] = set()
        self.kfault_resolves = True
        self.gate: asyncio.Event | None = None
        self.panic_on: set[str] = set()
        self.fail_kenter = False
        self.slow: dict[int, asyncio.Event] = {}  # kva -> kextract there waits for it
        self.kremove_gate: asyncio.Event | None = None  # when set, kremove waits for it
        self.live_asids = {ASID: OWNER}
        self.live_sessions = {OWNER}
        self.holds: dict[int, list[int]] = {}  # frames held by uhold until urelease
        self.next_hold = 0

    def kput(self, vpn: int, pfn: int) -> None:
        """The mmu's kenter: the pmap and the shared table."""
        self.kmap[vpn] = pfn
        if self.kpt is not None:
            self.kpt.put(vpn, pfn)

    def kclear(self, vpn: int) -> bool:
        """The mmu's kremove or revocation. => a mapping was there."""
        if self.kpt is not None:
            self.kpt.clear(vpn)
        return self.kmap.pop(vpn, None) is not None

    def ops(self, name: str) -> list[Any]:
        return [args for op, args in self.calls if op == name]

    def _call(self, name: str, args: Any) -> None:
        self.calls.append((name, args))
        if name in self.panic_on:
            raise PeerPanic(Errno.EPANIC, f"uvm: panic in {name}")

    async def _wait(self) -> None:
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)

    @staticmethod
    def pfn_of(va: int) -> int:
        return PFN0 + ((va - VA0) >> PAGE_SHIFT)

    async def owners(self, asids: list[int], sessions: list[int]) -> tuple[list[int], list[bool]]:
        self._call("owners", (list(asids), list(sessions)))
        return [self.live_asids.get(a, 0) for a in asids], [
            s in self.live_sessions for s in sessions
        ]

    async def loan(
        self, asid: int, owner: int, chunks: list[tuple[int, int]], kvas: list[int]
    ) -> list[list[int] | RemoteError]:
        """One uvm.loan message ("loans"); each chunk is recorded as its own "loan", and each
        chunk loaned is entered at its KVA as uvm does (recorded as a "kenter")."""
        self.calls.append(("loans", [tuple(c) for c in chunks]))
        for va, npages in chunks:
            self._call("loan", (asid, owner, va, npages))
        await self._wait()
        out: list[list[int] | RemoteError] = []
        for va, npages in chunks:
            vas = [va + (i << PAGE_SHIFT) for i in range(npages)]
            if any(v in self.refuse for v in vas):
                out.append(RemoteError(Errno.EBUSY, "a wired page"))
                continue
            out.append([self.pfn_of(v) for v in vas])
        entered = [(kva, r) for kva, r in zip(kvas, out, strict=True) if isinstance(r, list)]
        for kva, pfns in entered:
            self._call("kenter", (kva, list(pfns)))
        if self.fail_kenter and entered:  # uvm unloans them all: the error is the answer
            raise RemoteError(Errno.EINVAL, "pmap_kenter_pa: bad va")
        for kva, pfns in entered:
            self.loans.update(pfns)
            for i, pfn in enumerate(pfns):
                self.kput((kva >> PAGE_SHIFT) + i, pfn)
        return out

    async def uhold(self, asid: int, owner: int, va: int, npages: int) -> tuple[int, list[int]]:
        self._call("uhold", (asid, owner, va, npages))
        await self._wait()
        for i in range(npages):
            page = va + (i << PAGE_SHIFT)
            if page in self.faulting:
                raise PageFault(page, "no mapping")
        pfns = [self.pfn_of(va + (i << PAGE_SHIFT)) for i in range(npages)]
        self.next_hold += 1
        self.holds[self.next_hold] = pfns
        return self.next_hold, pfns

    async def urelease(self, holds: list[int]) -> None:
        self._call("urelease", list(holds))
        for h in holds:
            del self.holds[h]

    async def kfault(
        self, va: int, *, asid: int = 0, owner: int = 0, evidence: str = "", pfn: int = -1
    ) -> None:
        self._call("kfault", (va, asid, owner, evidence, pfn))
        if asid:
            page = va & ~(PAGE_SIZE - 1)
            if page in self.unresolvable:
                raise RemoteError(Errno.EFAULT, f"segmentation fault at {va:#x}")
            self.faulting.discard(page)
            return
        if not self.kfault_resolves:
            raise PeerPanic(Errno.EPANIC, "trap: kernel page fault")
        self.kput(va >> PAGE_SHIFT, pfn)

    async def kextract(self, ranges: list[tuple[int, int]]) -> list[list[int] | PageFault]:
        """One pmap.kextract message ("kextracts"); each range is recorded as a "kextract"."""
        self.calls.append(("kextracts", list(ranges)))
        for r in ranges:
            self._call("kextract", tuple(r))
        for va, _ in ranges:
            if va in self.slow:
                await self.slow[va].wait()
        out: list[list[int] | PageFault] = []
        for va, npages in ranges:
            pfns: list[int] | PageFault = []
            for i in range(npages):
                pfn = self.kmap.get((va >> PAGE_SHIFT) + i)
                if pfn is None:
                    pfns = PageFault(va + (i << PAGE_SHIFT), "revoked by pdaemon")
                    break
                assert isinstance(pfns, list)
                pfns.append(pfn)
            out.append(pfns)
        return out

    async def kremove(self, ranges: list[tuple[int, int]]) -> int:
        self.calls.append(("kremoves", list(ranges)))
        for r in ranges:
            self._call("kremove", tuple(r))
        if self.kremove_gate is not None:
            await self.kremove_gate.wait()
        n = 0
        for va, npages in ranges:
            for i in range(npages):
                n += self.kclear((va >> PAGE_SHIFT) + i)
        return n

    async def unloan(self, chunks: list[tuple[list[int], int, int]]) -> None:
        self.calls.append(("unloans", list(chunks)))
        for pfns, kva, npages in chunks:
            self._call("unloan", (list(pfns), kva, npages))
            for pfn in pfns:
                assert self.loans[pfn] > 0, f"uvm_unloanpage: page {pfn} isn't loaned"
                self.loans[pfn] -= 1
                if not self.loans[pfn]:
                    del self.loans[pfn]


def make_net(
    kernel: FakeKernel | None = None,
    *,
    loan_thresh: int = 4096,
    limits: Limits | None = None,
    clock: FakeClock | None = None,
    kpt: KernelPageTable | None = None,
) -> tuple[Net, FakeKernel]:
    """=> a Net over a FakeKernel; with kpt, the kernel writes that table and the driver
    reads it (machine.kpt) instead of translating by message."""
    k = kernel or FakeKernel()
    k.kpt = kpt
    net = Net(
        k,
        knobs=NetKnobs(loan_thresh=loan_thresh),
        limits=limits or Limits(),
        ram=FakeRam(),
        clock=clock or FakeClock(),
        kpt=kpt,
    )
    return net, k


@contextlib.asynccontextmanager
async def driving(
    net: Net, capture: bool = True
) -> AsyncIterator[tuple[list[WirePacket], asyncio.Task[PeerPanic]]]:
    """Run net's driver for the block. => the packets it puts on the wire (taken here
    instead of net's own wire, unless not `capture`) and the driver's task."""
    wire: list[WirePacket] = []
    if capture:
        net.driver.deliver = wire.append
    task = asyncio.ensure_future(net.driver.run())
    try:
        yield wire, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
