"""The uvm state: every vm_page, address space, anon, amap and object of the machine,
the swap device and the open files, and the primitives on pages, anons and amaps
(uvm_page.c, uvm_anon.c, uvm_amap.c). No address-space operation lives here: those
are machine.uvm.mmap (mmap, munmap, mprotect, fork, exit), machine.uvm.wiring (mlock),
machine.uvm.files (open, msync), machine.uvm.fault, machine.uvm.loan: layers above.

One Uvm holds the state. It changes translations only through the injected
PmapOps, and touches RAM itself (zero-fill, copies). Era differences are asked
of `rules` (machine.rules), never of an era's name.

Page primitives and their rules:
  * alloc_page / alloc_page_wait (uvm_pagealloc, uvm_wait): the new page is BUSY.
  * busy / unbusy / wait_busy (PG_BUSY, PG_WANTED): a page is BUSY while a fault,
    a loan or the pager works on it across an await; whoever finds it BUSY waits
    and starts over. unbusy frees a page released meanwhile (PG_RELEASED) or one
    nobody holds any more.
  * free_page (uvm_pagefree): a page still loaned to the kernel is only disowned
    (an orphan, kept alive by its loans; rules.orphan_dequeued).
  * revoke (pmap_page_protect NONE) of pages uvm takes away.

Frame ownership (U2, conservation): every frame is free, or owned by exactly
one anon (PG_ANON, uanon) or one object (PG_TABLED, uobject, offset), or an
orphan kept by its loans, or the kernel's (kernel_owned: the shared zero page).
cf. NetBSD sys/uvm/uvm_page.c, uvm_anon.c, uvm_amap.c (concepts only).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from machine.kassert import kassert
from machine.limits import Limits
from machine.proto import Errno, UserError
from machine.proto.types import Prot
from machine.ram import Ram
from machine.rules import Rules
from machine.share import FairShare
from machine.tuning import Targets
from machine.uvm.amap import Amap
from machine.uvm.anon import Anon
from machine.uvm.map import MapEntry, MapEntryPool, VmMap, check_range
from machine.uvm.object import UvmObject, VnodeObject
from machine.uvm.page import NIL, PAGEDAEMON, RESERVE_KERNEL, USER, PageFlag, VmPages
from machine.uvm.pmapops import PmapOps
from machine.uvm.stats import UvmStats
from machine.uvm.swap import SwapDevice

RW = Prot.READ | Prot.WRITE
ALLOC_WAIT_S = 1.0  # one uvm_wait sleep
WAIT_TRIES = 3  # sleeps without any page freed before a fault gives up (ENOMEM)
RWX = Prot.READ | Prot.WRITE | Prot.EXECUTE


@dataclass(eq=False)
class VmSpace:
    asid: int
    owner: int  # client session id
    map: VmMap = field(default_factory=VmMap)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    dead: bool = False
    memlock: tuple[int, int] = (0, 0)  # RLIMIT_MEMLOCK (cur, max), bytes: uvm.pageable


def _no_note(what: str, **fields: object) -> None:
    """A flight recorder's note when there is none (a core built alone)."""


