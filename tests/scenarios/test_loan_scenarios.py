"""uvm-semantics.md section 14, the loan scenarios on a whole uvm + pmap in process, by era:
6 read fault on a loaned page, 7 anon COW with a loan, 8 anon loan break, 9 O->A and
adoption, 10/11 bad unloans, 24 zero loans, 25 modern refuses wired, 26 kenter discipline,
27 the 2002 re-queue fix; and the three revocation paths of section 1.3 at the pmap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from machine.kassert import KernelPanic
from machine.mmu.pmap import Fault, Mmu
from machine.params import KERNEL_MIN, PAGE_SIZE
from machine.proto import UserError
from machine.proto.types import EnterFlags, Prot
from machine.uvm import files, loan, mmap, wiring
from machine.uvm.audit import audit
from machine.uvm.page import NIL, PQ, PageFlag
from machine.uvm.state import Uvm
from tests.unit.uvm.localpmap import make_uvm
from tests.unit.uvm.test_core import OWN, RW, cpu_load, cpu_store

K = KERNEL_MIN + (1 << 40)
MODERN = {"ERA": "modern", "KENTER_MODE": "unmanaged", "PPP_WIRED": "remove"}
ERA1999 = {"ERA": "1999", "KENTER_MODE": "unmanaged", "PPP_WIRED": "remove"}
ERA2002 = {"ERA": "2002", "KENTER_MODE": "unmanaged", "PPP_WIRED": "remove"}


def boot(tmp: Path, knobs: dict[str, Any], nframes: int = 128) -> tuple[Uvm, Mmu]:
    return make_uvm(nframes, tmp, knobs=knobs)


async def anon_page(uvm: Uvm, mmu: Mmu, data: bytes = b"lent") -> tuple[int, int, int]:
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW)
    await cpu_store(uvm, mmu, p, va, data)
    return p, va, mmu.extract(p, va).pfn  # type: ignore[union-attr]


async def lend(uvm: Uvm, mmu: Mmu, p: int, va: int, n: int = 1) -> list[int]:
    """sosend's loan path: uvm_loan(TOPAGE) and kenter read-only at K."""
    pfns = await loan.loan_to_kernel(uvm, p, OWN, va, n)
    mmu.kenter(K, pfns, Prot.READ)
    return pfns


def kread(mmu: Mmu, n: int) -> bytes | Fault:
    return mmu.load(0, K, n)


def give_back(uvm: Uvm, mmu: Mmu, pfns: list[int]) -> None:
    """sodoloanfree: kremove, then uvm_unloan."""
    mmu.kremove(K, len(pfns))
    loan.unloan(uvm, pfns, K, len(pfns))


@pytest.mark.parametrize("knobs", [MODERN, ERA1999, ERA2002], ids=["modern", "1999", "2002"])
async def test_loan_to_kernel_by_era_write_protects_and_counts(
    tmp_path: Path, knobs: dict[str, Any]
) -> None:
    uvm, mmu = boot(tmp_path, knobs)
    p, va, pfn = await anon_page(uvm, mmu)
    [got] = await lend(uvm, mmu, p, va)
    pages = uvm.pages
    assert got == pfn
    assert pages.loan_count[pfn] == 1
    assert mmu.extract(p, va).prot == Prot.READ  # type: ignore[union-attr]  # I5
    if knobs["ERA"] == "1999":  # a loan is a wiring: off the queues
        assert (pages.wire_count[pfn], pages.pqflags[pfn]) == (1, 0)
    elif knobs["ERA"] == "2002":  # a loan dequeues
        assert (pages.wire_count[pfn], pages.pqflags[pfn]) == (0, 0)
    else:  # modern: stays queued, unwired
        assert (pages.wire_count[pfn], pages.pqflags[pfn]) == (0, PQ.ACTIVE)
    assert await audit(uvm) == []
    give_back(uvm, mmu, [pfn])
    assert pages.loan_count[pfn] == 0
    assert pages.wire_count[pfn] == 0
    assert pages.pqflags[pfn] == PQ.ACTIVE  # back on the active queue, once
    assert await audit(uvm) == []


