"""Page loaning (uvm_loan.c): loans of user pages to the kernel, their end, and kernel faults.

    loan_to_kernel(asid, owner, va, npages)    uvm_loan(..., UVM_LOAN_TOPAGE)
        (loan_chunks, unloan_chunks: several chunks per message, each its own, in order;
        the write-protects of one turn of the loop share one message, awaited at the end)
        Per page, anon layer first (A->K), else the object's page (O->K), else
        for untouched anonymous memory a zero page (zero->K). The page is made
        resident first (swap-in, pgo_get) and held BUSY while the loan is set
        up, and unbusied once its loan is counted. All or nothing: on any
        failure the pages already loaned are returned. The first loan of a page
        (loan_count 0 -> 1) write-protects every managed mapping of it
        (pmap_page_protect(READ), one batch) before uvm.loan answers, so what
        the kernel later reads is what memory held when the send returned.
    unloan(pfns, kva, npages)                  uvm_unloan(..., UVM_LOAN_TOPAGE)
        loan_count--; an orphan is freed with its last loan (by the daemon's unbusy
        when its owner released it while the daemon held it BUSY).
    kernel_fault(va, access, evidence)         trap() -> uvm_fault(kernel_map)
    loan_to_anons / unloan_anons               uvm_loan(..., UVM_LOAN_TOANON), A->A, O->A
    adopt(pfn)                                 an orphan's borrowing anon takes it (5.4)

What a kernel loan does to the page, by the profile's ERA (section 4.2):
    1999    loan_count++ and uvm_pagewire (a loan is a wiring: off the queues).
            QUEUE_INVARIANT=violated injects the thread's state: the loaned,
            wired page is left on the active queue. unloan unwires; 1999's
            uvm_pageunwire inserts at the active tail unchecked, so an injected page
            is inserted twice: detected and reported (dmesg, pqdoubleins), not merged.
    2002    loan_count++ and uvm_pagedequeue (KASSERT wire_count == 0).
    modern  loan_count++, the page stays queued; a wired page is refused (EBUSY)
            and sosend falls back to copying. The daemon may reclaim a loaned
            page: its owner's pgo_put disowns it and the loan keeps the data.
Zero loans: 1999/2002 a fresh zeroed ownerless page per loan (wired in 1999); modern
one shared zero page (uvm_loanzero_object's), loan_count per loan, never queued or freed.

Invariants: loan_count > 0 => every managed mapping of the page is read-only (I5); an
ownerless allocated page has loan_count > 0 (I3). Kernel mappings of loaned pages are
entered read-only by the borrower (net), never written. cf. NetBSD uvm_loan.c, uvm_fault.c.
"""

from __future__ import annotations

from machine.kassert import kassert, panic
from machine.params import PAGE_SHIFT, PAGE_SIZE
from machine.proto import Errno, UserError
from machine.proto.types import Prot
from machine.uvm.anon import Anon
from machine.uvm.map import MapEntry, check_range
from machine.uvm.object import UvmObject
from machine.uvm.page import KERNEL, NIL, PQ, PageFlag
from machine.uvm.resident import anon_get, obj_get
from machine.uvm.state import Uvm, VmSpace


async def loan_to_kernel(uvm: Uvm, asid: int, owner: int, va: int, npages: int) -> list[int]:
    """uvm_loan(TOPAGE) of [va, va + npages pages). => one pfn per page (see module doc)."""
    sp = uvm.space(asid, owner)
    check_range(va, npages * PAGE_SIZE)
    async with sp.lock:
        loaned, first = await loan_range(uvm, sp, va, npages)
        try:
            if first:  # the first loan write-protects every managed mapping, one batch
                await uvm.pmap.page_protect(first, int(Prot.READ), FIRST_LOAN)
        except BaseException:
            unloan_pages(uvm, loaned)
            raise
    uvm.stats.loans += len(loaned)
    return loaned


FIRST_LOAN = "first loan to the kernel"
_READ = int(Prot.READ)