class Uvm:
    """The machine-independent VM state of the whole machine."""

    def __init__(
        self,
        ram: Ram,
        pmap: PmapOps,
        *,
        disk: Path | None = None,
        swap: SwapDevice | None = None,
        rules: Rules,
        targets: Targets,
        on_pressure: Callable[[int], None] | None = None,
        diagnostic: bool = True,
        limits: Limits | None = None,
        note: Callable[..., None] | None = None,
        owner_live: Callable[[int], bool] | None = None,
        sessions: Collection[int] | None = None,
    ) -> None:
        """rules: the era's decisions (machine.rules); targets: the page daemon's policy's
        (freemin, freetarg, wiredmax), by which uvm publishes uvm.pressure; note: the
        role's flight recorder's note (machine.ipc.recorder), for timers that change state;
        owner_live: whether a client session still lives (default: in `sessions`, if
        given, else always), asked by spawn and fork before they publish a process
        (machine.uvm.mmap);
        sessions: the attached sessions (the service's registry), the `n` of the fair
        shares of maxproc, maxentries and wiredmax (machine.share; default: none known)."""
        self.ram = ram
        self._limits = limits or Limits()
        self.sessions: Collection[int] = sessions if sessions is not None else ()
        #: Processes per session (held) and on the machine (total): RLIMIT_NPROC and
        #: maxproc, shared fairly among the attached sessions (machine.share).
        self.procs = FairShare("maxproc", self.limits.maxproc, self.sessions, "processes")
        self.pmap = pmap
        self.pages = VmPages(ram.nframes, diagnostic)
        self.spaces: dict[int, VmSpace] = {}
        # every space's map counts its entries here, per session: maxentries' fair shares
        self.entry_pool = MapEntryPool(
            FairShare("maxentries", self.limits.maxentries, self.sessions, "map entries")
        )
        self.anons: dict[int, Anon] = {}
        self.objects: dict[int, UvmObject] = {}
        self.vnodes: dict[tuple[int, int], VnodeObject] = {}  # (st_dev, st_ino) -> vnode
        self.handles: dict[tuple[int, int], VnodeObject] = {}  # (session, handle) -> vnode
        self.nfiles: collections.Counter[int] = collections.Counter()  # session -> handles
        self.disk = disk
        self.swap = swap
        self.stats = UvmStats()
        self.rules = rules
        self.freemin, self.freetarg = targets.freemin, targets.freetarg
        self.wiredmax = targets.wiredmax  # uvmexp.wiredmax: the pages mlock may wire
        self._asids = itertools.count(1)
        self._ids = itertools.count(1)
        self._handle_ids = itertools.count(3)
        self._on_pressure = on_pressure
        self.note: Callable[..., None] = note or _no_note
        #: Tests only: the next process exit leaks one anon page (machine.uvm.mmap._leak_one).
        self.inject_leak = False
        self.owner_live = owner_live or (
            (lambda owner: owner in self.sessions) if sessions is not None else (lambda owner: True)
        )
        self._under_pressure = False
        self._waiters: dict[int, asyncio.Event] = {}
        self.dmesg: collections.deque[str] = collections.deque(maxlen=64)  # kernel messages
        self._freed = asyncio.Event()  # pages were freed above the reserve (uvm_wait's wakeup)
        self.alloc_wait_s = ALLOC_WAIT_S
        # Loan state (machine.uvm.loan).
        self.zero_pfn = NIL  # modern: the shared zero page of uvm_loanzero_object
        self.kobj_pages: dict[int, int] = {}  # kernel vpn -> kernel_object page (LOAN_KVA)
        self.doomed_loans: list[int] = []  # loaned anon pages freed, to revoke (uvm_anfree)
        self.anon_loans: collections.Counter[int] = collections.Counter()  # anon id -> TOANON refs

    @property
    def limits(self) -> Limits:
        return self._limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        """New limits (tests, tools): the fair shares' caps follow."""
        self._limits = limits
        self.procs.cap = limits.maxproc
        self.entry_pool.share.cap = limits.maxentries

    # -- pages: allocation, busy, free --------------------------------------------

    def alloc_page(
        self,
        anon: Anon | None = None,
        obj: UvmObject | None = None,
        pgoff: int = 0,
        who: int = USER,
    ) -> int:
        """uvm_pagealloc for an anon or an object. => pfn, BUSY; UserError ENOMEM if none."""
        pfn = self.pages.alloc(
            anon=anon.id if anon else NIL, obj=obj.id if obj else NIL, offset=pgoff, who=who
        )
        if pfn == NIL:
            self.stats.fltnoram += 1
            self.check_pressure(failed=True)
            raise UserError(
                Errno.ENOMEM,
                "out of memory: no free frame",
            )
        if anon is not None:
            anon.page = pfn
        if obj is not None:
            obj.pages[pgoff] = pfn
        self.check_pressure()
        return pfn

    async def alloc_page_wait(
        self,
        anon: Anon | None = None,
        obj: UvmObject | None = None,
        pgoff: int = 0,
        who: int = USER,
    ) -> int:
        """uvm_pagealloc, and uvm_wait when none may be had: wake the page daemon and sleep
        until pages are freed. => pfn; UserError ENOMEM when the daemon frees nothing for
        WAIT_TRIES waits of alloc_wait_s (memory and swap exhausted).

        => the page daemon must never wait for itself: on its behalf a failed allocation
           logs "pagedaemon: deadlock detected!", sleeps briefly (hz/8 in NetBSD) and
           gives up (scenario 28).
        """
        idle = 0
        while True:
            try:
                return self.alloc_page(anon=anon, obj=obj, pgoff=pgoff, who=who)
            except UserError:
                if who == PAGEDAEMON:
                    self.stats.pddeadlock += 1
                    self.dmesg.append("pagedaemon: deadlock detected!")
                    await asyncio.sleep(self.alloc_wait_s / 8)
                    raise
                if idle >= WAIT_TRIES or self.alloc_wait_s <= 0:
                    raise
            self._freed.clear()
            try:
                await asyncio.wait_for(self._freed.wait(), self.alloc_wait_s)
                idle = 0
            except TimeoutError:
                idle += 1
                self.note("alloc wait timeout", who=who, waits=idle, free=self.pages.free.count)

    def busy(self, pfn: int) -> None:
        kassert(not self.pages.flags[pfn] & PageFlag.BUSY, "page %d already busy", pfn)
        self.pages.flags[pfn] |= PageFlag.BUSY

    def unbusy(self, pfn: int) -> None:
        """uvm_page_unbusy: clear BUSY and wake whoever waits for the page.

        => a page its owner freed while it was busy (PG_RELEASED) is freed now; so is a
           page nobody holds any more: no owner, no borrowing anon, no loans (its last
           loan ended while the busy holder worked on it, e.g. during a loan break).
        """
        pages = self.pages
        released = pages.flags[pfn] & PageFlag.RELEASED
        pages.unbusy(pfn)
        ev = self._waiters.pop(pfn, None)
        if ev is not None:
            ev.set()
        if released:
            pages.flags[pfn] &= ~PageFlag.RELEASED
            self.free_page(pfn)
        elif (
            not pages.flags[pfn] & (PageFlag.ANON | PageFlag.TABLED)
            and pages.uanon[pfn] == NIL
            and not pages.loan_count[pfn]
            and pfn not in pages.kernel_owned
        ):
            self.free_page(pfn)

    def release_page(self, pfn: int) -> None:
        """Free a page its owner no longer wants; if someone holds it BUSY (the page
        daemon), disown it and mark it PG_RELEASED: the busy holder's unbusy frees it."""
        if self.pages.flags[pfn] & PageFlag.BUSY:
            self.pages.flags[pfn] |= PageFlag.RELEASED
            self.pages.uanon[pfn] = NIL
            self.pages.uobject[pfn] = NIL
            self.pages.flags[pfn] &= ~(PageFlag.ANON | PageFlag.TABLED)
            return
        self.free_page(pfn)

    async def wait_busy(self, pfn: int) -> None:
        """Sleep until the page is unbusied (the caller then starts over)."""
        self.stats.fltpgwait += 1
        self.pages.flags[pfn] |= PageFlag.WANTED
        ev = self._waiters.setdefault(pfn, asyncio.Event())
        await ev.wait()

    def free_page(self, pfn: int) -> None:
        """uvm_pagefree. A page still loaned to the kernel is only disowned (section 3):
        it leaves its object or anon (an orphan, PG_CLEAN cleared) and stays alive for
        its loans; 1999 leaves it where it was, later eras dequeue it. Its last unloan
        frees it."""
        kassert(not self.pages.flags[pfn] & PageFlag.BUSY, "uvm_pagefree: page %d busy", pfn)
        if self.pages.loan_count[pfn]:
            self.disown(pfn)
            return
        self.pages.free_page(pfn)

    def wakeup_free(self) -> None:
        """wakeup(&uvmexp.free) after a page daemon pass: uvm_wait sleepers retry now
        (not at their timeout) if the pass left pages above the reserve."""
        if self.pages.free.count > RESERVE_KERNEL:
            self._freed.set()

    def disown(self, pfn: int) -> None:
        """The owner lets a loaned page go: an orphan, kept alive by its loans (sections 3,
        5.2, 5.3). Its object or anon owner is gone and PG_CLEAN cleared (a future anon
        owner needs swap); an anon that only borrows it (O->A) keeps its uanon; 1999
        leaves it where it was, later eras (rules.orphan_dequeued) dequeue it unless an
        anon still borrows it: that one stays queued, where the page daemon finds it and
        hands it to the anon (section 3, modern uvm_pagefree; 5.4)."""
        pages = self.pages
        if pages.flags[pfn] & PageFlag.ANON:
            pages.uanon[pfn] = NIL
        pages.uobject[pfn] = NIL
        pages.offset[pfn] = 0
        pages.flags[pfn] &= ~(PageFlag.ANON | PageFlag.TABLED | PageFlag.CLEAN)
        if self.rules.orphan_dequeued and pages.uanon[pfn] == NIL:
            pages.dequeue(pfn)
        self.stats.orphans += 1
        self.stats.pgfrees += 1
        if self.pages.free.count > RESERVE_KERNEL:
            self._freed.set()
        self.check_pressure()

    async def revoke(self, pfns: list[int], why: str) -> None:
        """pmap_page_protect(NONE) on pages uvm is taking away (loan break, anon free).

        => PPP_WIRED=panic (Silvers): page_protect is ill-defined for a wired page."""
        if self.rules.page_protect_panics_on_wired:
            for pfn in pfns:
                kassert(
                    not self.pages.wire_count[pfn],
                    "pmap_page_protect: page %d is wired (wire_count %d, loan_count %d): %s",
                    pfn,
                    self.pages.wire_count[pfn],
                    self.pages.loan_count[pfn],
                    why,
                )
        if pfns:
            await self.pmap.page_protect(pfns, int(Prot.NONE), why)

    def check_pressure(self, failed: bool = False) -> None:
        """Publish uvm.pressure when free falls below freemin, and on every failed allocation."""
        low = self.pages.free.count < self.freemin
        if failed or (low and not self._under_pressure):
            self.stats.pressure_events += 1
            if self._on_pressure is not None:
                self._on_pressure(self.pages.free.count)
        self._under_pressure = low

    # -- anons and amaps -----------------------------------------------------------

    def new_anon(self) -> Anon:
        anon = Anon(next(self._ids))
        self.anons[anon.id] = anon
        return anon

    def anon_unref(self, anon: Anon) -> None:
        """uvm_anfree when the last reference goes: its page and its swap slot."""
        anon.ref -= 1
        kassert(anon.ref >= 0, "uvm_anfree: anon %d ref < 0", anon.id)
        if anon.ref:
            return
        if anon.page != NIL:
            kassert(
                self.pages.uanon[anon.page] == anon.id,
                "uvm_anfree: page %d not owned by anon %d",
                anon.page,
                anon.id,
            )
            pfn = anon.page
            if not self.pages.flags[pfn] & PageFlag.ANON:
                # The anon only borrows the page (O->A): drop this anon's loan (5.3).
                self.pages.loan_count[pfn] -= 1
                self.pages.uanon[pfn] = NIL
                owned = self.pages.flags[pfn] & PageFlag.TABLED
                if not owned and not self.pages.loan_count[pfn]:
                    self.free_page(pfn)
            else:
                if self.pages.loan_count[pfn]:
                    # uvm_anfree: pmap_page_protect(NONE), then uvm_pagefree disowns it.
                    self.doomed_loans.append(pfn)
                self.release_page(pfn)
            anon.page = NIL
        elif anon.swslot:
            self.swap_only(-1)
        if anon.swslot:
            self.swap_free(anon.swslot)
            anon.swslot = 0
        del self.anons[anon.id]

    def amap_unref(self, amap: Amap, off: int = 0, n: int | None = None) -> None:
        """amap_unref of the reference to slots [off, off+n) (default: all): the anons no
        reference covers any more lose one ref (amap_pp_adjref; the last drops them all)."""
        for anon in amap.unreference(off, amap.nslot if n is None else n):
            self.anon_unref(anon)

    def amap_copy(self, e: MapEntry) -> None:
        """amap_copy: give a NEEDSCOPY entry an amap of its own (no page is copied)."""
        if e.amap is None:
            e.amap, e.aoff = Amap(e.npages), 0
        elif e.amap.ref > 1:
            old = e.amap
            e.amap = old.copy(e.aoff, e.npages)
            self.amap_unref(old, e.aoff, e.npages)
            e.aoff = 0
            self.stats.fltamcopy += 1
        e.needs_copy = False

    # -- swap accounting -----------------------------------------------------------

    def swap_free(self, slot: int) -> None:
        assert self.swap is not None
        self.swap.free(slot)

    def swap_in(self, slot: int, pfn: int) -> None:
        """Read swap slot `slot` into frame pfn (the swap-in of an anon or an aobj page):
        one page fewer lives only in swap (fltanget)."""
        assert self.swap is not None
        self.swap.get(slot, self.ram, pfn)
        self.swap_only(-1)
        self.stats.fltanget += 1

    def swap_only(self, delta: int) -> None:
        if self.swap is not None:
            self.swap.swpgonly += delta

    # -- address spaces ----------------------------------------------------------------

    def space(self, asid: int, owner: int) -> VmSpace:
        """The caller's space. => UserError ESRCH, alike for an unknown space and for
        another session's (the reply does not tell whether the space exists)."""
        sp = self.spaces.get(asid)
        if sp is None or sp.dead or sp.owner != owner:
            raise UserError(Errno.ESRCH, f"no process with asid {asid}")
        return sp

    def charge_proc(self, owner: int) -> None:
        """Count one more process of the session (RLIMIT_NPROC, then maxproc's fair share:
        machine.share). => UserError EAGAIN at either, nothing counted. Counted before the
        first await, so racing spawns agree."""
        if self.procs.held.get(owner, 0) >= self.limits.procs:
            raise UserError(
                Errno.EAGAIN, f"the session holds its limit of {self.limits.procs} processes"
            )
        if not self.procs.grants(owner):
            raise UserError(Errno.EAGAIN, self.procs.refusal(owner))
        self.procs.take(owner)

    def uncharge_proc(self, owner: int) -> None:
        self.procs.give(owner)

    @contextlib.asynccontextmanager
    async def mapped_range(
        self, asid: int, owner: int, va: int, length: int, what: str
    ) -> AsyncIterator[tuple[VmSpace, int]]:
        """The caller's space, locked, for [va, va+length) that must be fully mapped.

        => (space, end VA); UserError ESRCH/EPERM/EINVAL, or ENOMEM when not all mapped."""
        sp = self.space(asid, owner)
        eva = check_range(va, length)
        async with sp.lock:
            if not sp.map.covers(va, eva):
                raise UserError(Errno.ENOMEM, f"{what} range at {va:#x} is not fully mapped")
            yield sp, eva

    def new_asid(self) -> int:
        return next(self._asids)

    def new_object_id(self) -> int:
        return next(self._ids)

    def new_handle(self) -> int:
        return next(self._handle_ids)

    def asids_of(self, owner: int) -> list[int]:
        return sorted(a for a, sp in self.spaces.items() if sp.owner == owner and not sp.dead)

    def resident_pages(self, e: MapEntry) -> list[int]:
        """The frames an entry resolves to today (anon layer first, then object), in page
        order. => O(used slots + the object's resident pages), never O(e.npages)."""
        found: dict[int, int] = {}
        for slot, anon in e.anons():
            found[slot] = anon.page  # NIL when swapped: the object page is hidden
        if e.obj is not None:
            base = e.pgoff(e.start)
            for pgoff, pfn in e.obj.pages.items():
                slot = pgoff - base
                if 0 <= slot < e.npages and slot not in found:
                    found[slot] = pfn
        return [pfn for _, pfn in sorted(found.items()) if pfn != NIL]

    # -- reporting ------------------------------------------------------------------------

    def frames(self) -> dict[str, int]:
        p = self.pages
        out = {
            "total": p.npages,
            "free": p.free.count,
            "active": p.active.count,
            "inactive": p.inactive.count,
            "wired": p.wired,
            "loaned": p.npages - p.loan_count.count(0),
            # the kernel's own frames, the shared zero page (modern zero loans) included:
            # every frame is free or kernel-owned once the clients are gone
            "kernel_owned": len(p.kernel_owned),
            "freemin": self.freemin,
            "freetarg": self.freetarg,
        }
        if self.swap is not None:
            out |= {
                "swpages": self.swap.swpages,
                "swpginuse": self.swap.swpginuse,
                "swpgonly": self.swap.swpgonly,
            }
        return out
