"""The driver over the kernel's page table in shared memory (machine.kpt): no message per
ring pass, a cleared entry faults with the mmu's evidence, and a revocation that lands
while a DMA is copying never lets the old frame's bytes reach the wire."""

from __future__ import annotations

from machine.kpt import KernelPageTable
from machine.net.core import Net
from machine.net.knobs import SOCK_LOAN_CHUNK
from machine.params import PAGE_SHIFT, PAGE_SIZE
from machine.testing import poll_for
from tests.unit.net.fakes import ASID, OWNER, VA0, FakeKernel, driving, make_net, user_bytes

K64 = SOCK_LOAN_CHUNK


def _net() -> tuple[Net, FakeKernel, KernelPageTable]:
    kpt = KernelPageTable.anonymous()
    net, k = make_net(kpt=kpt)
    return net, k, kpt


async def test_loaned_sends_reach_the_wire_with_no_translation_message() -> None:
    net, k, kpt = _net()
    so = await net.socreate(OWNER, ASID, 1 << 24)
    n = 4 * K64 + 300
    await net.sosend.send(so, ASID, VA0 + 123, n, OWNER)
    async with driving(net) as (wire, _):
        await poll_for(lambda: sum(len(p.payload) for p in wire) == n, 2, 0.001, "the send")
        await poll_for(lambda: not k.loans, 2, 0.001, "the loans to return")
    assert b"".join(p.payload for p in wire) == user_bytes(VA0 + 123, n)
    assert k.ops("kextracts") == []  # every DMA read the table
    assert net.stats["kpt_reads"] == 4  # the 300-byte tail was copied
    assert net.stats["driver_msgs"] == 2  # one kremove, one unloan (sopendfree, batched)
    assert not kpt.written or all(kpt.lookup(v) is None for v in kpt.written)


async def test_a_cleared_entry_faults_with_the_mmus_evidence_and_reads_again() -> None:
    net, k, _kpt = _net()
    so = await net.socreate(OWNER, ASID, 1 << 24)
    net.driver.hold(True)
    await net.sosend.send(so, ASID, VA0, 2 * PAGE_SIZE, OWNER)
    (mb,) = list(net.driver.txq._queue)  # type: ignore[attr-defined]
    k.kclear((mb.kva >> PAGE_SHIFT) + 1)  # revoked (pmap_page_protect NONE) while queued
    async with driving(net) as (wire, _):
        net.driver.hold(False)
        await poll_for(lambda: bool(wire), 2, 0.001, "the packet")
    assert wire[0].payload == user_bytes(VA0, 2 * PAGE_SIZE)  # resolved (re-entered)
    (kf,) = k.ops("kfault")
    assert kf[0] == mb.kva + PAGE_SIZE
    assert "revoked by pdaemon" in kf[3]  # the evidence, from the mmu's kextract
    assert kf[4] == mb.pfns[1]
    assert k.ops("kextract") == [(mb.kva, 2)]  # one message: only for the fault


class _RevokingView:
    """RAM whose first read of frame `pfn` lands a revocation mid-copy: the mmu (another
    CPU) clears the entry, the shootdown is skipped as a reordered reader would be, and
    uvm reuses the frame (other bytes), then maps the page again with the old bytes back."""

    def __init__(self, view: memoryview, k: FakeKernel, vpn: int, pfn: int) -> None:
        self.view, self.k, self.vpn, self.pfn = view, k, vpn, pfn
        self.fired = False

    def __getitem__(self, s: slice) -> memoryview:
        base = self.pfn << PAGE_SHIFT
        if not self.fired and base <= s.start < base + PAGE_SIZE:
            self.fired = True
            self.k.kclear(self.vpn)
            good = bytes(self.view[base : base + PAGE_SIZE])
            self.view[base : base + PAGE_SIZE] = b"\xee" * PAGE_SIZE
            out = self.view[s.start : s.stop].tobytes()  # what the DMA copied
            self.view[base : base + PAGE_SIZE] = good
            return memoryview(out)
        return self.view[s]


async def test_a_revocation_while_a_dma_is_reading_never_reaches_the_wire() -> None:
    net, k, kpt = _net()
    so = await net.socreate(OWNER, ASID, 1 << 24)
    net.driver.hold(True)
    await net.sosend.send(so, ASID, VA0, 3 * PAGE_SIZE, OWNER)
    (mb,) = list(net.driver.txq._queue)  # type: ignore[attr-defined]
    ram = net.driver.ram
    assert ram is not None
    spy = _RevokingView(ram.view, k, (mb.kva >> PAGE_SHIFT) + 1, mb.pfns[1])
    ram.view = spy  # type: ignore[assignment]
    async with driving(net) as (wire, _):
        net.driver.hold(False)
        await poll_for(lambda: bool(wire), 2, 0.001, "the packet")
    assert spy.fired
    assert wire[0].payload == user_bytes(VA0, 3 * PAGE_SIZE)  # never the 0xee bytes
    assert kpt.retries >= 1  # the copy that overlapped the revocation was discarded
    (kf,) = k.ops("kfault")  # the read again found the cleared entry: a kernel fault
    assert kf[0] == mb.kva + PAGE_SIZE


async def test_a_range_the_table_does_not_cover_is_translated_by_message() -> None:
    net, k, kpt = _net()
    kpt.read = lambda *a: None  # type: ignore[method-assign]  # beyond the table's window
    so = await net.socreate(OWNER, ASID, 1 << 24)
    await net.sosend.send(so, ASID, VA0, 2 * K64, OWNER)
    async with driving(net) as (wire, _):
        await poll_for(lambda: len(wire) == 2, 2, 0.001, "the packets")
    assert b"".join(p.payload for p in wire) == user_bytes(VA0, 2 * K64)
    assert len(k.ops("kextract")) == 2  # one message per mbuf, no fault
    assert k.ops("kfault") == []
    assert net.stats["kpt_reads"] == 0