async def loan_range(uvm: Uvm, sp: VmSpace, va: int, npages: int) -> tuple[list[int], list[int]]:
    """Loan each page of the range (sp locked by the caller); all or nothing. => (the
    pfns, those whose loan was their first: loan_count 0 -> 1, not the zero page).

    A page an anon holds resident and not BUSY is loaned in the loop itself (what
    anon_get's busy, loan_page and unbusy do to it, without an await: nothing else
    runs meanwhile); any other page goes through _loan_one. The map entry is looked
    up again after every await (the slow path)."""
    loaned: list[int] = []
    first: list[int] = []
    pages, rules = uvm.pages, uvm.rules
    flags, loan_count, wire_count = pages.flags, pages.loan_count, pages.wire_count
    pqflags = pages.pqflags
    modern = not rules.loan_dequeues and not rules.loan_wires  # counted, stays queued
    refuses = rules.loan_refuses_wired
    waiters = uvm._waiters
    lookup = sp.map.lookup
    e: MapEntry | None = None
    anons: dict[int, Anon] | None = None
    start = 0
    try:
        for i in range(npages):
            a = va + (i << PAGE_SHIFT)
            if e is None or not e.start <= a < e.end:
                e = lookup(a)
                if e is not None and not int(e.prot) & _READ:
                    e = None  # _loan_one raises EFAULT
                anons = e.amap.anon if e is not None and e.amap is not None else None
                start = e.start - (e.aoff << PAGE_SHIFT) if e is not None else 0
            anon = anons.get((a - start) >> PAGE_SHIFT) if anons is not None else None
            pfn = anon.page if anon is not None else NIL
            if pfn == NIL or flags[pfn] & _BUSY or (refuses and wire_count[pfn]):
                pfn = await _loan_one(uvm, sp, a)  # not resident, BUSY, refused, no anon
                e = None
            elif modern:  # loan_page, modern: counted, queued if it was not
                loan_count[pfn] += 1
                if not pqflags[pfn]:
                    pages.activate(pfn)
                flags[pfn] &= _UNBUSY_KEEPS  # what busy + unbusy leave behind
                if waiters:
                    ev = waiters.pop(pfn, None)
                    if ev is not None:
                        ev.set()
            else:
                uvm.busy(pfn)
                try:
                    loan_page(uvm, pfn)
                finally:
                    uvm.unbusy(pfn)
            loaned.append(pfn)
            if loan_count[pfn] == 1 and pfn != uvm.zero_pfn:
                first.append(pfn)
    except BaseException:
        unloan_pages(uvm, loaned)
        raise
    return loaned, first


_BUSY = PageFlag.BUSY
_RELEASED = PageFlag.RELEASED
_UNBUSY_KEEPS = 0xFFFF & ~(PageFlag.BUSY | PageFlag.WANTED | PageFlag.FAKE)


async def _loan_one(uvm: Uvm, sp: VmSpace, va: int, count: bool = True) -> int:
    """Loan the page at va: made resident, loan counted, unbusied. => pfn.
    count False: only made resident, left BUSY (loans to anons count their own)."""
    while True:
        e = sp.map.lookup(va)
        if e is None or not int(e.prot) & _READ:  # (an IntFlag & costs ~0.5 us a page)
            raise UserError(Errno.EFAULT, f"no readable mapping at {va:#x} to loan")
        slot = e.slot(va)
        anon = e.amap.lookup(slot) if e.amap is not None else None
        if anon is not None:  # A->K (uvm_loananon)
            got = await anon_get(uvm, anon)
        elif e.obj is not None:  # O->K (uvm_loanuobj)
            pgoff = e.pgoff(va)
            if pgoff >= e.obj.npages:
                raise UserError(Errno.EFAULT, f"{va:#x} is beyond the end of the mapped object")
            got = await obj_get(uvm, e.obj, pgoff)
        else:  # untouched anonymous memory: zero->K (uvm_loanzero)
            return await _loan_zero(uvm)
        if got is None:
            continue  # it was BUSY: look it up again
        pfn, from_store = got
        if from_store:
            uvm.pages.activate(pfn)
        if not count:
            return pfn
        try:
            loan_page(uvm, pfn)
        finally:
            # Unbusy at once, as uvm_loanuobj does: the loan now keeps the page, and a
            # range that maps one page twice must not wait for itself.
            uvm.unbusy(pfn)
        return pfn


