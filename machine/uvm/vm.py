"""The uvm core: address spaces (vmspaces), mmap/munmap, faults, exit, sessions.

One Uvm holds every vm_page (VmPages), every address space and the anons.
It performs page-table changes only through the injected PmapOps, and it
touches RAM itself (zero-fill).

Ordering rules (why the machine never maps a freed frame):
  * munmap and exit remove translations from the mmu first and free frames
    only after the mmu has acknowledged.
  * Every operation on one address space holds that space's lock across its
    awaits; a fault therefore never races an munmap or exit of the same
    space. Different spaces proceed concurrently.
  * A page is BUSY from allocation until its mapping is entered.

Invariants (audit.py checks them together with VmPages.check and the mmu):
  U1  every resident anon's page is owned by it (uanon == anon.id, PG_ANON).
  U2  every frame is free or owned by exactly one live anon (conservation):
      free + (resident anon pages) == npages.
  U3  every mmu mapping of a user space points at the page of the anon at
      that vpn, with a protection no wider than the entry's.
cf. NetBSD sys/uvm/uvm_map.c, uvm_fault.c, uvm_mmap.c, uvm_glue.c.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from machine.kassert import kassert
from machine.params import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE, USER_MIN, USER_TOP, round_page
from machine.proto.types import Prot
from machine.ram import Ram
from machine.uvm.map import Anon, MapEntry, VmMap
from machine.uvm.page import NIL, PageFlag, VmPages
from machine.uvm.pmapops import PmapOps
from machine.uvm.stats import UvmStats


class VmError(Exception):
    """A client error: errno name + detail; the operation changed nothing."""

    def __init__(self, errno: str, detail: str) -> None:
        super().__init__(detail)
        self.errno = errno
        self.detail = detail


class Segv(VmError):
    """The fault cannot be resolved: the process gets SIGSEGV."""

    def __init__(self, detail: str) -> None:
        super().__init__("EFAULT", detail)


@dataclass(slots=True)
class VmSpace:
    asid: int
    owner: int  # client session id
    map: VmMap = field(default_factory=VmMap)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    dead: bool = False


def tune(npages: int) -> tuple[int, int]:
    """Modern uvmpd_tune: freemin = npages/200 clamped to [128 KiB, 1 MiB]; freetarg = 4/3."""
    lo, hi = (128 << 10) // PAGE_SIZE, (1 << 20) // PAGE_SIZE
    freemin = min(max(npages // 200, lo), hi)
    freemin = min(freemin, max(npages // 4, 1))  # tiny machines keep most frames usable
    return freemin, max(freemin * 4 // 3, freemin + 1)


class Uvm:
    """The machine-independent VM state of the whole machine."""

    def __init__(
        self, ram: Ram, pmap: PmapOps, on_pressure: Callable[[int], None] | None = None
    ) -> None:
        self.ram = ram
        self.pmap = pmap
        self.pages = VmPages(ram.nframes)
        self.spaces: dict[int, VmSpace] = {}
        self.stats = UvmStats()
        self.freemin, self.freetarg = tune(ram.nframes)
        self._asids = itertools.count(1)
        self._anon_ids = itertools.count(1)
        self._on_pressure = on_pressure
        self._under_pressure = False

    # -- address spaces -------------------------------------------------------

    def space(self, asid: int, owner: int) -> VmSpace:
        """The caller's space. => VmError ESRCH (unknown) / EPERM (another client's)."""
        sp = self.spaces.get(asid)
        if sp is None or sp.dead:
            raise VmError("ESRCH", f"no process with asid {asid}")
        if sp.owner != owner:
            raise VmError("EPERM", f"address space {asid} belongs to another client")
        return sp

    async def spawn(self, owner: int) -> int:
        asid = next(self._asids)
        await self.pmap.create(asid, owner)
        self.spaces[asid] = VmSpace(asid, owner)
        self.stats.spawns += 1
        return asid

    async def mmap(
        self, asid: int, owner: int, length: int, prot: Prot, va: int = 0, fixed: bool = False
    ) -> int:
        """uvm_map of anonymous private memory. => start VA."""
        sp = self.space(asid, owner)
        length = round_page(length)
        if va & PAGE_MASK:
            raise VmError("EINVAL", f"mmap address {va:#x} not page aligned")
        async with sp.lock:
            if fixed:
                if not (USER_MIN <= va and va + length <= USER_TOP):
                    raise VmError("EINVAL", f"mmap range at {va:#x} outside user space")
                if not sp.map.is_free(va, va + length):
                    raise VmError("EINVAL", f"mmap range at {va:#x} overlaps a mapping")
                start = va
            else:
                found = sp.map.find_space(length, va)
                if found is None:
                    raise VmError("ENOMEM", f"no room for {length} bytes in the address space")
                start = found
            sp.map.insert(
                MapEntry(start, start + length, prot, Prot.READ | Prot.WRITE | Prot.EXECUTE)
            )
            self.stats.mmaps += 1
            return start

    async def munmap(self, asid: int, owner: int, va: int, length: int) -> int:
        """uvm_unmap: translations go first, then the frames. => pages freed."""
        sp = self.space(asid, owner)
        if va & PAGE_MASK:
            raise VmError("EINVAL", f"munmap address {va:#x} not page aligned")
        eva = va + round_page(length)
        if not (USER_MIN <= va and eva <= USER_TOP):
            raise VmError("EINVAL", f"munmap range at {va:#x} outside user space")
        async with sp.lock:
            await self.pmap.remove(asid, va, eva)
            freed = 0
            for e in sp.map.carve(va, eva):
                freed += self._free_anons(e)
            self.stats.munmaps += 1
            return freed

    async def exit(self, asid: int, owner: int, reason: str = "exit") -> int:
        """Process exit: remove the pmap, free every frame. => pages freed."""
        sp = self.space(asid, owner)
        async with sp.lock:
            if sp.dead:
                return 0
            sp.dead = True
            await self.pmap.destroy(asid)
            freed = sum(self._free_anons(e) for e in sp.map.entries)
            sp.map.entries.clear()
            del self.spaces[asid]
            self.stats.exits += 1
            if reason != "exit":
                self.stats.reaped += 1
            return freed

    def asids_of(self, owner: int) -> list[int]:
        return sorted(a for a, sp in self.spaces.items() if sp.owner == owner and not sp.dead)

    def _free_anons(self, e: MapEntry) -> int:
        n = 0
        for anon in e.anons.values():
            anon.ref -= 1
            kassert(anon.ref >= 0, "uvm_anfree: anon %d ref < 0", anon.id)
            if anon.ref == 0 and anon.page != NIL:
                kassert(
                    self.pages.uanon[anon.page] == anon.id,
                    "uvm_anfree: page %d not owned by anon %d",
                    anon.page,
                    anon.id,
                )
                self.pages.free_page(anon.page)
                anon.page = NIL
                self.stats.pgfrees += 1
                n += 1
        e.anons.clear()
        if n:
            self._check_pressure()
        return n

    # -- faults ---------------------------------------------------------------

    async def fault(self, asid: int, owner: int, va: int, access: Prot) -> int:
        """uvm_fault for anonymous memory. => the pfn now mapped at va.

        => Segv when no entry covers va or its protection forbids `access`.
        => VmError ENOMEM (fltnoram) when no frame is free.
        """
        sp = self.space(asid, owner)
        self.stats.faults += 1
        async with sp.lock:
            if sp.dead:
                raise VmError("ESRCH", f"process {asid} exited")
            entry = sp.map.lookup(va)
            if entry is None:
                self.stats.segv += 1
                raise Segv(f"no mapping at {va:#x}")
            if access & ~entry.prot:
                self.stats.segv += 1
                raise Segv(
                    f"{Prot(access).letters()} access to {va:#x} in a "
                    f"{entry.prot.letters()} mapping"
                )
            vpn = va >> PAGE_SHIFT
            anon = entry.anons.get(vpn)
            if anon is None:
                pfn = self._zero_fill(entry, vpn)
            else:
                pfn = anon.page
                self.stats.flt_anon += 1
            await self.pmap.enter(asid, vpn << PAGE_SHIFT, pfn, int(entry.prot), 0)
            if self.pages.flags[pfn] & PageFlag.BUSY:
                self.pages.unbusy(pfn)
            return pfn

    def _zero_fill(self, entry: MapEntry, vpn: int) -> int:
        anon = Anon(next(self._anon_ids))
        pfn = self.pages.alloc(anon=anon.id)
        if pfn == NIL:
            self.stats.fltnoram += 1
            self._check_pressure()
            raise VmError(
                "ENOMEM",
                "out of memory: no free frame (the page daemon reclaims memory in a later issue)",
            )
        self.ram.zero(pfn)
        self.stats.zeropages += 1
        self.stats.flt_przero += 1
        anon.page = pfn
        entry.anons[vpn] = anon
        self.pages.activate(pfn)
        self._check_pressure()
        return pfn

    def _check_pressure(self) -> None:
        low = self.pages.free.count < self.freemin
        if low and not self._under_pressure:
            self.stats.pressure_events += 1
            if self._on_pressure is not None:
                self._on_pressure(self.pages.free.count)
        self._under_pressure = low

    # -- reporting --------------------------------------------------------------

    def frames(self) -> dict[str, int]:
        p = self.pages
        return {
            "total": p.npages,
            "free": p.free.count,
            "active": p.active.count,
            "inactive": p.inactive.count,
            "wired": p.wired,
            "freemin": self.freemin,
            "freetarg": self.freetarg,
        }

    def resident_anons(self) -> dict[int, tuple[int, int, Anon]]:
        """pfn -> (asid, vpn, anon) for every resident anon page."""
        out: dict[int, tuple[int, int, Anon]] = {}
        for asid, sp in self.spaces.items():
            for e in sp.map.entries:
                for vpn, anon in e.anons.items():
                    if anon.page != NIL:
                        out[anon.page] = (asid, vpn, anon)
        return out
