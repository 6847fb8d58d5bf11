"""vm_map and vm_map_entry: an address space's mappings.

A VmMap is a sorted list of non-overlapping MapEntry ranges in user space.
Each entry maps [start, end) with a protection, a maximum protection, an
inheritance (what fork does with it: MAP_INHERIT_SHARE, COPY, NONE, ZERO) and an
advice (madvise NORMAL, RANDOM, SEQUENTIAL: the fault-ahead window, machine.uvm.ahead),
backed by up to two layers (NetBSD's two-level scheme):
  * the upper (anon) layer: `amap` from slot `aoff` (aref.ar_pageoff), slot
    aoff + i <-> page start + i*PAGE_SIZE (machine.uvm.amap: an amap may be shared
    by several entries, each at its own offset);
  * the lower (object) layer: `obj` at byte `offset` (a vnode, or an aobj
    for shared anonymous memory); None for private anonymous memory.
Flags: `cow` (UVM_ET_COPYONWRITE: writes promote into the amap, the object
is never written), `needs_copy` (UVM_ET_NEEDSCOPY: the amap is shared with
another entry after fork and must be copied before a write or any anon is
added), `wired_count` (the wirings asked of it; munlock zeroes it: locks do not
nest, machine.uvm.pageable). A map's `wirefuture` is mlockall's MCL_FUTURE.

Invariants (check()):
  M1  entries are page aligned, non-empty, sorted and do not overlap.
  M2  an entry's slots [aoff, aoff + (end - start) / PAGE_SIZE) lie in its amap
      (an amap with one reference covering every slot is the entry's own: aoff 0,
      exactly its pages); an entry without an amap has aoff 0.
  M3  a shared (non-cow) entry has no amap. (A private entry inherited
      MAP_INHERIT_SHARE keeps `cow` and shares its amap: AMAP_SHARED.)
  M4  size == the sum of the entries' lengths (vm_map.size, the process's
      vsize: what limits.vsize bounds).
  M5  every page of [USER_MIN, first_free) is mapped (NetBSD's first_free
      hint: first fit starts there).
Entry accounting (NetBSD's pool of map entries, bounded by limits.maxentries):
every VmMap of a machine shares one MapEntryPool, and only VmMap's own methods
change its `nentries` (insert +1, clip +1 per split, remove and take_all -1 per
entry gone), so it cannot drift from the maps; each map counts them for its owner
session too, and the pool's FairShare refuses a session past its fair share of
maxentries (machine.share) with ENOMEM, as it refuses the machine's limit:
  E1  pool.nentries == the sum of len(map.entries) over the pool's maps
      (audit.py sums every space).
`reserved` holds the entries a fork has charged for a child it is still
building; insert(reserved=True) turns one into a counted entry. The limit is
checked by the callers (machine.uvm.mmap), before anything changes; VmMap only
counts. An entry costs about 140 bytes of uvm memory (MapEntry has __slots__;
measured with tracemalloc over 2000 entries x 100 forks), its amap apart.
Costs: an entry and its amap cost O(used slots), whatever its length;
insert and lookup are bisections, find_space starts at first_free (packing
a map costs O(log entries) per mmap; a fragmented one, up to O(entries)),
clip and remove O(entries).
cf. NetBSD sys/uvm/uvm_map.c, uvm_map.h (concepts only).
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass

from machine.kassert import kassert
from machine.limits import Limits
from machine.params import PAGE_MASK, PAGE_SHIFT, USER_MIN, USER_TOP, round_page
from machine.proto import Errno, UserError
from machine.proto.types import Prot
from machine.share import FairShare
from machine.uvm.amap import Amap
from machine.uvm.anon import Anon
from machine.uvm.object import UvmObject


def check_range(va: int, length: int) -> int:
    """=> the end VA of [va, va + length) rounded to pages; UserError EINVAL when va is
    not page aligned or the range is outside user space."""
    if va & PAGE_MASK:
        raise UserError(Errno.EINVAL, f"address {va:#x} not page aligned")
    eva = va + round_page(length)
    if not (USER_MIN <= va and eva <= USER_TOP):
        raise UserError(Errno.EINVAL, f"range at {va:#x} outside user space")
    return eva


def page_range(va: int, length: int) -> tuple[int, int]:
    """The pages covering [va, va + length), as NetBSD's system calls round an address
    range (va down to its page, the end up: an unaligned va is no error) and check it
    (range_test). => (start, end); UserError EINVAL when the range wraps past the top
    of the address space or leaves user space [USER_MIN, USER_TOP)."""
    start, end = va & ~PAGE_MASK, round_page(va + length)
    if end >= 1 << 64 or end < start:
        raise UserError(Errno.EINVAL, f"range at {va:#x} of {length:#x} bytes wraps")
    if not (USER_MIN <= start and end <= USER_TOP):
        raise UserError(Errno.EINVAL, f"range at {va:#x} of {length:#x} bytes outside user space")
    return start, end


class Inherit(enum.Enum):
    """MAP_INHERIT_*: what fork does with an entry (uvmspace_fork).

    SHARE: the child refers to the same memory (a private entry's amap is shared:
    AMAP_SHARED); COPY: a copy-on-write copy; NONE: the child has a hole; ZERO: the
    child gets fresh zero-filled private anonymous memory there (MAP_INHERIT_ZERO)."""

    SHARE = "share"
    COPY = "copy"
    NONE = "none"
    ZERO = "zero"


@dataclass(eq=False, slots=True)
class MapEntry:
    start: int
    end: int
    prot: Prot
    max_prot: Prot
    inheritance: Inherit = Inherit.COPY
    obj: UvmObject | None = None
    offset: int = 0  # byte offset of `start` in obj
    amap: Amap | None = None
    cow: bool = True
    needs_copy: bool = False
    wired_count: int = 0
    advice: int = 0  # MADV_NORMAL, MADV_RANDOM or MADV_SEQUENTIAL (UVM_ADV_*)
    aoff: int = 0  # the amap slot of `start` (aref.ar_pageoff)

    @property
    def npages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT

    def slot(self, va: int) -> int:
        """The amap slot that backs va."""
        return self.aoff + ((va - self.start) >> PAGE_SHIFT)

    def anons(self, lo: int = 0, hi: int | None = None) -> list[tuple[int, Anon]]:
        """(page index in the entry, anon) of the used slots of the entry's pages [lo, hi),
        in order. O(used slots of the amap)."""
        if self.amap is None:
            return []
        hi = self.npages if hi is None else hi
        a = self.aoff
        return [(s - a, anon) for s, anon in self.amap.used(a + lo, a + hi)]

    def pgoff(self, va: int) -> int:
        """The object page offset that backs va."""
        return (self.offset + va - self.start) >> PAGE_SHIFT

    def split_at(self, va: int) -> MapEntry:
        """uvm_map_clip: cut at va; self keeps [start, va), the result holds [va, end).

        => the amap (if any) is not NEEDSCOPY-shared (callers unshare first). An amap
           of one reference is cut in two; one with other references (AMAP_SHARED)
           is split by reference: both pieces keep referring to it (amap_splitref).
        """
        kassert(self.start < va < self.end and not va & PAGE_MASK, "clip at bad va %#x", va)
        upper = MapEntry(
            va,
            self.end,
            self.prot,
            self.max_prot,
            self.inheritance,
            self.obj,
            self.offset + (va - self.start),
            None,
            self.cow,
            self.needs_copy,
            self.wired_count,
            self.advice,
        )
        at = (va - self.start) >> PAGE_SHIFT
        if self.amap is not None and self.amap.ref > 1:
            kassert(not self.needs_copy, "clip of a NEEDSCOPY entry at %#x", va)
            self.amap.splitref(self.aoff, self.npages, at)
            upper.amap, upper.aoff = self.amap, self.aoff + at
        elif self.amap is not None:
            if self.aoff or self.amap.nslot != self.npages or self.amap.ppref is not None:
                self.amap.trim(self.aoff, self.npages)  # the leftover of a shared amap
                self.aoff = 0
            upper.amap = self.amap.split(at)
            # an empty piece holds no amap (as a fresh entry): clipping an entry into
            # many pieces costs one amap per piece that holds anons, not per piece
            if not upper.amap.nused:
                upper.amap = None
            if not self.amap.nused:
                self.amap = None
        if self.obj is not None:
            self.obj.refs += 1
        self.end = va
        return upper


class MapEntryPool:
    """The map entries of the whole machine (NetBSD's uvm_map_entry pool): a count, and
    per session (each map's owner) the entries its maps hold plus those reserved for it:
    maxentries' fair shares (machine.share; `share.total == nentries + reserved`).

    => nentries: entries in maps (E1); reserved: charged for a fork's child not yet
       inserted. Both only grow and shrink through VmMap's methods and reserve()/
       unreserve(); the caller checks refusal() first."""

    def __init__(self, share: FairShare | None = None) -> None:
        self.nentries = 0
        self.reserved = 0
        self.share = share or FairShare("maxentries", Limits().maxentries, (), "map entries")

    def refusal(self, owner: int, n: int) -> str:
        """=> "" when session owner may make n more entries (maxentries and its fair
        share), else why not."""
        return "" if self.share.grants(owner, n) else self.share.refusal(owner, n)

    def add(self, owner: int, n: int) -> None:
        """n entries more (n < 0: fewer) in owner's maps."""
        self.nentries += n
        if n >= 0:
            self.share.take(owner, n)
        else:
            self.share.give(owner, -n)

    def reserve(self, owner: int, n: int) -> None:
        """Set n entries aside for a map being built (fork's child)."""
        self.reserved += n
        self.share.take(owner, n)

    def unreserve(self, owner: int, n: int) -> None:
        """Give back reserved entries that were not inserted (a fork that failed)."""
        self.reserved -= n
        kassert(self.reserved >= 0, "map entry pool: reserved %d < 0", self.reserved)
        self.share.give(owner, n)


class VmMap:
    """The entries of one address space, sorted by start."""

    def __init__(self, pool: MapEntryPool | None = None, owner: int = 0) -> None:
        self.pool = pool if pool is not None else MapEntryPool()  # None: a map of its own
        self.owner = owner  # the session whose share of the pool its entries count in
        self.entries: list[MapEntry] = []
        self._starts: list[int] = []
        self.size = 0  # bytes mapped (vm_map.size)
        self.first_free = USER_MIN  # M5: no free page below it
        self.wirefuture = False  # VM_MAP_WIREFUTURE: mlockall(MCL_FUTURE) (a fresh map: not)
        self.all_locked = False  # wirefuture and every accessible entry wired (W3)

    def _reindex(self) -> None:
        self.entries.sort(key=lambda e: e.start)
        self._starts = [e.start for e in self.entries]

    def lookup(self, va: int) -> MapEntry | None:
        i = bisect.bisect_right(self._starts, va) - 1
        if i >= 0 and va < self.entries[i].end:
            return self.entries[i]
        return None

    def is_free(self, start: int, end: int) -> bool:
        i = bisect.bisect_left(self._starts, end)
        return i == 0 or self.entries[i - 1].end <= start

    def covers(self, start: int, end: int) -> bool:
        """Is every page of [start, end) mapped?"""
        va = start
        for e in self.in_range(start, end):
            if e.start > va:
                return False
            va = e.end
        return va >= end

    def find_space(self, length: int, hint: int = 0) -> int | None:
        """First fit at or after max(hint, USER_MIN). => start VA, or None if no room.

        => the scan starts at max(hint, first_free), found by bisection; a scan from
           first_free moves first_free up to the lowest free page it finds (M5)."""
        from_bottom = hint <= self.first_free
        start = max(hint, USER_MIN, self.first_free)
        i = bisect.bisect_right(self._starts, start) - 1
        if i >= 0 and self.entries[i].end > start:
            start = self.entries[i].end
        i += 1
        while i < len(self.entries):
            e = self.entries[i]
            if start < e.start:  # a hole [start, e.start)
                if from_bottom:
                    self.first_free, from_bottom = start, False
                if start + length <= e.start:
                    return start
            start = max(start, e.end)
            i += 1
        if from_bottom:
            self.first_free = start
        return start if start + length <= USER_TOP else None

    def insert(self, entry: MapEntry, reserved: bool = False) -> None:
        """Add an entry (counted in the pool; reserved: one of the pool's reservations)."""
        i = bisect.bisect_left(self._starts, entry.start)
        self.entries.insert(i, entry)
        self._starts.insert(i, entry.start)
        self.size += entry.end - entry.start
        if reserved:
            self.pool.unreserve(self.owner, 1)
        self.pool.add(self.owner, 1)

    def in_range(self, start: int, end: int) -> list[MapEntry]:
        return [e for e in self.entries if e.start < end and e.end > start]

    def clip(self, start: int, end: int) -> list[MapEntry]:
        """Split entries so that start and end are entry boundaries. => entries inside.

        => entries that get split are not NEEDSCOPY-shared (callers unshare first).
        """
        out: list[MapEntry] = []
        for e in self.in_range(start, end):
            if e.start < start:
                upper = e.split_at(start)
                self.entries.append(upper)
                self.pool.add(self.owner, 1)
                e = upper
            if e.end > end:
                self.entries.append(e.split_at(end))
                self.pool.add(self.owner, 1)
            out.append(e)
        self._reindex()
        return out

    def remove(self, doomed: list[MapEntry]) -> None:
        """=> every entry of doomed is in the map."""
        ids = {id(e) for e in doomed}
        kept = [e for e in self.entries if id(e) not in ids]
        kassert(len(kept) + len(ids) == len(self.entries), "vm_map remove: entry not in map")
        self.pool.add(self.owner, len(kept) - len(self.entries))
        self.entries = kept
        self.size -= sum(e.end - e.start for e in doomed)
        self.first_free = min([self.first_free, *(e.start for e in doomed)])
        self._reindex()

    def take_all(self) -> list[MapEntry]:
        """Empty the map (exit). => the entries it held."""
        entries, self.entries, self._starts, self.size = self.entries, [], [], 0
        self.pool.add(self.owner, -len(entries))
        self.first_free = USER_MIN
        return entries

    def check(self) -> list[str]:
        problems: list[str] = []
        prev_end = 0
        for e in self.entries:
            if e.start & PAGE_MASK or e.end & PAGE_MASK or e.start >= e.end:
                problems.append(f"M1: bad entry [{e.start:#x}, {e.end:#x})")
            if e.start < prev_end:
                problems.append(f"M1: entry at {e.start:#x} overlaps its predecessor")
            prev_end = e.end
            if e.amap is not None and not 0 <= e.aoff <= e.amap.nslot - e.npages:
                problems.append(
                    f"M2: entry at {e.start:#x}: slots [{e.aoff}, +{e.npages}) outside its "
                    f"amap of {e.amap.nslot}"
                )
            if e.amap is not None and e.amap.ppref is None and (e.aoff or e.amap.nslot != e.npages):
                problems.append(f"M2: entry at {e.start:#x}: a whole reference at {e.aoff}")
            if e.amap is None and e.aoff:
                problems.append(f"M2: entry at {e.start:#x}: offset {e.aoff} without an amap")
            if not e.cow and e.amap is not None:
                problems.append(f"M3: shared entry at {e.start:#x} has an amap")
        if self._starts != [e.start for e in self.entries]:
            problems.append("M1: start index stale")
        if self.size != sum(e.end - e.start for e in self.entries):
            problems.append(f"M4: size {self.size} != the entries' total length")
        if self.first_free > USER_MIN and not self.covers(USER_MIN, self.first_free):
            problems.append(f"M5: a free page below first_free {self.first_free:#x}")
        return problems