def loan_page(uvm: Uvm, pfn: int) -> None:
    """Count one kernel loan of a resident, owned page, by the era's rules (module doc)."""
    pages, rules = uvm.pages, uvm.rules
    if rules.loan_refuses_wired and pages.wire_count[pfn]:
        uvm.stats.loanrefused += 1
        raise UserError(Errno.EBUSY, f"page {pfn} is wired: this era does not loan it")
    if rules.loan_dequeues:
        kassert(pages.wire_count[pfn] == 0, "uvm_loanuobj: loaning wired page %d", pfn)
        pages.loan_count[pfn] += 1
        pages.dequeue(pfn)
        return
    queued = pages.pqflags[pfn]
    pages.loan_count[pfn] += 1
    if not rules.loan_wires:
        if not queued:
            pages.activate(pfn)  # uvm_pageactivate: a loaned page stays pageable
        return
    pages.wire(pfn)  # a loan to the kernel is a wiring
    if rules.inject_queue_violation and queued and not pages.pqflags[pfn]:
        pages.inject_active(pfn)  # the injected fault: wired yet active
        uvm.stats.injected += 1
        uvm.dmesg.append(
            f"inject: QUEUE_INVARIANT=violated: loaned page {pfn} left on the active queue "
            f"(wire_count {pages.wire_count[pfn]})"
        )


async def _loan_zero(uvm: Uvm) -> int:
    pages = uvm.pages
    uvm.stats.loanzero += 1
    if uvm.rules.zero_loans_share_one_page:
        if uvm.zero_pfn == NIL:
            pfn = await uvm.alloc_page_wait(who=KERNEL)
            uvm.ram.zero(pfn)
            pages.flags[pfn] = PageFlag.CLEAN
            uvm.zero_pfn = pfn
            pages.kernel_owned.add(pfn)
        pages.loan_count[uvm.zero_pfn] += 1
        return uvm.zero_pfn
    pfn = await uvm.alloc_page_wait(who=KERNEL)  # ownerless, BUSY
    uvm.ram.zero(pfn)
    pages.flags[pfn] &= ~PageFlag.FAKE
    pages.loan_count[pfn] = 1
    if uvm.rules.loan_wires:
        pages.wire(pfn)
    uvm.unbusy(pfn)
    return pfn


async def loan_to_anons(uvm: Uvm, asid: int, owner: int, va: int, npages: int) -> list[Anon]:
    """uvm_loan(TOANON): lend [va, va + npages pages) as anons (section 4.2).

    A->A: the anon itself, an_ref++ and write-protected (COW sharing; modern
    refuses a wired page). O->A (not in the modern era, where it is compiled
    out): the page's borrowing anon, or a new anon that borrows the object's
    page (uanon set, PG_ANON clear, loan_count++). zero->A: a new anon with a
    zeroed page. The caller owns one reference of each anon (unloan_anons).
    """
    sp = uvm.space(asid, owner)
    check_range(va, npages * PAGE_SIZE)
    pages = uvm.pages
    anons: list[Anon] = []
    protect: list[int] = []
    async with sp.lock:
        try:
            for i in range(npages):
                a = va + i * PAGE_SIZE
                e = sp.map.lookup(a)
                if e is None or not e.prot & Prot.READ:
                    raise UserError(Errno.EFAULT, f"no readable mapping at {a:#x} to loan")
                anon = e.amap.lookup(e.slot(a)) if e.amap is not None else None
                if anon is None and not uvm.rules.loans_obj_to_anon:
                    raise UserError(
                        Errno.EINVAL, "this era loans only anons to anons (O->A is gone)"
                    )
                if anon is not None or e.obj is not None:
                    pfn = await _loan_one(uvm, sp, a, count=False)
                    anon = e.amap.lookup(e.slot(a)) if e.amap is not None else None
                    if anon is not None:  # A->A
                        if uvm.rules.loan_refuses_wired and pages.wire_count[pfn]:
                            uvm.unbusy(pfn)
                            uvm.stats.loanrefused += 1
                            raise UserError(Errno.EBUSY, f"page {pfn} is wired: not loaned")
                        protect.append(pfn)
                    elif pages.uanon[pfn] != NIL:  # O->A, already lent to an anon
                        anon = uvm.anons[pages.uanon[pfn]]
                        pages.activate(pfn)
                    else:  # O->A: a new anon borrows the object's page
                        anon = uvm.new_anon()
                        anon.ref = 0
                        anon.page = pfn
                        pages.uanon[pfn] = anon.id
                        pages.loan_count[pfn] += 1
                        if pages.loan_count[pfn] == 1:
                            protect.append(pfn)
                        pages.activate(pfn)
                    uvm.unbusy(pfn)
                else:  # zero->A
                    anon = uvm.new_anon()
                    anon.ref = 0
                    pfn = await uvm.alloc_page_wait(anon=anon)
                    uvm.ram.zero(pfn)
                    pages.flags[pfn] &= ~(PageFlag.FAKE | PageFlag.CLEAN)
                    pages.activate(pfn)
                    uvm.unbusy(pfn)
                anon.ref += 1
                uvm.anon_loans[anon.id] += 1
                anons.append(anon)
            if protect:
                await uvm.pmap.page_protect(protect, int(Prot.READ), "loan to an anon")
        except BaseException:
            unloan_anons(uvm, anons)
            raise
    uvm.stats.loans += len(anons)
    return anons


