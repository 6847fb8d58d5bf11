"""Truncation racing a loan: a file page lent to the kernel (a send in flight: uvm_loan
and a read-only kenter at K, as sosend does) is truncated away, under bug1999, thorpe and
modern (machine.uvm.setsize's doc says why each does what it does).

  modern   (unmanaged kenter): the truncation revokes the user mappings only; the page
           leaves the file as an orphan its loan keeps; the kernel reads the bytes of
           send time; the unloan frees it; every frame is accounted for.
  bug1999, thorpe (1999, managed kenter, PPP_WIRED=remove): NetBSD 1.4's uvn_flush
           (PGO_FREE) calls pmap_page_protect(NONE) on the page, which on such a port
           also removes the kernel's loan mapping (its pv entry); the driver's read then
           faults in loan KVA that has no object: the kernel panics (section 1.3's chain,
           by truncation; Thorpe's diff only guards the page daemon). The 1999 behaviour.
A truncation into a loaned last page (its tail zeroed) gives the file a copy first
(uvm_loanbreak), so the loan keeps its bytes: the same outcome by profile.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from machine.kassert import KernelPanic
from machine.mmu.pmap import Fault, Mmu
from machine.params import KERNEL_MIN, PAGE_SIZE
from machine.profile import load_profile
from machine.proto import UserError
from machine.proto.types import Prot
from machine.uvm import files, loan, mmap
from machine.uvm.audit import audit
from machine.uvm.page import NIL, PQ
from machine.uvm.state import Uvm
from tests.unit.uvm.localpmap import make_uvm
from tests.unit.uvm.test_core import OWN, RW, cpu_load, cpu_store

K = KERNEL_MIN + (1 << 40)
P = PAGE_SIZE
PROFILES = ["modern", "bug1999", "thorpe"]


def boot(tmp: Path, profile: str) -> tuple[Uvm, Mmu]:
    return make_uvm(96, tmp, knobs=dict(load_profile(profile).knobs))


async def setup(uvm: Uvm, mmu: Mmu, npages: int) -> tuple[int, int, int]:
    """A shared writable mapping of an npages file, every page written."""
    assert uvm.disk is not None
    (uvm.disk / "f.bin").write_bytes(bytes(npages * P))
    h, _ = files.open(uvm, OWN, "f.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, npages * P, RW, handle=h, shared=True)
    for i in range(npages):
        await cpu_store(uvm, mmu, p, va + i * P, bytes([0x61 + i]) * P)
    return h, p, va


async def lend(uvm: Uvm, mmu: Mmu, p: int, va: int) -> list[int]:
    pfns = await loan.loan_to_kernel(uvm, p, OWN, va, 1)
    mmu.kenter(K, pfns, Prot.READ)
    return pfns


async def audited(uvm: Uvm, profile: str, pfn: int) -> None:
    """The auditor is clean, but for the fault bug1999 and thorpe inject on purpose
    (QUEUE_INVARIANT=violated: the loaned, wired page left on the active queue)."""
    injected = [] if profile == "modern" else [f"I1: wired page {pfn} on a paging queue"]
    assert await audit(uvm) == injected


def give_back(uvm: Uvm, mmu: Mmu, pfns: list[int]) -> None:
    mmu.kremove(K, len(pfns))
    loan.unloan(uvm, pfns, K, len(pfns))


async def the_1999_panic(uvm: Uvm, mmu: Mmu, pfn: int) -> None:
    """The driver reads the mbuf at K: the kernel mapping is gone, the fault panics."""
    f = mmu.load(0, K, P)
    assert isinstance(f, Fault)
    with pytest.raises(KernelPanic, match=r"trap: kernel page fault .* case 0") as ei:
        await loan.kernel_fault(uvm, K, int(Prot.READ), f.reason, pfn)
    return ei.value  # type: ignore[return-value]


@pytest.mark.parametrize("profile", PROFILES)
async def test_a_loaned_page_truncated_away(tmp_path: Path, profile: str) -> None:
    uvm, mmu = boot(tmp_path, profile)
    h, p, va = await setup(uvm, mmu, 2)
    obj = uvm.handles[(OWN, h)]
    sent = bytes([0x62]) * P  # page 1 when the send returned
    [pfn] = await lend(uvm, mmu, p, va + P)
    await audited(uvm, profile, pfn)  # before the truncation: the profile's own state
    free0 = uvm.pages.free.count
    await files.ftruncate(uvm, OWN, h, P)
    assert 1 not in obj.pages
    assert mmu.extract(p, va + P) is None
    assert uvm.pages.uobject[pfn] == NIL  # disowned: an orphan its loan keeps
    assert uvm.pages.loan_count[pfn] == 1
    await audited(uvm, profile, pfn)
    if profile != "modern":
        # 1999 on a managed-kenter port: the revocation took the kernel's mapping too.
        assert "truncation" in mmu.krevoked[K >> 12].why
        await the_1999_panic(uvm, mmu, pfn)
        return
    assert mmu.load(0, K, P) == sent  # the bytes of send time
    assert uvm.pages.pqflags[pfn] == 0  # modern dequeues the orphan
    give_back(uvm, mmu, [pfn])
    assert uvm.pages.pqflags[pfn] == PQ.FREE  # its last loan freed it
    assert uvm.pages.free.count == free0 + 1
    assert await audit(uvm) == []
    await mmap.exit(uvm, p, OWN)
    await files.close(uvm, OWN, h)
    assert uvm.pages.free.count + len(uvm.pages.kernel_owned) == uvm.pages.npages
    assert await audit(uvm) == []


@pytest.mark.parametrize("profile", PROFILES)
async def test_a_loaned_last_page_whose_tail_is_zeroed(tmp_path: Path, profile: str) -> None:
    uvm, mmu = boot(tmp_path, profile)
    h, p, va = await setup(uvm, mmu, 1)
    obj = uvm.handles[(OWN, h)]
    sent = bytes([0x61]) * P
    [pfn] = await lend(uvm, mmu, p, va)
    await files.ftruncate(uvm, OWN, h, 100)
    new = obj.pages[0]
    assert new != pfn  # the file got a copy (uvm_loanbreak); the old page is the loan's
    assert uvm.stats.truncloanbreaks == 1
    assert uvm.pages.loan_count[pfn] == 1
    assert uvm.pages.uobject[pfn] == NIL
    assert bytes(uvm.ram.frame(new)[:P]) == sent[:100] + bytes(P - 100)
    await audited(uvm, profile, pfn)
    if profile != "modern":
        # the loan break's revocation names its breaker (a 1999 port's kernel mapping went)
        assert "loan break: ftruncate" in mmu.krevoked[K >> 12].why
        await the_1999_panic(uvm, mmu, pfn)
        return
    assert mmu.load(0, K, P) == sent  # the loan's bytes are untouched by the zeroing
    assert await cpu_load(uvm, mmu, p, va, P) == sent[:100] + bytes(P - 100)
    give_back(uvm, mmu, [pfn])
    assert uvm.pages.pqflags[pfn] == PQ.FREE
    await files.msync(uvm, p, OWN, va, P)
    assert uvm.disk is not None
    assert (uvm.disk / "f.bin").read_bytes() == sent[:100]
    assert await audit(uvm) == []


async def test_silvers_panics_at_the_revocation_of_the_loaned_wired_page(
    tmp_path: Path,
) -> None:
    """silvers (1999 loans wire, PPP_WIRED=panic): pmap_page_protect of a wired page is
    ill-defined and panics, truncation or not."""
    uvm, mmu = boot(tmp_path, "silvers")
    h, p, va = await setup(uvm, mmu, 2)
    await lend(uvm, mmu, p, va + P)
    with pytest.raises(KernelPanic, match=r"pmap_page_protect: page .* is wired.*truncation"):
        await files.ftruncate(uvm, OWN, h, P)


@pytest.mark.parametrize("profile", PROFILES)
async def test_a_loan_waiting_on_a_busy_page_while_the_file_shrinks_is_efault(
    tmp_path: Path, profile: str
) -> None:
    """The loan (uvm_loanuobj) sleeps on a BUSY page; the truncation moves the end and
    waits for the same page; once it is unbusied the loan looks again, finds the end
    (EFAULT: sosend then copies, and the copy's fault is SIGBUS -> EFAULT for the send)
    and the truncation frees the page. Nothing is loaned, nothing leaks."""
    uvm, mmu = boot(tmp_path, profile)
    h, p, va = await setup(uvm, mmu, 2)
    obj = uvm.handles[(OWN, h)]
    pfn = obj.pages[1]
    uvm.busy(pfn)
    lent = asyncio.create_task(loan.loan_to_kernel(uvm, p, OWN, va + P, 1))
    trunc = asyncio.create_task(files.ftruncate(uvm, OWN, h, P))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not lent.done()
    assert not trunc.done()
    uvm.unbusy(pfn)
    await trunc
    with pytest.raises(UserError) as ei:
        await lent
    assert ei.value.errno == "EFAULT"
    assert uvm.pages.pqflags[pfn] == PQ.FREE
    assert uvm.pages.npages - uvm.pages.loan_count.count(0) == 0
    assert await audit(uvm) == []