async def test_6_read_fault_on_a_loaned_page_maps_it_read_only(tmp_path: Path) -> None:
    uvm, mmu = boot(tmp_path, MODERN)
    (tmp_path / "disk" / "f.bin").write_bytes(b"file" * 1024)
    h, _ = files.open(uvm, OWN, "f.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW, handle=h, shared=True)
    [pfn] = await lend(uvm, mmu, p, va)  # O->K, the page read in by the loan itself
    assert await cpu_load(uvm, mmu, p, va, 4) == b"file"
    pte = mmu.extract(p, va)
    assert pte is not None
    assert (pte.pfn, pte.prot) == (pfn, Prot.READ)  # no copy, read-only
    assert uvm.pages.loan_count[pfn] == 1
    assert uvm.stats.loanbreaks == 0
    give_back(uvm, mmu, [pfn])


async def test_7_anon_cow_with_a_shared_anon_leaves_the_loan_alone(tmp_path: Path) -> None:
    uvm, mmu = boot(tmp_path, MODERN)
    p, va, _pfn = await anon_page(uvm, mmu, b"both")
    [got] = await lend(uvm, mmu, p, va)
    child = await mmap.fork(uvm, p, OWN)  # an_ref = 2
    await cpu_store(uvm, mmu, p, va, b"mine")  # ordinary COW: a new anon for the parent
    assert uvm.stats.flt_acow == 1
    assert uvm.stats.loanbreaks == 0
    assert uvm.pages.loan_count[got] == 1  # the loaned page is the child's, still loaned
    assert await cpu_load(uvm, mmu, child, va, 4) == b"both"
    assert kread(mmu, 4) == b"both"
    assert await audit(uvm) == []
    give_back(uvm, mmu, [got])


@pytest.mark.parametrize("knobs", [MODERN, ERA1999], ids=["modern", "1999"])
async def test_8_write_to_a_loaned_anon_page_breaks_the_loan(
    tmp_path: Path, knobs: dict[str, Any]
) -> None:
    uvm, mmu = boot(tmp_path, knobs)
    p, va, old = await anon_page(uvm, mmu, b"sent")
    await lend(uvm, mmu, p, va)
    free0 = uvm.pages.free.count
    await cpu_store(uvm, mmu, p, va, b"next")
    new = mmu.extract(p, va).pfn  # type: ignore[union-attr]
    pages = uvm.pages
    assert new != old
    assert uvm.stats.loanbreaks == 1
    assert pages.flags[new] & PageFlag.ANON
    assert pages.pqflags[new] == PQ.ACTIVE
    # the old page: ownerless, alive for the kernel's loan (modern dequeues it)
    assert pages.uanon[old] == NIL
    assert not pages.flags[old] & PageFlag.ANON
    assert pages.loan_count[old] == 1
    if knobs["ERA"] == "modern":
        assert pages.pqflags[old] == 0
    assert kread(mmu, 4) == b"sent"  # unmanaged kenter: the kernel mapping survived
    assert await audit(uvm) == []
    give_back(uvm, mmu, [old])
    assert pages.pqflags[old] == PQ.FREE  # its last loan freed the orphan
    assert pages.free.count == free0
    assert await audit(uvm) == []


async def test_9_object_to_anon_loan_disown_and_adoption(tmp_path: Path) -> None:
    uvm, mmu = boot(tmp_path, ERA1999)
    (tmp_path / "disk" / "o.bin").write_bytes(b"objp" * 1024)
    h, _ = files.open(uvm, OWN, "o.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW, handle=h, shared=True)
    assert await cpu_load(uvm, mmu, p, va, 4) == b"objp"
    [a] = await loan.loan_to_anons(uvm, p, OWN, va, 1)
    obj = uvm.handles[(OWN, h)]
    pfn = obj.pages[0]
    pages = uvm.pages
    assert (pages.uobject[pfn], pages.uanon[pfn], pages.loan_count[pfn]) == (obj.id, a.id, 1)
    assert not pages.flags[pfn] & PageFlag.ANON  # I7: the anon only borrows it
    assert a.page == pfn
    assert await audit(uvm) == []
    # The object lets the page go (last close, after unmap): disowned, not freed.
    await mmap.munmap(uvm, p, OWN, va, PAGE_SIZE)
    await files.close(uvm, OWN, h)
    assert pages.uobject[pfn] == NIL
    assert not pages.flags[pfn] & PageFlag.CLEAN  # a future anon owner needs swap
    assert pages.uanon[pfn] == a.id
    assert await audit(uvm) == []
    assert loan.adopt(uvm, pfn)  # uvm_anon_lockloanpg / the page daemon
    assert pages.flags[pfn] & PageFlag.ANON
    assert pages.loan_count[pfn] == 0
    assert pages.pqflags[pfn] == PQ.ACTIVE  # pageable as an anon page now
    assert await audit(uvm) == []
    loan.unloan_anons(uvm, [a])
    assert pages.pqflags[pfn] == PQ.FREE
    assert await audit(uvm) == []


async def test_9b_modern_refuses_object_to_anon_loans(tmp_path: Path) -> None:
    uvm, _mmu = boot(tmp_path, MODERN)
    (tmp_path / "disk" / "o.bin").write_bytes(b"x" * PAGE_SIZE)
    h, _ = files.open(uvm, OWN, "o.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW, handle=h, shared=True)
    with pytest.raises(UserError) as ei:
        await loan.loan_to_anons(uvm, p, OWN, va, 1)
    assert ei.value.errno == "EINVAL"
    assert await audit(uvm) == []


async def test_anon_to_anon_loan_shares_the_anon_copy_on_write(tmp_path: Path) -> None:
    uvm, mmu = boot(tmp_path, MODERN)
    p, va, pfn = await anon_page(uvm, mmu, b"anon")
    [a] = await loan.loan_to_anons(uvm, p, OWN, va, 1)
    assert a.page == pfn
    assert a.ref == 2
    assert mmu.extract(p, va).prot == Prot.READ  # type: ignore[union-attr]
    assert await audit(uvm) == []
    await cpu_store(uvm, mmu, p, va, b"ours")  # COW: the borrower keeps the old bytes
    assert bytes(uvm.ram.frame(a.page)[:4]) == b"anon"
    loan.unloan_anons(uvm, [a])
    assert await audit(uvm) == []


async def test_10_unloan_of_a_page_that_is_not_loaned_panics(tmp_path: Path) -> None:
    uvm, mmu = boot(tmp_path, ERA1999)
    _, _, pfn = await anon_page(uvm, mmu)
    with pytest.raises(KernelPanic, match=f"uvm_unloanpage: page {pfn} isn't loaned"):
        loan.unloan(uvm, [pfn], K, 1)


async def test_11_unloan_of_an_ownerless_busy_page_panics(tmp_path: Path) -> None:
    uvm, mmu = boot(tmp_path, ERA1999)
    p, va, pfn = await anon_page(uvm, mmu)
    await lend(uvm, mmu, p, va)
    await mmap.exit(uvm, p, OWN)  # the owner frees it: an orphan
    uvm.busy(pfn)
    with pytest.raises(KernelPanic, match="unowned but PG_BUSY"):
        loan.unloan_page(uvm, pfn)


@pytest.mark.parametrize("knobs", [MODERN, ERA1999, ERA2002], ids=["modern", "1999", "2002"])
async def test_11b_last_unloan_of_a_page_released_while_busy_leaves_it_to_the_holder(
    tmp_path: Path, knobs: dict[str, Any]
) -> None:
    """Found by `uvm-machine explore` under modern (1 MiB, a hog, a loaned send then exit):
    the process exits while the page daemon holds a loaned anon page BUSY for pageout
    (uvm_anfree marks it PG_RELEASED), then net's last unloan comes first. NetBSD's anon
    keeps the page until uvm_anon_release, so the unloan must not free (or panic on) it:
    the daemon's unbusy frees it."""
    uvm, mmu = boot(tmp_path, knobs)
    p, va, pfn = await anon_page(uvm, mmu)
    pfns = await lend(uvm, mmu, p, va)
    uvm.busy(pfn)  # the page daemon claims it for pageout
    await mmap.exit(uvm, p, OWN)  # uvm_anfree: released while busy
    free_before = uvm.pages.free.count
    give_back(uvm, mmu, pfns)  # the driver is done: the last loan ends, no panic
    assert uvm.pages.free.count == free_before  # not freed under the daemon's feet
    uvm.unbusy(pfn)  # the daemon's pageout ends
    assert uvm.pages.free.count == free_before + 1
    assert await audit(uvm) == []


@pytest.mark.parametrize("knobs", [MODERN, ERA1999, ERA2002], ids=["modern", "1999", "2002"])
async def test_24_zero_fill_loans(tmp_path: Path, knobs: dict[str, Any]) -> None:
    uvm, mmu = boot(tmp_path, knobs)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, 16 * PAGE_SIZE, RW)  # never touched
    pfns = await lend(uvm, mmu, p, va, 16)
    pages = uvm.pages
    if knobs["ERA"] == "modern":  # one shared zero page, loan_count 16, never queued
        assert len(set(pfns)) == 1
        assert pages.loan_count[pfns[0]] == 16
        assert pages.pqflags[pfns[0]] == 0
    else:  # sixteen fresh zeroed ownerless pages, each loaned (and wired in 1999)
        assert len(set(pfns)) == 16
        wired = int(knobs["ERA"] == "1999")
        assert all(pages.loan_count[f] == 1 and pages.wire_count[f] == wired for f in pfns)
        assert all(pages.pqflags[f] == 0 for f in pfns)
    assert kread(mmu, 16 * PAGE_SIZE) == bytes(16 * PAGE_SIZE)
    assert await audit(uvm) == []
    give_back(uvm, mmu, pfns)
    assert await audit(uvm) == []


@pytest.mark.parametrize("knobs", [MODERN, ERA1999, ERA2002], ids=["modern", "1999", "2002"])
async def test_25_loaning_a_wired_page(tmp_path: Path, knobs: dict[str, Any]) -> None:
    uvm, mmu = boot(tmp_path, knobs)
    p, va, pfn = await anon_page(uvm, mmu)
    await wiring.mlock(uvm, p, OWN, va, PAGE_SIZE)
    prot = mmu.extract(p, va).prot  # type: ignore[union-attr]
    if knobs["ERA"] == "modern":
        with pytest.raises(UserError) as ei:
            await loan.loan_to_kernel(uvm, p, OWN, va, 1)
        assert ei.value.errno == "EBUSY"
        assert uvm.pages.loan_count[pfn] == 0
        assert mmu.extract(p, va).prot == prot  # type: ignore[union-attr]  # no change
    elif knobs["ERA"] == "2002":  # uvm_loanuobj KASSERTs wire_count == 0
        with pytest.raises(KernelPanic, match="loaning wired page"):
            await loan.loan_to_kernel(uvm, p, OWN, va, 1)
        return
    else:  # 1999 loans it: a second wiring, and the wired mapping is write-protected
        await loan.loan_to_kernel(uvm, p, OWN, va, 1)
        assert uvm.pages.wire_count[pfn] == 2
        loan.unloan(uvm, [pfn], K, 0)
    assert uvm.pages.wire_count[pfn] == 1
    assert await audit(uvm) == []


def test_26_kenter_discipline_at_the_pmap(tmp_path: Path) -> None:
    from machine.ram import Ram

    ram = Ram.anonymous(16 * PAGE_SIZE)
    mmu = Mmu(ram)  # unmanaged kenter
    mmu.create(1, OWN)
    mmu.enter(1, 0x1000, 3, RW, EnterFlags.NONE)
    mmu.kenter(K, [3], Prot.READ)
    assert mmu.page_protect([3], Prot.NONE, "uvm", "test") == 1  # only the user mapping
    assert mmu.extract(0, K) is not None  # K survives
    mmu.get_attrs([3], True, True)
    assert mmu.load(0, K, 4) == bytes(4)
    assert mmu.get_attrs([3], False, False) == [0]  # kernel accesses set no R/M bits
    # pmap_kremove of a managed (PG_PVLIST) mapping is a caller's bug on such a pmap
    mmu.pmaps[0].ptes[(K >> 12) + 1] = type(mmu.pmaps[0].ptes[K >> 12])(4, 1, True, True)
    mmu.pv.setdefault(4, set()).add((0, (K >> 12) + 1))
    with pytest.raises(KernelPanic, match="pmap_kremove: PG_PVLIST mapping"):
        mmu.kremove(K + PAGE_SIZE, 1)
    ram.close()


@pytest.mark.parametrize(
    ("ppp", "survives"), [("remove", False), ("skip", True)], ids=["remove", "skip"]
)
def test_managed_kenter_and_ppp_wired(ppp: str, survives: bool) -> None:
    """Section 1.3 steps 3-5 at the pmap: a managed kenter has a pv entry, so
    page_protect(NONE) finds it; PPP_WIRED decides what happens to the wired PTE."""
    from machine.ram import Ram

    ram = Ram.anonymous(16 * PAGE_SIZE)
    mmu = Mmu(ram, "managed", ppp)
    mmu.create(1, OWN)
    mmu.enter(1, 0x1000, 5, Prot.READ, EnterFlags.NONE)
    mmu.kenter(K, [5], Prot.READ)
    assert (0, K >> 12) in mmu.pv[5]
    mmu.page_protect([5], Prot.NONE, "pdaemon", "page daemon (scan1999): deactivate")
    assert mmu.extract(1, 0x1000) is None  # the user mapping always goes
    assert (mmu.extract(0, K) is not None) is survives
    if not survives:
        f = mmu.kextract(K, 1)
        assert isinstance(f, Fault)
        assert "revoked by pdaemon" in f.reason
        assert "deactivate" in f.reason
    assert mmu.check() == []
    mmu.kremove(K, 1)
    assert mmu.check() == []
    ram.close()


def test_ppp_wired_panic_on_a_wired_kernel_mapping() -> None:
    from machine.ram import Ram

    ram = Ram.anonymous(16 * PAGE_SIZE)
    mmu = Mmu(ram, "managed", "panic")
    mmu.kenter(K, [5], Prot.READ)
    with pytest.raises(KernelPanic, match="pmap_page_protect: wired mapping"):
        mmu.page_protect([5], Prot.NONE, "uvm", "loan break")
    ram.close()


async def test_27_2002_requeues_a_page_an_anon_still_borrows(tmp_path: Path) -> None:
    uvm, mmu = boot(tmp_path, ERA2002)
    (tmp_path / "disk" / "o.bin").write_bytes(b"q" * PAGE_SIZE)
    h, _ = files.open(uvm, OWN, "o.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW, handle=h, shared=True)
    [a] = await loan.loan_to_anons(uvm, p, OWN, va, 1)  # O->A
    [pfn] = await lend(uvm, mmu, p, va)  # and O->K: 2002 dequeues
    pages = uvm.pages
    assert pages.loan_count[pfn] == 2
    assert pages.pqflags[pfn] == 0
    give_back(uvm, mmu, [pfn])  # the last kernel loan ends; the anon still borrows
    assert pages.loan_count[pfn] == 1
    assert pages.pqflags[pfn] == PQ.ACTIVE  # [cvs139]: pageable again
    assert await audit(uvm) == []
    loan.unloan_anons(uvm, [a])
    assert await audit(uvm) == []


async def test_modern_daemon_reclaims_a_loaned_page_and_the_loan_keeps_the_data(
    tmp_path: Path,
) -> None:
    """Scenario 4: modern keeps the loaned page queued; pgo_put(FREE) disowns it; the
    kernel still reads the original bytes; V refaults from the file; unloan frees it."""
    from machine.uvm.pager import pageout_page

    uvm, mmu = boot(tmp_path, MODERN)
    (tmp_path / "disk" / "v.bin").write_bytes(b"orig" * 1024)
    h, _ = files.open(uvm, OWN, "v.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW, handle=h, shared=True)
    [pfn] = await lend(uvm, mmu, p, va)
    await pageout_page(uvm, pfn)  # the daemon's free of a clean inactive page
    pages = uvm.pages
    assert pages.uobject[pfn] == NIL
    assert pages.loan_count[pfn] == 1
    assert pages.pqflags[pfn] == 0
    assert kread(mmu, 4) == b"orig"
    assert await cpu_load(uvm, mmu, p, va, 4) == b"orig"  # read the file again
    assert mmu.extract(p, va).pfn != pfn  # type: ignore[union-attr]
    assert await audit(uvm) == []
    give_back(uvm, mmu, [pfn])
    assert pages.pqflags[pfn] == PQ.FREE
    assert await audit(uvm) == []


async def test_1999_loan_break_on_a_managed_kenter_port_revokes_the_kernel_mapping(
    tmp_path: Path,
) -> None:
    """Section 1.3 step 4b: the COW break's pmap_page_protect(NONE) removes (kernel, K)."""
    uvm, mmu = boot(tmp_path, {**ERA1999, "KENTER_MODE": "managed"})
    p, va, old = await anon_page(uvm, mmu, b"gone")
    await lend(uvm, mmu, p, va)
    await cpu_store(uvm, mmu, p, va, b"next")
    f = kread(mmu, 4)
    assert isinstance(f, Fault)
    assert "loan break" in mmu.krevoked[K >> 12].why
    with pytest.raises(KernelPanic, match=r"trap: kernel page fault .* case 0"):
        await loan.kernel_fault(uvm, K, int(Prot.READ), f.reason, old)


async def test_a_range_that_maps_one_page_twice_is_loaned_twice(tmp_path: Path) -> None:
    """Regression: the loan of a range in which one file page appears at two VAs must not
    wait for its own BUSY page (it hung the model test)."""
    uvm, mmu = boot(tmp_path, MODERN)
    (tmp_path / "disk" / "d.bin").write_bytes(b"twin" * 1024)
    h, _ = files.open(uvm, OWN, "d.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW, va=0x10000, fixed=True, handle=h, shared=True)
    await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW, va=0x11000, fixed=True, handle=h, shared=True)
    pfns = await lend(uvm, mmu, p, va, 2)
    assert pfns[0] == pfns[1]
    assert uvm.pages.loan_count[pfns[0]] == 2
    assert kread(mmu, 8) == b"twintwin"
    assert await audit(uvm) == []
    give_back(uvm, mmu, pfns)
    assert uvm.pages.loan_count[pfns[0]] == 0
    assert await audit(uvm) == []


async def test_27_without_the_requeue_fix_the_page_is_never_paged_out_and_the_auditor_says_so(
    tmp_path: Path,
) -> None:
    """REQUEUE_FIX=missing: 2002 before [cvs139]. The same steps as test_27 leave the page
    off every queue once the kernel's loan ends: nothing can page it out (I8)."""
    uvm, mmu = boot(tmp_path, {**ERA2002, "REQUEUE_FIX": "missing"})
    (tmp_path / "disk" / "o.bin").write_bytes(b"q" * PAGE_SIZE)
    h, _ = files.open(uvm, OWN, "o.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW, handle=h, shared=True)
    [a] = await loan.loan_to_anons(uvm, p, OWN, va, 1)  # O->A
    [pfn] = await lend(uvm, mmu, p, va)  # and O->K: 2002 dequeues
    assert await audit(uvm) == []  # off the queues while the kernel holds it: fine
    give_back(uvm, mmu, [pfn])
    assert uvm.pages.loan_count[pfn] == 1
    assert uvm.pages.pqflags[pfn] == 0  # stays off-queue: the leak [cvs139] fixed
    assert await audit(uvm) == [f"I8: page {pfn} is held but off every paging queue"]
    loan.unloan_anons(uvm, [a])


@pytest.mark.parametrize("knobs", [ERA1999, ERA2002], ids=["1999", "2002"])
async def test_an_orphan_an_anon_borrows_stays_queued_and_2002_unloan_adopts_it(
    tmp_path: Path, knobs: dict[str, Any]
) -> None:
    """O->A and O->K, then the object lets the page go: an orphan the anon still borrows.
    It stays on its queue (modern uvm_pagefree dequeues only without an anon borrower),
    and when the kernel's loan ends 2002's uvm_unloanpage hands it to the anon (4.3);
    1999 leaves that to the anon's next fault or the page daemon (5.4)."""
    uvm, _ = boot(tmp_path, knobs)
    (tmp_path / "disk" / "o.bin").write_bytes(b"objp" * 1024)
    h, _ = files.open(uvm, OWN, "o.bin", False, None)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW, handle=h, shared=True)
    [a] = await loan.loan_to_anons(uvm, p, OWN, va, 1)  # O->A: on the active queue
    pfn = a.page
    pages = uvm.pages
    await mmap.munmap(uvm, p, OWN, va, PAGE_SIZE)
    await files.close(uvm, OWN, h)  # the object lets it go: an orphan the anon borrows
    assert (pages.uobject[pfn], pages.uanon[pfn], pages.loan_count[pfn]) == (NIL, a.id, 1)
    assert pages.pqflags[pfn] == PQ.ACTIVE  # still where the page daemon can adopt it
    assert await audit(uvm) == []
    loan.loan_page(uvm, pfn)  # a kernel loan of the orphan (as a send through the anon)
    assert pages.loan_count[pfn] == 2
    loan.unloan(uvm, [pfn], K, 0)
    if knobs["ERA"] == "2002":
        assert pages.flags[pfn] & PageFlag.ANON  # adopted by uvm_unloanpage
        assert pages.loan_count[pfn] == 0
    else:
        assert not pages.flags[pfn] & PageFlag.ANON  # still borrowed, until 5.4
        assert pages.loan_count[pfn] == 1
    assert pages.pqflags[pfn] == PQ.ACTIVE
    assert await audit(uvm) == []
    loan.unloan_anons(uvm, [a])
    assert await audit(uvm) == []
