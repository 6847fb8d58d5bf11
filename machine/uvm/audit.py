"""The invariant auditor: uvm's own invariants, and uvm's agreement with the mmu.

audit() returns the problems found (empty when everything holds). It runs for
the `uvm.audit` message (tests, stress runs, the kernel debugger) and after
every step of the model-based tests. What it checks:

  * VmPages.check(): I1 (wired => not on a paging queue), I2 (free pages have
    no owner, wiring or loan), I3 (allocated => owned or loaned), I8 (a held,
    unbusy, unwired page without a kernel loan is on a paging queue), Q1 (queue
    counts and flags); SwapDevice.check().
  * maps (M1-M5) and amaps (AM1: slots/back-pointer equation; AM2: ref and ppref equal
    the entries, of every space, that refer to the amap and their slot ranges, and no
    NEEDSCOPY entry refers to a shared one; AM3: no anon outside every range) of every
    space;
    E1: every map counts in the machine's entry pool, whose nentries is the
    sum of the spaces' entries (a fork's child is a space from its first entry);
    S1 of the pool's and the processes' fair shares (machine.share): the pool's
    share.total is nentries + reserved.
  * anons: A1 ref > 0; A3 ref == the amaps holding the anon + its loans to anons;
    A2 a resident anon's page is owned by it (uanon, PG_ANON) or borrowed from
    an object (uanon, PG_ANON clear, counted in loan_count: I7); a
    non-resident anon has a swap slot (its data is somewhere).
  * objects: O1 every page of an object is owned by it at that offset
    (uobject, offset, PG_TABLED); refs == entries + open handles. O3 a vnode
    object has no page at or beyond its file's end (pgoff >= the file's npages),
    but a BUSY one (being waited for) or while its size changes (sizelock held).
  * files: F1 each session's open-file count (limits.files) == its handles; F2
    every handle has its open mode in its vnode, and only handles do.
  * conservation (U2): every frame is free, or owned by exactly one anon or
    object, or an orphan kept alive by kernel loans (loan_count > 0), or the
    shared zero page; free + the rest == npages; swpgonly == the number of slots whose
    page is not resident.
  * the mmu's own check (pmap.check): pv lists match page tables (P1-P3).
  * uvm <-> mmu (U3): every mapping the mmu holds for a user space lies in an
    entry and points at the frame that entry resolves to (anon first, then
    object); its protection is within the entry's; no writable mapping of a
    page that is COW-shared (anon ref > 1, entry NEEDSCOPY, or an object page
    under a private entry); I5 no writable mapping of a loaned page; a wired
    mapping only in a wired entry.
  * wiring (machine.uvm.pageable): W1 every anon of a wired entry is resident and
    wired, every mapping in a wired entry is a wired mapping of a wired page; W2
    (eras whose loans neither wire nor take wired pages) every wired page no loan
    holds is one a wired entry resolves to; W3 a map with all_locked
    (mlockall(MCL_CURRENT | MCL_FUTURE)) has every entry but PROT_NONE ones wired.
    Cost: the wired entries' used slots and resident pages, and a scan of the frames
    only when the count of wired frames disagrees with the pages they resolve to.

For a dump (uvm's dump_state), not checks: strays() lists allocated frames with
no owner and no loan (I3's violations), held_frames() every frame neither free
nor kernel-owned, its vm_page in words (once every client is gone: the leak that
`uvm-machine explain` reads).
"""

from __future__ import annotations

from collections import Counter

from machine.proto.types import Prot
from machine.uvm.amap import Amap
from machine.uvm.object import VnodeObject
from machine.uvm.page import NIL, PQ, PageFlag, VmPages
from machine.uvm.state import Uvm