def unloan_anons(uvm: Uvm, anons: list[Anon]) -> None:
    """uvm_unloan(TOANON) / uvm_unloananon: drop the borrower's reference of each anon."""
    for anon in anons:
        kassert(uvm.anon_loans[anon.id] > 0, "uvm_unloananon: anon %d isn't loaned", anon.id)
        uvm.anon_loans[anon.id] -= 1
        if not uvm.anon_loans[anon.id]:
            del uvm.anon_loans[anon.id]
        uvm.anon_unref(anon)
        uvm.stats.unloans += 1


# -- loan breaks (section 5.2): a write fault on a loaned page ------------------


async def break_anon_loan(uvm: Uvm, anon: Anon, old: int, asid: int, va: int) -> int:
    """uvm_loanbreak_anon: the anon gets a copy; the loaned page becomes an orphan.

    => old is BUSY on entry; returns the new page, BUSY, dirty."""
    pages = uvm.pages
    try:
        npfn = await uvm.alloc_page_wait(anon=anon)
    except UserError:
        anon.page = old
        uvm.unbusy(old)
        raise
    uvm.ram.frame(npfn)[:] = uvm.ram.frame(old)
    pages.flags[npfn] &= ~(PageFlag.CLEAN | PageFlag.FAKE)
    await uvm.revoke([old], f"loan break: write fault by asid {asid} at {va:#x}")
    if pages.flags[old] & PageFlag.ANON:
        uvm.disown(old)  # the anon lent it (A->K): the kernel's loans keep it
    else:  # the anon borrowed it (O->A): drop that loan; the object keeps its page
        pages.loan_count[old] -= 1
        pages.uanon[old] = NIL
    uvm.unbusy(old)  # frees it if nobody holds it any more (its loans ended meanwhile)
    uvm.stats.loanbreaks += 1
    return npfn


async def break_obj_loan(uvm: Uvm, obj: UvmObject, pgoff: int, old: int, why: str) -> int:
    """uvm_loanbreak: the object gets a copy in place of its loaned page (uvm_pagereplace).

    => old is BUSY on entry; returns the new page, BUSY, dirty, owned by obj; `why` (a
       write fault, a truncation) is the revocation's reason."""
    pages = uvm.pages
    try:
        npfn = await uvm.alloc_page_wait()
    except UserError:
        uvm.unbusy(old)
        raise
    uvm.ram.frame(npfn)[:] = uvm.ram.frame(old)
    await uvm.revoke([old], f"loan break: {why}")
    uvm.disown(old)
    pages.uobject[npfn] = obj.id
    pages.offset[npfn] = pgoff
    pages.flags[npfn] = (pages.flags[npfn] | PageFlag.TABLED) & ~(PageFlag.CLEAN | PageFlag.FAKE)
    obj.pages[pgoff] = npfn
    uvm.unbusy(old)  # frees it if nobody holds it any more (its loans ended meanwhile)
    uvm.stats.loanbreaks += 1
    return npfn


