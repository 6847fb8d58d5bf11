"""Whole-send loans (machine.uvm.loanbatch with kvas): one uvm.loan_chunks loans the chunks
and enters them at their kernel VA before it answers; bad kvas loan nothing; a failed
kenter ends every loan."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from machine.ipc.peer import RemoteError
from machine.kpt import BASE_VPN, LOAN_KVA_BASE, LOAN_KVA_SLOT_PAGES
from machine.mmu.pmap import Fault
from machine.params import PAGE_SHIFT, PAGE_SIZE
from machine.proto import Errno, UserError
from machine.uvm import mmap
from machine.uvm.audit import audit
from machine.uvm.loanbatch import loan_chunks
from tests.unit.uvm.localpmap import make_uvm
from tests.unit.uvm.test_core import OWN, RW, cpu_store

SLOT = LOAN_KVA_SLOT_PAGES * PAGE_SIZE
_tasks: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None], name: str) -> object:
    t = asyncio.ensure_future(coro)
    _tasks.add(t)
    t.add_done_callback(_tasks.discard)
    return t


async def _setup(pages: int = 8) -> Any:
    uvm, mmu = make_uvm(64)
    mmu.kpt = uvm.ram.kpt  # the mmu writes the shared table, as the role does
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, pages * PAGE_SIZE, RW)
    await cpu_store(uvm, mmu, p, va, b"w" * (pages * PAGE_SIZE))
    return uvm, mmu, p, va


async def test_the_loaned_chunks_are_mapped_at_their_kva_when_the_answer_comes() -> None:
    uvm, mmu, p, va = await _setup()
    chunks = [(va, 3), (va + 3 * PAGE_SIZE, 2)]
    kvas = [LOAN_KVA_BASE, LOAN_KVA_BASE + SLOT]
    got = await loan_chunks(uvm, p, OWN, chunks, _spawn, kvas)
    assert got["errnos"] == [None, None]
    for kva, pfns in zip(kvas, got["pfns"], strict=True):
        assert mmu.kextract(kva, len(pfns)) == pfns  # in the kernel pmap ...
        assert [mmu.kpt.lookup((kva >> PAGE_SHIFT) + i) for i in range(len(pfns))] == pfns
    assert all(uvm.pages.loan_count[f] == 1 for pfns in got["pfns"] for f in pfns)
    assert mmu.check() == []
    assert await audit(uvm) == []


async def test_a_refused_chunk_is_entered_nowhere() -> None:
    uvm, mmu, p, va = await _setup()
    got = await loan_chunks(uvm, p, OWN, [(va, 2), (0x7000_0000, 1)], _spawn,
                            [LOAN_KVA_BASE, LOAN_KVA_BASE + SLOT])  # fmt: skip
    assert got["errnos"][0] is None
    assert got["errnos"][1] is Errno.EFAULT  # a hole: not mapped
    assert isinstance(mmu.kextract(LOAN_KVA_BASE + SLOT, 1), Fault)
    assert mmu.kpt.lookup(BASE_VPN + LOAN_KVA_SLOT_PAGES) is None


@pytest.mark.parametrize(
    "kvas",
    [[LOAN_KVA_BASE], [LOAN_KVA_BASE + 1, LOAN_KVA_BASE + SLOT], [0x1000, LOAN_KVA_BASE]],
    ids=["count", "unaligned", "user-va"],
)
async def test_bad_kvas_are_einval_and_loan_nothing(kvas: list[int]) -> None:
    uvm, mmu, p, va = await _setup()
    with pytest.raises(UserError) as e:
        await loan_chunks(uvm, p, OWN, [(va, 1), (va + PAGE_SIZE, 1)], _spawn, kvas)
    assert e.value.errno is Errno.EINVAL
    assert not any(uvm.pages.loan_count)
    assert mmu.pmaps[0].ptes == {}


async def test_a_failed_kenter_ends_every_loan_and_is_the_answer() -> None:
    uvm, _mmu, p, va = await _setup()

    async def refuse(chunks: list[tuple[int, list[int]]], prot: int) -> None:
        raise RemoteError(Errno.EINVAL, "pmap_kenter_pa: no")

    uvm.pmap.kenter_chunks = refuse  # type: ignore[method-assign]
    loans = uvm.stats.loans
    with pytest.raises(RemoteError):
        await loan_chunks(uvm, p, OWN, [(va, 2), (va + 2 * PAGE_SIZE, 2)], _spawn,
                          [LOAN_KVA_BASE, LOAN_KVA_BASE + SLOT])  # fmt: skip
    assert not any(uvm.pages.loan_count)  # every chunk unloaned
    assert uvm.stats.loans == loans
    assert await audit(uvm) == []


async def test_the_kenter_goes_out_behind_the_protects_before_their_answer() -> None:
    uvm, mmu, p, va = await _setup()
    order: list[str] = []
    gate = asyncio.Event()
    protect, kenter = uvm.pmap.page_protect, uvm.pmap.kenter_chunks

    async def slow_protect(pfns: list[int], prot: int, why: str = "") -> int:
        order.append("protect")
        n = await protect(pfns, prot, why)  # applied in order; the answer comes later
        await gate.wait()
        return n

    async def spy_kenter(chunks: list[tuple[int, list[int]]], prot: int) -> None:
        order.append("kenter")
        await kenter(chunks, prot)

    uvm.pmap.page_protect = slow_protect  # type: ignore[method-assign]
    uvm.pmap.kenter_chunks = spy_kenter  # type: ignore[method-assign]
    loan = asyncio.ensure_future(loan_chunks(uvm, p, OWN, [(va, 2)], _spawn, [LOAN_KVA_BASE]))
    for _ in range(20):
        await asyncio.sleep(0)
    assert order == ["protect", "kenter"]  # pipelined: no wait for the protect's answer
    assert not loan.done()  # ... but the answer waits for both
    gate.set()
    got = await asyncio.wait_for(loan, 2)
    assert mmu.kextract(LOAN_KVA_BASE, 2) == got["pfns"][0]


async def test_a_failed_protect_removes_what_was_entered_and_loans_nothing() -> None:
    uvm, mmu, p, va = await _setup()

    async def refuse(pfns: list[int], prot: int, why: str = "") -> int:
        raise RemoteError(Errno.EINVAL, "pmap_page_protect: no")

    uvm.pmap.page_protect = refuse  # type: ignore[method-assign]
    with pytest.raises(RemoteError):
        await loan_chunks(uvm, p, OWN, [(va, 2), (va + 2 * PAGE_SIZE, 2)], _spawn,
                          [LOAN_KVA_BASE, LOAN_KVA_BASE + SLOT])  # fmt: skip
    assert mmu.pmaps[0].ptes == {}  # the kenter that went out behind it was undone
    assert mmu.check() == []
    assert not any(uvm.pages.loan_count)