def _static(uvm: Uvm) -> list[str]:
    problems = uvm.pages.check()
    pages = uvm.pages
    if uvm.swap is not None:
        problems += uvm.swap.check()
    amaps: dict[int, Amap] = {}
    arefs: dict[int, Counter[tuple[int, int]]] = {}  # amap -> its entries' slot ranges
    obj_refs: Counter[int] = Counter(o.id for o in uvm.handles.values())
    nentries = 0
    for asid, sp in uvm.spaces.items():
        problems += [f"asid {asid}: {p}" for p in sp.map.check()]
        nentries += len(sp.map.entries)
        if sp.map.pool is not uvm.entry_pool:
            problems.append(f"E1: asid {asid}: map counts in another entry pool")
        for e in sp.map.entries:
            if e.amap is not None:
                amaps[id(e.amap)] = e.amap
                arefs.setdefault(id(e.amap), Counter())[e.aoff, e.npages] += 1
                if e.needs_copy and e.amap.shared:
                    problems.append(
                        f"AM2: asid {asid}: NEEDSCOPY entry at {e.start:#x} of a shared amap"
                    )
            if e.obj is not None:
                obj_refs[e.obj.id] += 1
    if Counter(o for o, _ in uvm.handles) != uvm.nfiles:
        problems.append("F1: the sessions' open file counts disagree with their handles")
    opens = {k for o in uvm.vnodes.values() for k in o.opens}
    if opens != set(uvm.handles):
        problems.append("F2: the vnodes' open modes disagree with the handles")
    if nentries != uvm.entry_pool.nentries:
        problems.append(f"E1: entry pool counts {uvm.entry_pool.nentries} != {nentries} entries")
    pool = uvm.entry_pool
    problems += pool.share.check() + uvm.procs.check()
    if pool.share.total != pool.nentries + pool.reserved:
        problems.append(f"S1: maxentries' shares hold {pool.share.total} != entries + reserved")
    holders: Counter[int] = Counter()
    for key, amap in amaps.items():
        problems += amap.check()
        ranges = amap.ppref if amap.ppref is not None else Counter({(0, amap.nslot): amap.ref})
        if arefs[key] != ranges:
            problems.append(
                f"AM2: amap of {amap.nslot} slots: ref {amap.ref}, ranges {dict(ranges)}, "
                f"but its entries refer to {dict(arefs[key])}"
            )
        for _, anon in amap.used():
            holders[anon.id] += 1
            if anon.id not in uvm.anons:
                problems.append(f"A1: amap holds freed anon {anon.id}")
    owned: dict[int, str] = {}

    def claim(pfn: int, who: str) -> None:
        if pfn in owned:
            problems.append(f"U2: frame {pfn} owned by {owned[pfn]} and {who}")
        owned[pfn] = who

    swap_only = 0
    for anon in uvm.anons.values():
        held = holders[anon.id] + uvm.anon_loans[anon.id]
        if anon.ref <= 0 or anon.ref != held:
            problems.append(
                f"A3: anon {anon.id} ref {anon.ref} but held by {holders[anon.id]} amaps "
                f"and {uvm.anon_loans[anon.id]} loans"
            )
        if anon.page != NIL:
            pg = anon.page
            if pages.flags[pg] & PageFlag.ANON:
                claim(pg, f"anon {anon.id}")
            elif not pages.loan_count[pg]:  # a borrower (O->A) is counted in loan_count
                problems.append(f"I7: anon {anon.id} borrows page {pg} without a loan")
            if pages.uanon[pg] != anon.id:
                problems.append(f"A2: page {pg} not owned or borrowed by anon {anon.id}")
        elif not anon.swslot:
            problems.append(f"A2: anon {anon.id} has neither a page nor a swap slot")
        else:
            swap_only += 1
    for obj in uvm.objects.values():
        if obj.refs != obj_refs[obj.id]:
            problems.append(f"O1: object {obj.id} refs {obj.refs} != {obj_refs[obj.id]} users")
        for pgoff, pfn in obj.pages.items():
            claim(pfn, f"object {obj.id}+{pgoff}")
            if (
                pages.uobject[pfn] != obj.id
                or pages.offset[pfn] != pgoff
                or not pages.flags[pfn] & PageFlag.TABLED
            ):
                problems.append(f"O1: page {pfn} not owned by object {obj.id} at {pgoff}")
        swap_only += obj.pgops.swap_only(obj)
        if isinstance(obj, VnodeObject) and not obj.sizelock.locked():
            end = obj.npages
            problems += [
                f"O3: object {obj.id} ({obj.name}) holds page {pfn} at {pgoff}, at or "
                f"beyond its file's end ({end} pages)"
                for pgoff, pfn in obj.pages.items()
                if pgoff >= end and not pages.flags[pfn] & PageFlag.BUSY
            ]
    if uvm.zero_pfn != NIL:
        claim(uvm.zero_pfn, "uvm_loanzero_object")
    released = 0
    for pfn in range(pages.npages):
        if pages.flags[pfn] & PageFlag.RELEASED:
            released += 1  # disowned while busy: its busy holder frees it
        elif (
            pages.pqflags[pfn] != PQ.FREE
            and pfn not in owned
            and pages.loan_count[pfn]
            and not pages.flags[pfn] & (PageFlag.ANON | PageFlag.TABLED)
        ):
            claim(pfn, "the kernel's loans (orphan)")
        elif pages.pqflags[pfn] != PQ.FREE and pfn not in owned:
            problems.append(f"U2: allocated frame {pfn} owned by nobody uvm knows")
    if pages.free.count + len(owned) + released != pages.npages:
        problems.append(
            f"U2: conservation: {pages.free.count} free + {len(owned)} owned "
            f"!= {pages.npages} frames"
        )
    if uvm.swap is not None and uvm.swap.swpgonly != swap_only:
        problems.append(f"swpgonly {uvm.swap.swpgonly} != {swap_only} pages only on swap")
    return problems