def adopt(uvm: Uvm, pfn: int) -> bool:
    """uvm_anon_lockloanpg / the page daemon: an orphan its borrowing anon now owns (5.4).

    => True if the page was adopted (PG_ANON set, the anon's loan dropped)."""
    pages = uvm.pages
    f = pages.flags[pfn]
    if f & (PageFlag.ANON | PageFlag.TABLED) or pages.uanon[pfn] == NIL:
        return False
    kassert(pages.loan_count[pfn] > 0, "uvm_anon_lockloanpg: unloaned page %d", pfn)
    pages.flags[pfn] |= PageFlag.ANON
    pages.loan_count[pfn] -= 1
    uvm.stats.adoptions += 1
    if not pages.loan_count[pfn] and not pages.wire_count[pfn] and not pages.pqflags[pfn]:
        pages.activate(pfn)
    return True


def unloan_pages(uvm: Uvm, pfns: list[int]) -> None:
    """uvm_unloanpage of each page, in order."""
    pages, rules, stats = uvm.pages, uvm.rules, uvm.stats
    flags, loan_count, pqflags, uanon = pages.flags, pages.loan_count, pages.pqflags, pages.uanon
    wires, requeues, adopts = rules.loan_wires, rules.unloan_requeues, rules.unloan_adopts
    n = pages.npages
    for pfn in pfns:
        if not (0 <= pfn < n and loan_count[pfn] > 0):
            kassert(False, "uvm_unloanpage: page %d isn't loaned", pfn)
        loan_count[pfn] -= 1
        stats.unloans += 1
        if pfn == uvm.zero_pfn:
            continue  # the shared zero page is never freed
        if wires:
            _unwire_loaned(uvm, pfn)
        f = flags[pfn]
        owned = f & _OWNED
        borrowed = not f & _ANON and uanon[pfn] != NIL
        left = loan_count[pfn]
        if requeues and left == borrowed and not pqflags[pfn] and (owned or borrowed):
            # [cvs139]: the last kernel loan ended; a page an anon still borrows (or its
            # owner's) goes back on a paging queue, or it would never be paged out.
            pages.activate(pfn)
        if left:
            if not owned and borrowed and adopts:
                adopt(uvm, pfn)  # 2002+: uvm_unloanpage adopts for the borrowing anon
            continue
        if not owned:
            if f & _BUSY and f & _RELEASED:
                # released while the daemon held it BUSY: its unbusy frees it (NetBSD's anon
                # keeps it until uvm_anon_release); an unowned busy page otherwise panics
                stats.unloans_busy += 1
                continue
            kassert(not f & _BUSY, "uvm_unloanpage: page %d unowned but PG_BUSY!", pfn)
            uvm.free_page(pfn)


def unloan_page(uvm: Uvm, pfn: int) -> None:
    """uvm_unloanpage: one kernel loan of pfn ends."""
    unloan_pages(uvm, [pfn])


_ANON = PageFlag.ANON
_OWNED = PageFlag.ANON | PageFlag.TABLED


def _unwire_loaned(uvm: Uvm, pfn: int) -> None:
    """The unwiring of a loan that wired (1999 uvm_pageunwire): the last unwiring inserts
    at the active tail, unchecked; a page already queued is reported, not merged."""
    pages = uvm.pages
    kassert(pages.wire_count[pfn] > 0, "uvm_pageunwire: page %d not wired", pfn)
    if pages.wire_count[pfn] == 1 and pages.pqflags[pfn] in (PQ.ACTIVE, PQ.INACTIVE):
        where = "active" if pages.pqflags[pfn] == PQ.ACTIVE else "inactive"
        uvm.stats.pqdoubleins += 1
        uvm.dmesg.append(
            f"uvm_pageunwire: page {pfn} is already on the {where} queue: inserting it at the "
            "active tail again would corrupt the queue (double insertion; the page was "
            "wired while queued)"
        )
    pages.unwire(pfn)


