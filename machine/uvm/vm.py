"""The uvm core: address spaces and their operations (mmap, munmap, mprotect, fork,
mlock/munlock, msync, exit), files, and the ownership of every frame.

One Uvm holds every vm_page (VmPages), every address space, anon and object,
the swap device and the open files. It changes translations only through
the injected PmapOps, and touches RAM itself (zero-fill, copies, pager I/O).
Faults live in fault.py, pageout and the pagers in pager.py.

Ordering rules (why the machine never maps a freed frame):
  * munmap and exit remove translations from the mmu first and free frames
    only after the mmu has acknowledged.
  * Every operation on one address space holds that space's lock across its
    awaits, so faults, mmap, munmap, fork and exit of one space never
    interleave. Different spaces run concurrently; what they share (anons
    after fork, object pages) is protected by PG_BUSY: a page is BUSY while
    a fault or the pager works on it across an await, and whoever finds it
    BUSY waits (fltpgwait) and starts over.

Frame ownership (U2, conservation): every frame is free, or owned by exactly
one anon (PG_ANON, uanon) or one object (PG_TABLED, uobject, offset).

Memory follows use: nothing uvm keeps, and no loop it runs, is sized by the
virtual size of a mapping. Amaps and objects are sparse (machine.uvm.amap,
UvmObject.pages), the mmu's page tables are dicts, and munmap, mprotect,
munlock, fork and exit walk the used slots and the resident pages, never
every page of a range: one byte stored at the end of a 2^40-byte mapping
costs a few KiB. Only mlock touches every page (it must fault each in), and
it refuses up front a range larger than the frames that could be wired.

Limits (machine.limits, NetBSD's rlimits; each refusal changes nothing):
  vsize        mmap beyond the process's mapped bytes limit -> ENOMEM
               (a forked child inherits its parent's size);
  map_entries  mmap, or a clip (mprotect, mlock, munlock, munmap inside an
               entry) that would leave more entries -> ENOMEM;
  maxentries   the same, for the machine's entries (entry_pool, E1 in
               machine.uvm.map), and fork: the child's entries are charged
               (reserved) before the child exists -> ENOMEM;
  procs        spawn or fork beyond the session's processes -> EAGAIN;
  files        open beyond the session's open files -> EMFILE;
  filesize     open asking for a size beyond it -> EFBIG (an existing file
               that is larger may still be opened, at its own size).
cf. NetBSD sys/uvm/uvm_map.c, uvm_mmap.c, uvm_glue.c, uvm_anon.c (concepts only).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machine.kassert import kassert
from machine.limits import Limits
from machine.params import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, USER_MIN, USER_TOP, round_page
from machine.proto import Errno, UserError
from machine.proto.types import Prot
from machine.ram import Ram
from machine.tuning import tune as policy_tune
from machine.uvm.amap import Amap
from machine.uvm.anon import Anon
from machine.uvm.map import Inherit, MapEntry, MapEntryPool, VmMap
from machine.uvm.object import AObj, UvmObject, VnodeObject
from machine.uvm.page import NIL, PAGEDAEMON, RESERVE_KERNEL, USER, PageFlag, VmPages
from machine.uvm.pmapops import PmapOps
from machine.uvm.stats import UvmStats
from machine.uvm.swap import SwapDevice
from machine.uvm.vnode import VnodeError, VnodeFile, check_size, lookup, release

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


def tune(npages: int, policy: str = "clock") -> tuple[int, int]:
    """(freemin, freetarg) by the profile's page-daemon policy (machine.tuning)."""
    freemin, freetarg, _ = policy_tune(npages, policy)
    return freemin, freetarg