def _wiring(uvm: Uvm) -> list[str]:
    """W1 (the anon layer), W2 and W3 (module doc)."""
    problems: list[str] = []
    wire_count = uvm.pages.wire_count
    resolved: set[int] = set()
    for asid, sp in uvm.spaces.items():
        for e in sp.map.entries:
            if e.wired_count:
                for _, anon in e.amap.used() if e.amap is not None else ():
                    if anon.page == NIL or not wire_count[anon.page]:
                        problems.append(
                            f"W1: asid {asid}: anon {anon.id} of the wired entry at "
                            f"{e.start:#x} is not a wired resident page"
                        )
                resolved.update(uvm.resident_pages(e))
            elif sp.map.all_locked and e.prot != Prot.NONE:
                problems.append(
                    f"W3: asid {asid}: mlockall'ed, but the entry at {e.start:#x} isn't"
                )
    rules = uvm.rules
    exact = rules.loan_refuses_wired and not rules.loan_wires
    if exact and len(resolved) != uvm.pages.wired:
        for pfn, n in enumerate(wire_count):
            if n and pfn not in resolved and not uvm.pages.loan_count[pfn]:
                problems.append(f"W2: page {pfn} is wired ({n}) but no wired entry holds it")
    return problems


def static_audit(uvm: Uvm) -> list[str]:
    """The auditor's checks of uvm's own state, with no mmu query (for a dump). Taken
    while operations are in flight it may show their transient states; at rest (every
    client gone, as for a leak) it shows none, or what is wrong."""
    return _static(uvm) + _wiring(uvm)


async def audit(uvm: Uvm) -> list[str]:
    problems = _static(uvm) + _wiring(uvm) + [f"mmu: {p}" for p in await uvm.pmap.check()]
    for asid, sp in uvm.spaces.items():
        for va, pfn, prot, wired in await uvm.pmap.mappings(asid):
            e = sp.map.lookup(va)
            where = f"U3: asid {asid} maps {va:#x} -> {pfn}"
            if e is None:
                problems.append(f"{where} outside any entry")
                continue
            anon = e.amap.lookup(e.slot(va)) if e.amap is not None else None
            if anon is not None:
                expect, shared = anon.page, anon.ref > 1 or e.needs_copy
            elif e.obj is not None:
                expect = e.obj.pages.get(e.pgoff(va), NIL)
                shared = e.cow
            else:
                expect, shared = NIL, False
            if expect != pfn:
                problems.append(f"{where}, but the entry resolves to {expect}")
            if prot & ~int(e.prot):
                problems.append(f"{where} wider ({Prot(prot).letters()}) than its entry")
            if prot & Prot.WRITE and shared:
                problems.append(f"{where} writable although the page is copy-on-write shared")
            if prot & Prot.WRITE and uvm.pages.loan_count[pfn]:
                problems.append(f"I5: {where} writable although the page is loaned")
            if wired and not e.wired_count:
                problems.append(f"{where} wired in an unwired entry")
            elif e.wired_count and not wired:
                problems.append(f"W1: {where} unwired in a wired entry")
            elif e.wired_count and not uvm.pages.wire_count[pfn]:
                problems.append(f"W1: {where} in a wired entry, but the page is not wired")
    return problems


def strays(p: VmPages) -> dict[str, list[int]]:
    """Allocated frames with no owner and no loan (I3 violations), for the dump: at most
    64, each [flags, pqflags, wire_count, uanon]."""
    out: dict[str, list[int]] = {}
    for pfn in range(p.npages):
        if (
            p.pqflags[pfn] != PQ.FREE
            and not p.flags[pfn] & (PageFlag.TABLED | PageFlag.ANON)
            and not p.loan_count[pfn]
            and pfn not in p.kernel_owned
        ):
            out[str(pfn)] = [p.flags[pfn], p.pqflags[pfn], p.wire_count[pfn], p.uanon[pfn]]
        if len(out) >= 64:
            break
    return out


#: Frames a dump describes at most (held_frames).
HELD_IN_DUMP = 1024
_FLAG_NAMES = tuple(
    (bit, name) for name, bit in vars(PageFlag).items() if name.isupper() and isinstance(bit, int)
)
_QUEUES = {PQ.FREE: "free", PQ.ACTIVE: "active", PQ.INACTIVE: "inactive", 0: "none"}


def held_frames(p: VmPages, limit: int = HELD_IN_DUMP) -> dict[str, dict[str, object]]:
    """Every frame neither free nor kernel-owned, as a dump shows it (at most `limit`):
    its vm_page fields in words. Once every client is gone this is the machine's leak
    (what `uvm-machine explain` reads for frames not back)."""
    out: dict[str, dict[str, object]] = {}
    for pfn in range(p.npages):
        if p.pqflags[pfn] == PQ.FREE or pfn in p.kernel_owned:
            continue
        f = p.flags[pfn]
        out[str(pfn)] = {
            "flags": [name for bit, name in _FLAG_NAMES if f & bit],
            "queue": _QUEUES.get(p.pqflags[pfn], hex(p.pqflags[pfn])),
            "wire_count": p.wire_count[pfn],
            "loan_count": p.loan_count[pfn],
            "anon": p.uanon[pfn] if p.uanon[pfn] != NIL else None,
            "object": p.uobject[pfn] if p.uobject[pfn] != NIL else None,
            "offset": p.offset[pfn],
        }
        if len(out) >= limit:
            break
    return out