def unloan(uvm: Uvm, pfns: list[int], kva: int, npages: int) -> None:
    """uvm_unloan(TOPAGE) for a chunk, plus the kernel_object pages a kernel fault put
    in its KVA range (LOAN_KVA=kernel_object)."""
    pages = uvm.pages
    n, loan_count = pages.npages, pages.loan_count
    for pfn in pfns:  # validate first: a bad list panics before anything changes
        if not (0 <= pfn < n and loan_count[pfn] > 0):
            kassert(False, "uvm_unloanpage: page %d isn't loaned", pfn)
    unloan_pages(uvm, pfns)
    if not uvm.kobj_pages:
        return
    base = kva >> PAGE_SHIFT
    for vpn in range(base, base + npages):
        zpfn = uvm.kobj_pages.pop(vpn, NIL)
        if zpfn != NIL:
            pages.loan_count[zpfn] = 0
            uvm.free_page(zpfn)


def unloan_chunks(uvm: Uvm, chunks: list[tuple[list[int], int, int]]) -> None:
    """uvm.unloan_chunks: unloan(pfns, kva, npages) per chunk, in order."""
    for pfns, kva, npages in chunks:
        unloan(uvm, pfns, kva, npages)


async def kernel_fault(uvm: Uvm, va: int, access: int, evidence: str, pfn: int = NIL) -> None:
    """A kernel-mode trap at loan KVA va (section 9): resolve it or panic with the chain."""
    uvm.stats.kfaults += 1
    call = f"uvm_fault(kernel_map, {va:#x}, 0, {Prot(access).letters()})"
    if uvm.rules.kernel_fault_zero_fills:
        # 1999 uvm_km_valloc: the range is backed by kernel_object, so the fault is
        # "satisfied" with a fresh zero page: the driver reads zeros (silent corruption).
        zpfn = await uvm.alloc_page_wait(who=KERNEL)
        uvm.ram.zero(zpfn)
        uvm.pages.flags[zpfn] &= ~PageFlag.FAKE
        uvm.pages.loan_count[zpfn] = 1  # held for the KVA's owner, freed by its unloan
        uvm.unbusy(zpfn)
        uvm.kobj_pages[va >> PAGE_SHIFT] = zpfn
        await uvm.pmap.kenter(va, [zpfn], int(Prot.READ | Prot.WRITE))
        uvm.stats.kfault_zero += 1
        uvm.dmesg.append(
            f"{call} -> 0: kernel_object zero-filled page {zpfn} in place of "
            f"{describe_page(uvm, pfn)} (valloc KVA) [{evidence}]"
        )
        return
    raise panic(
        "trap: kernel page fault at %#x: %s -> EFAULT: the loan KVA has no object "
        "(VA-only, case 0); the loaned %s; %s",
        va,
        call,
        describe_page(uvm, pfn),
        evidence or "no mmu evidence",
    )


def describe_page(uvm: Uvm, pfn: int) -> str:
    """A page's identity in the panic message's terms."""
    p = uvm.pages
    if not 0 <= pfn < p.npages:
        return f"page {pfn}"
    q = {PQ.FREE: "free", PQ.ACTIVE: "active", PQ.INACTIVE: "inactive"}.get(
        p.pqflags[pfn], "no queue"
    )
    obj = uvm.objects.get(p.uobject[pfn]) if p.uobject[pfn] != NIL else None
    if obj is not None:
        owner = f"object {obj.id} ({getattr(obj, 'name', '') or type(obj).__name__}) "
        owner += f"offset {int(p.offset[pfn]) << PAGE_SHIFT:#x}"
    elif p.flags[pfn] & PageFlag.ANON:
        owner = f"anon {p.uanon[pfn]}"
    else:
        owner = "no owner (orphan)"
    return (
        f"page {pfn} [{owner}, loan_count {p.loan_count[pfn]}, wire_count {p.wire_count[pfn]}, {q}]"
    )
