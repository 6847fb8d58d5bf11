"""A loan is answered only after its write-protects are applied (machine.uvm.loanbatch,
invariant I5): when net has a loaned page's frame, the mmu already holds every managed
mapping of that page read-only, so no store can change bytes the wire has not taken.

Checked directly at net: the moment uvm.loan_chunks' reply arrives there, the mmu's
mappings of every loaned frame are read, on the seeded in-memory bus (deterministic),
over several seeds whose latencies would let a late protect arrive after the reply.
"""

from __future__ import annotations

from typing import Any

import pytest

from machine.ipc.inmemory import run_simulation
from machine.ipc.peer import RemoteError
from machine.mmu.service import MmuService
from machine.net.kernel import BusKernel
from machine.params import PAGE_SIZE
from machine.proto.types import Prot
from machine.testing import SimMachine

MIB = 1 << 20


async def _loaned_while_writable(seed: int, monkeypatch: Any) -> tuple[int, list[str]]:
    """A process stores 1 MiB, then sends it (loaned, chunk by chunk), three times.
    => (pages mapped writable when their loan was asked, the loaned frames net got
    while a writable mapping of them was still at the mmu)."""
    async with SimMachine.boot(seed=seed, latency_s=(0.0, 400e-6)) as sim:
        mmu = sim.service("mmu")
        assert isinstance(mmu, MmuService)
        writable = [0]
        late: list[str] = []
        loan = BusKernel.loan

        async def checked(
            self: BusKernel,
            asid: int,
            owner: int,
            chunks: list[tuple[int, int]],
            kvas: list[int],
        ) -> list[list[int] | RemoteError]:
            for va, npages in chunks:
                for i in range(npages):
                    pte = mmu.mmu.extract(asid, va + i * PAGE_SIZE)
                    writable[0] += bool(pte is not None and pte.prot & Prot.WRITE)
            got = await loan(self, asid, owner, chunks, kvas)
            for pfns in got:
                for pfn in pfns if isinstance(pfns, list) else []:
                    for a, va, prot, _wired, managed in mmu.mmu.mappings_of(pfn):
                        if managed and prot & int(Prot.WRITE):
                            late.append(f"frame {pfn} writable at asid {a} va {va:#x}")
            return got

        monkeypatch.setattr(BusKernel, "loan", checked)
        async with sim.attach() as m:
            p = await m.spawn()
            buf = await p.mmap(MIB)
            sock = await p.socket(sndbuf=4 * MIB)
            for round_ in range(3):
                await p.store(buf, bytes([round_]) * MIB)  # writable again: loans broken
                assert (await p.send(sock, buf, MIB)).loaned_pages > 0
            await p.exit()
        return writable[0], late


@pytest.mark.timeout(60)
def test_a_loan_is_answered_only_after_its_write_protects_reach_the_mmu(
    monkeypatch: Any,
) -> None:
    """Each chunk's first-loan pmap.page_protect(READ) is applied at the mmu before net
    has the chunk's frames: no loaned frame is ever seen still writable. Catches an
    answer sent before the protect is awaited (the protect would land after it)."""
    asked = 0
    for seed in range(4):
        with monkeypatch.context() as mp:
            writable, late = run_simulation(_loaned_while_writable(seed, mp))
        assert late == [], f"seed {seed}: {late[:5]}"
        asked += writable
    assert asked > 0  # the loans had mappings to write-protect