class Uvm:
    """The machine-independent VM state of the whole machine."""

    def __init__(
        self,
        ram: Ram,
        pmap: PmapOps,
        *,
        disk: Path | None = None,
        swap: SwapDevice | None = None,
        on_pressure: Callable[[int], None] | None = None,
        diagnostic: bool = True,
        policy: str = "clock",
        knobs: dict[str, Any] | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.ram = ram
        self.limits = limits or Limits()
        self.nprocs: collections.Counter[int] = collections.Counter()  # session -> spaces
        self.pmap = pmap
        self.pages = VmPages(ram.nframes, diagnostic)
        self.spaces: dict[int, VmSpace] = {}
        self.entry_pool = MapEntryPool()  # every space's map counts its entries here
        self.anons: dict[int, Anon] = {}
        self.objects: dict[int, UvmObject] = {}
        self.vnodes: dict[tuple[int, int], VnodeObject] = {}  # (st_dev, st_ino) -> vnode
        self.handles: dict[tuple[int, int], VnodeObject] = {}  # (session, handle) -> vnode
        self.nfiles: collections.Counter[int] = collections.Counter()  # session -> handles
        self.disk = disk
        self.swap = swap
        self.stats = UvmStats()
        self.freemin, self.freetarg = tune(ram.nframes, policy)
        self._asids = itertools.count(1)
        self._ids = itertools.count(1)
        self._handle_ids = itertools.count(3)
        self._on_pressure = on_pressure
        self._under_pressure = False
        self._waiters: dict[int, asyncio.Event] = {}
        self.dmesg: collections.deque[str] = collections.deque(maxlen=64)  # kernel messages
        self._freed = asyncio.Event()  # pages were freed above the reserve (uvm_wait's wakeup)
        self.alloc_wait_s = ALLOC_WAIT_S
        k = knobs or {}
        # The profile's loan and pmap knobs (uvm-semantics.md section 13).
        self.era = str(k.get("ERA", "modern"))
        self.queue_invariant = str(k.get("QUEUE_INVARIANT", "enforced"))
        self.ppp_wired = str(k.get("PPP_WIRED", "remove"))
        self.loan_kva = str(k.get("LOAN_KVA", "none"))
        self.zero_pfn = NIL  # modern: the shared zero page of uvm_loanzero_object
        self.kobj_pages: dict[int, int] = {}  # kernel vpn -> kernel_object page (LOAN_KVA)
        self.doomed_loans: list[int] = []  # loaned anon pages freed, to revoke (uvm_anfree)
        self.anon_loans: collections.Counter[int] = collections.Counter()  # anon id -> TOANON refs

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
                "ENOMEM",
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

    def disown(self, pfn: int) -> None:
        """The owner lets a loaned page go: an orphan, kept alive by its loans (sections 3,
        5.2, 5.3). Its object or anon owner is gone and PG_CLEAN cleared (a future anon
        owner needs swap); an anon that only borrows it (O->A) keeps its uanon; 1999
        leaves it where it was, later eras dequeue it."""
        pages = self.pages
        if pages.flags[pfn] & PageFlag.ANON:
            pages.uanon[pfn] = NIL
        pages.uobject[pfn] = NIL
        pages.offset[pfn] = 0
        pages.flags[pfn] &= ~(PageFlag.ANON | PageFlag.TABLED | PageFlag.CLEAN)
        if self.era != "1999":
            pages.dequeue(pfn)
        self.stats.orphans += 1
        self.stats.pgfrees += 1
        if self.pages.free.count > RESERVE_KERNEL:
            self._freed.set()
        self.check_pressure()

    async def revoke(self, pfns: list[int], why: str) -> None:
        """pmap_page_protect(NONE) on pages uvm is taking away (loan break, anon free).

        => PPP_WIRED=panic (Silvers): page_protect is ill-defined for a wired page."""
        if self.ppp_wired == "panic":
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

    def amap_unref(self, amap: Amap) -> None:
        """amap_unref: the last reference frees every anon reference the amap holds."""
        amap.ref -= 1
        if amap.ref == 0:
            for slot, anon in amap.used():
                amap.unadd(slot)
                self.anon_unref(anon)

    def amap_copy(self, e: MapEntry) -> None:
        """amap_copy: give a NEEDSCOPY entry an amap of its own (no page is copied)."""
        if e.amap is None:
            e.amap = Amap(e.npages)
        elif e.amap.ref > 1:
            old = e.amap
            e.amap = old.copy(0, e.npages)
            old.ref -= 1
            self.stats.fltamcopy += 1
        e.needs_copy = False

    def amap_cow_now(self, e: MapEntry) -> Amap:
        """amap_cow_now for fork of a wired entry: the child's amap with every page copied.

        => UserError ENOMEM when a frame is missing, every copy made so far freed."""
        new = Amap(e.npages)
        if e.amap is not None:
            for slot, anon in e.amap.used():
                copy = self.new_anon()
                try:
                    pfn = self.alloc_page(anon=copy)
                except UserError:
                    del self.anons[copy.id]
                    self.amap_unref(new)
                    raise
                src = anon.page
                kassert(src != NIL, "amap_cow_now: wired anon %d not resident", anon.id)
                self.ram.frame(pfn)[:] = self.ram.frame(src)
                self.pages.flags[pfn] &= ~PageFlag.CLEAN
                self.pages.activate(pfn)
                self.unbusy(pfn)
                new.add(slot, copy)
        return new

    # -- swap accounting -----------------------------------------------------------

    def swap_free(self, slot: int) -> None:
        assert self.swap is not None
        self.swap.free(slot)

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

    async def spawn(self, owner: int) -> int:
        """A new, empty address space. => asid; UserError EAGAIN beyond limits.procs."""
        self._charge_proc(owner)
        asid = next(self._asids)
        try:
            await self.pmap.create(asid, owner)
        except BaseException:
            self._uncharge_proc(owner)
            raise
        self.spaces[asid] = VmSpace(asid, owner, VmMap(self.entry_pool))
        self.stats.spawns += 1
        return asid

    def _charge_proc(self, owner: int) -> None:
        """Count one more process of the session (RLIMIT_NPROC). => UserError EAGAIN at the
        limit, nothing counted. Counted before the first await, so racing spawns agree."""
        if self.nprocs[owner] >= self.limits.procs:
            raise UserError(
                Errno.EAGAIN, f"the session holds its limit of {self.limits.procs} processes"
            )
        if self.nprocs.total() >= self.limits.maxproc:
            raise UserError(
                "EAGAIN", f"the machine holds its limit of {self.limits.maxproc} processes"
            )
        self.nprocs[owner] += 1

    def _uncharge_proc(self, owner: int) -> None:
        self.nprocs[owner] -= 1
        kassert(self.nprocs[owner] >= 0, "nprocs of session %d < 0", owner)
        if not self.nprocs[owner]:
            del self.nprocs[owner]

    def asids_of(self, owner: int) -> list[int]:
        return sorted(a for a, sp in self.spaces.items() if sp.owner == owner and not sp.dead)

    # -- files -----------------------------------------------------------------------

    def open(self, owner: int, name: str, create: bool, size: int | None) -> tuple[int, int]:
        """Open (or create) a file under disk/. => (handle, size in bytes).

        => UserError with an errno for every name and every host failure (see
           machine.uvm.vnode: no symbolic link is followed); one vnode object
           per host file, whatever the spelling of its name ((st_dev, st_ino)).
        => EMFILE beyond limits.files, EFBIG for a size beyond limits.filesize,
           both before anything is made. disk/ is shared by every session (one
           user's file system): any session may open any name; handles are
           per session."""
        if self.nfiles[owner] >= self.limits.files:
            raise UserError(
                Errno.EMFILE, f"the session holds its limit of {self.limits.files} files"
            )
        if self.disk is None:
            raise UserError(Errno.ENOSYS, "this machine has no disk")
        try:
            check_size(size, self.limits.filesize)  # before anything is made
            fd, key = lookup(self.disk, name, create)
            obj = self.vnodes.get(key)
            if obj is None:
                f = VnodeFile(fd, key, name, size)
                obj = VnodeObject(next(self._ids), refs=0, file=f, name=name)
                self.vnodes[key] = obj
                self.objects[obj.id] = obj
            else:
                release(fd)  # the vnode keeps its own descriptor
                if size is not None and size > obj.npages * PAGE_SIZE:
                    raise VnodeError("EINVAL", f"{name!r} is open with a smaller size")
        except VnodeError as e:
            raise UserError(e.errno, e.detail) from None
        obj.refs += 1
        handle = next(self._handle_ids)
        self.handles[(owner, handle)] = obj
        self.nfiles[owner] += 1
        assert obj.file is not None
        return handle, obj.file.size

    async def close(self, owner: int, handle: int) -> None:
        obj = self.handles.pop((owner, handle), None)
        if obj is None:
            raise UserError(Errno.EBADF, f"no open file with handle {handle}")
        self.nfiles[owner] -= 1
        if not self.nfiles[owner]:
            del self.nfiles[owner]
        await self.obj_unref(obj)

    async def close_all(self, owner: int) -> None:
        for o, h in [k for k in self.handles if k[0] == owner]:
            await self.close(o, h)

    async def obj_unref(self, obj: UvmObject) -> None:
        """The last reference to an object: write back its dirty pages, free them."""
        obj.refs -= 1
        kassert(obj.refs >= 0, "uvm_obj_unref: object %d refs < 0", obj.id)
        if obj.refs:
            return
        from machine.uvm.pager import flush_object

        if obj.pgops.writes_back:
            await flush_object(self, obj, 0, obj.npages)
        for pfn in list(obj.pages.values()):
            if self.pages.flags[pfn] & PageFlag.BUSY:
                await self.wait_busy(pfn)
        obj.pgops.drop(self, obj)  # before the pages go: it tells resident from swapped
        for pgoff, pfn in sorted(obj.pages.items()):
            self.free_page(pfn)
            del obj.pages[pgoff]
        self.vnodes = {p: o for p, o in self.vnodes.items() if o is not obj}
        del self.objects[obj.id]

    # -- mmap / munmap / mprotect ------------------------------------------------------

    async def mmap(
        self,
        asid: int,
        owner: int,
        length: int,
        prot: Prot,
        va: int = 0,
        fixed: bool = False,
        handle: int = 0,
        offset: int = 0,
        shared: bool = False,
    ) -> int:
        """uvm_map: anonymous or file memory, private (COW) or shared. => start VA.

        => UserError EINVAL (length <= 0, misaligned, fixed outside user space or
           overlapping), ENOMEM (no room, length beyond user space, limits.vsize
           or limits.map_entries reached), EBADF; nothing changed on any error."""
        sp = self.space(asid, owner)
        if length <= 0 or offset < 0:
            raise UserError(Errno.EINVAL, f"mmap length {length} / offset {offset} out of range")
        if length > USER_TOP - USER_MIN:
            raise UserError(Errno.ENOMEM, f"mmap length {length:#x} is larger than user space")
        length = round_page(length)
        if va & PAGE_MASK or offset & PAGE_MASK:
            raise UserError(Errno.EINVAL, "mmap address and offset must be page aligned")
        obj: UvmObject | None = None
        if handle:
            vobj = self.handles.get((owner, handle))
            if vobj is None:
                raise UserError(Errno.EBADF, f"no open file with handle {handle}")
            obj = vobj
        async with sp.lock:
            if sp.map.size + length > self.limits.vsize:
                raise UserError(
                    "ENOMEM",
                    f"{sp.map.size} + {length} bytes mapped would exceed the process's "
                    f"limit of {self.limits.vsize} (vsize)",
                )
            if len(sp.map.entries) >= self.limits.map_entries:
                raise UserError(
                    "ENOMEM", f"the process holds its limit of {self.limits.map_entries} entries"
                )
            self._entry_room(1, "mmap")
            if fixed:
                if not (USER_MIN <= va and va + length <= USER_TOP):
                    raise UserError(Errno.EINVAL, f"mmap range at {va:#x} outside user space")
                if not sp.map.is_free(va, va + length):
                    raise UserError(Errno.EINVAL, f"mmap range at {va:#x} overlaps a mapping")
                start = va
            else:
                found = sp.map.find_space(length, va)
                if found is None:
                    raise UserError(
                        Errno.ENOMEM, f"no room for {length} bytes in the address space"
                    )
                start = found
            if obj is None and shared:
                obj = AObj(next(self._ids), refs=0, size_pages=length >> PAGE_SHIFT)
                self.objects[obj.id] = obj
            if obj is not None:
                obj.refs += 1
            sp.map.insert(
                MapEntry(
                    start,
                    start + length,
                    prot,
                    RWX,
                    Inherit.SHARE if shared else Inherit.COPY,
                    obj,
                    offset,
                    None,
                    cow=not shared,
                )
            )
            self.stats.mmaps += 1
            return start

    def _unshare(self, e: MapEntry) -> None:
        """Before an entry is split, give it its own amap (an early amap_copy)."""
        if e.needs_copy and e.amap is not None:
            self.amap_copy(e)

    def _entry_room(self, n: int, what: str) -> None:
        """=> UserError ENOMEM when n more map entries would exceed limits.maxentries."""
        if not self.entry_pool.room(n, self.limits.maxentries):
            raise UserError(
                "ENOMEM",
                f"{what}: the machine holds its limit of {self.limits.maxentries} map entries "
                "(maxentries)",
            )

    def _clip_room(self, sp: VmSpace, start: int, end: int, removing: bool = False) -> None:
        """=> UserError ENOMEM when clipping at start and end would leave the process more
        than limits.map_entries entries, or the machine more than limits.maxentries
        (removing: the entries inside then go, munmap)."""
        inside = sp.map.in_range(start, end)
        if not inside:
            return
        splits = int(inside[0].start < start) + int(inside[-1].end > end)
        after = len(sp.map.entries) + splits - (len(inside) if removing else 0)
        if splits and after > self.limits.map_entries:
            raise UserError(
                "ENOMEM",
                f"splitting at {start:#x}-{end:#x} would exceed the process's limit of "
                f"{self.limits.map_entries} map entries",
            )
        if splits and after > len(sp.map.entries):
            self._entry_room(after - len(sp.map.entries), f"splitting at {start:#x}-{end:#x}")

    def _clip(self, sp: VmSpace, start: int, end: int, removing: bool = False) -> list[MapEntry]:
        """uvm_map_clip of [start, end), each split entry unshared first. => entries inside.

        => UserError ENOMEM (limits.map_entries) before anything changed."""
        self._clip_room(sp, start, end, removing)
        for e in sp.map.in_range(start, end):
            if e.start < start or e.end > end:
                self._unshare(e)
        return sp.map.clip(start, end)

    @contextlib.asynccontextmanager
    async def _mapped_range(
        self, asid: int, owner: int, va: int, length: int, what: str
    ) -> AsyncIterator[tuple[VmSpace, int]]:
        """The caller's space, locked, for [va, va+length) that must be fully mapped.

        => (space, end VA); UserError ESRCH/EPERM/EINVAL, or ENOMEM when not all mapped."""
        sp = self.space(asid, owner)
        eva = self._check_range(va, length)
        async with sp.lock:
            if not sp.map.covers(va, eva):
                raise UserError(Errno.ENOMEM, f"{what} range at {va:#x} is not fully mapped")
            yield sp, eva

    def _check_range(self, va: int, length: int) -> int:
        if va & PAGE_MASK:
            raise UserError(Errno.EINVAL, f"address {va:#x} not page aligned")
        eva = va + round_page(length)
        if not (USER_MIN <= va and eva <= USER_TOP):
            raise UserError(Errno.EINVAL, f"range at {va:#x} outside user space")
        return eva

    async def munmap(self, asid: int, owner: int, va: int, length: int) -> None:
        """uvm_unmap: translations go first, then frames and references.

        => UserError ENOMEM (a split beyond map_entries or maxentries) before anything
           changed. The clip comes before the await, right after its check, so no other
           space can take the entries meanwhile; until the doomed entries go (after the
           mmu's answer) the machine may count up to 2 entries over maxentries."""
        sp = self.space(asid, owner)
        eva = self._check_range(va, length)
        async with sp.lock:
            doomed = self._clip(sp, va, eva, removing=True)
            await self.pmap.remove(asid, va, eva)
            sp.map.remove(doomed)
            for e in doomed:
                await self._drop_entry(e)
            self.stats.munmaps += 1

    async def _drop_entry(self, e: MapEntry) -> None:
        """Release what an entry held (its translations are already gone)."""
        if e.wired_count:
            for pfn in self.resident_pages(e):
                if self.pages.wire_count[pfn]:
                    self.pages.unwire(pfn)
        if e.amap is not None:
            self.amap_unref(e.amap)
            e.amap = None
            doomed, self.doomed_loans = self.doomed_loans, []
            await self.revoke(doomed, "uvm_anfree of a loaned anon page")
        if e.obj is not None:
            if e.obj.pgops.writes_back and not e.cow:
                from machine.uvm.pager import flush_object

                await flush_object(self, e.obj, e.pgoff(e.start), e.pgoff(e.end))
            await self.obj_unref(e.obj)
            e.obj = None

    async def mprotect(self, asid: int, owner: int, va: int, length: int, prot: Prot) -> None:
        async with self._mapped_range(asid, owner, va, length, "mprotect") as (sp, eva):
            if any(prot & ~e.max_prot for e in sp.map.in_range(va, eva)):
                raise UserError(Errno.EACCES, "protection beyond the mapping's maximum")
            for e in self._clip(sp, va, eva):
                lowered = e.prot & ~prot
                e.prot = prot
                if lowered:
                    await self.pmap.protect(asid, e.start, e.end, int(prot))

    # -- exit -----------------------------------------------------------------------

    async def exit(self, asid: int, owner: int, reason: str = "exit") -> None:
        """Process exit: remove the pmap, then release every entry."""
        sp = self.space(asid, owner)
        async with sp.lock:
            if sp.dead:
                return
            sp.dead = True
            await self.pmap.destroy(asid)
            entries = sp.map.take_all()
            for e in entries:
                await self._drop_entry(e)
            del self.spaces[asid]
            self._uncharge_proc(sp.owner)
            self.stats.exits += 1
            if reason != "exit":
                self.stats.reaped += 1

    # -- fork -------------------------------------------------------------------------

    async def fork(self, asid: int, owner: int) -> int:
        """uvmspace_fork: a child address space by each entry's inheritance.

        COPY entries become copy-on-write in both (the amap shared with
        NEEDSCOPY, the parent's writable mappings write-protected), except
        wired ones, whose anon pages are copied at once (amap_cow_now) so the
        parent never faults on wired memory. SHARE entries share object and
        amap. NONE entries are left out.

        => UserError EAGAIN (procs, maxproc) or ENOMEM (maxentries: the child's entries
           are reserved in the pool before the child exists) with nothing changed;
           ENOMEM when a wired entry's pages cannot be copied (no free frame): the
           half-built child is torn down, the parent keeps its memory (its entries
           may be left NEEDSCOPY and write-protected: its next writes fault).
        """
        sp = self.space(asid, owner)
        async with sp.lock:
            todo = [e for e in sp.map.entries if e.inheritance is not Inherit.NONE]
            self._entry_room(len(todo), "fork")
            self._charge_proc(owner)
            pool = self.entry_pool
            pool.reserve(len(todo))  # before any await: racing forks and mmaps agree
            child_asid = next(self._asids)
            try:
                await self.pmap.create(child_asid, owner)
            except BaseException:
                pool.unreserve(len(todo))
                self._uncharge_proc(owner)
                raise
            child = VmSpace(child_asid, owner, VmMap(pool))
            self.spaces[child_asid] = child
            done = 0  # entries inserted: their reservations are spent
            try:
                for e in todo:
                    await self._fork_entry(sp, child, e)
                    done += 1
            except BaseException:
                pool.unreserve(len(todo) - done)
                await self.exit(child_asid, owner, reason="fork failed")
                raise
            self.stats.forks += 1
            return child_asid

    async def _fork_entry(self, sp: VmSpace, child: VmSpace, e: MapEntry) -> None:
        """The child's copy of entry e, inserted into child's map on a reservation.

        => UserError ENOMEM (amap_cow_now: no frame) with nothing of e's changed."""
        c = MapEntry(
            e.start, e.end, e.prot, e.max_prot, e.inheritance, e.obj, e.offset, None, e.cow
        )
        if e.inheritance is Inherit.SHARE:
            kassert(e.amap is None, "fork: shared entry with an amap")
        elif e.wired_count:
            c.amap = self.amap_cow_now(e)
        elif e.amap is not None:
            e.amap.ref += 1
            c.amap = e.amap
            c.needs_copy = e.needs_copy = True
            if e.prot & Prot.WRITE:
                await self.pmap.protect(sp.asid, e.start, e.end, int(e.prot & ~Prot.WRITE))
        else:
            c.needs_copy = True
        if e.obj is not None:
            e.obj.refs += 1
        child.map.insert(c, reserved=True)

    # -- wiring ---------------------------------------------------------------------

    async def wire(self, asid: int, owner: int, va: int, length: int) -> None:
        """mlock: fault in and wire every page (a COW range is copied now, section 6)."""
        from machine.uvm.fault import fault_locked

        async with self._mapped_range(asid, owner, va, length, "mlock") as (sp, eva):
            if any(e.prot == Prot.NONE for e in sp.map.in_range(va, eva)):
                raise UserError(Errno.ENOMEM, "mlock of an inaccessible range")
            npages = sum(
                (min(eva, e.end) - max(va, e.start)) >> PAGE_SHIFT
                for e in sp.map.in_range(va, eva)
                if not e.wired_count
            )
            if npages + self.pages.wired > self.pages.npages:
                # sys_mlock's wiredmax check: it could never succeed; refuse before
                # faulting anything (and before looping over a huge range).
                raise UserError(Errno.EAGAIN, f"mlock of {npages} pages: more than RAM can wire")
            for e in self._clip(sp, va, eva):
                e.wired_count += 1
                if e.wired_count == 1:
                    for page in range(e.start, e.end, PAGE_SIZE):
                        await fault_locked(self, sp, page, e.prot, wire=True)
            self.stats.wirings += 1

    async def unwire(self, asid: int, owner: int, va: int, length: int) -> None:
        """munlock: the last unwiring of an entry puts its pages back on the queues."""
        async with self._mapped_range(asid, owner, va, length, "munlock") as (sp, eva):
            for e in self._clip(sp, va, eva):
                if e.wired_count == 0:
                    continue
                e.wired_count -= 1
                if e.wired_count:
                    continue
                await self.pmap.unwire(asid, e.start, e.end)
                for pfn in self.resident_pages(e):
                    if self.pages.wire_count[pfn]:
                        self.pages.unwire(pfn)

    def resident_pages(self, e: MapEntry) -> list[int]:
        """The frames an entry resolves to today (anon layer first, then object), in page
        order. => O(used slots + the object's resident pages), never O(e.npages)."""
        found: dict[int, int] = {}
        if e.amap is not None:
            for slot, anon in e.amap.used():
                found[slot] = anon.page  # NIL when swapped: the object page is hidden
        if e.obj is not None:
            base = e.pgoff(e.start)
            for pgoff, pfn in e.obj.pages.items():
                slot = pgoff - base
                if 0 <= slot < e.npages and slot not in found:
                    found[slot] = pfn
        return [pfn for _, pfn in sorted(found.items()) if pfn != NIL]

    # -- msync --------------------------------------------------------------------------

    async def msync(self, asid: int, owner: int, va: int, length: int) -> int:
        """Write the dirty file pages of shared mappings in the range. => pages written."""
        from machine.uvm.pager import flush_object

        async with self._mapped_range(asid, owner, va, length, "msync") as (sp, eva):
            n = 0
            for e in sp.map.in_range(va, eva):
                if e.obj is not None and e.obj.pgops.writes_back and not e.cow:
                    lo, hi = max(va, e.start), min(eva, e.end)
                    n += await flush_object(self, e.obj, e.pgoff(lo), e.pgoff(hi))
            return n

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
