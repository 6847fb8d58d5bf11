"""vm_map and vm_map_entry: an address space's mappings, and anons.

A VmMap is a sorted list of non-overlapping MapEntry ranges in user space.
Each entry has a protection, a maximum protection and an inheritance, and
(for now) only anonymous memory: `anons` maps a virtual page number to the
Anon that holds its data. (Objects, amaps with slot/back-pointer arrays,
COPYONWRITE/NEEDSCOPY and wiring arrive with the UVM core issue.)

Invariants (check()):
  M1  entries are page aligned, non-empty, sorted and do not overlap.
  M2  every anon key of an entry lies inside the entry.
  M3  an anon's page, when resident, is owned by that anon (uanon == id,
      PG_ANON set) — checked against VmPages by the auditor.
cf. NetBSD sys/uvm/uvm_map.c, uvm_anon.c (concepts only).
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field

from machine.params import PAGE_MASK, PAGE_SHIFT, USER_MIN, USER_TOP
from machine.proto.types import Prot
from machine.uvm.page import NIL


class Inherit(enum.Enum):
    """MAP_INHERIT_*: what fork does with an entry."""

    SHARE = "share"
    COPY = "copy"
    NONE = "none"


@dataclass(slots=True)
class Anon:
    """vm_anon: one page of anonymous memory. [u] fields."""

    id: int
    ref: int = 1  # references from maps (and, later, loans)
    page: int = NIL  # resident frame, or NIL
    swslot: int = 0  # swap slot, 0 = none


@dataclass(slots=True)
class MapEntry:
    start: int
    end: int
    prot: Prot
    max_prot: Prot
    inheritance: Inherit = Inherit.COPY
    anons: dict[int, Anon] = field(default_factory=dict)  # vpn -> anon

    def split_at(self, va: int) -> MapEntry:
        """Cut this entry at va; returns the upper part (self keeps [start, va))."""
        cut = va >> PAGE_SHIFT
        upper = MapEntry(va, self.end, self.prot, self.max_prot, self.inheritance)
        for vpn in [v for v in self.anons if v >= cut]:
            upper.anons[vpn] = self.anons.pop(vpn)
        self.end = va
        return upper


class VmMap:
    """The entries of one address space, sorted by start."""

    def __init__(self) -> None:
        self.entries: list[MapEntry] = []
        self._starts: list[int] = []

    def _reindex(self) -> None:
        self._starts = [e.start for e in self.entries]

    def lookup(self, va: int) -> MapEntry | None:
        i = bisect.bisect_right(self._starts, va) - 1
        if i >= 0 and va < self.entries[i].end:
            return self.entries[i]
        return None

    def is_free(self, start: int, end: int) -> bool:
        i = bisect.bisect_left(self._starts, end)
        return i == 0 or self.entries[i - 1].end <= start

    def find_space(self, length: int, hint: int = 0) -> int | None:
        """First fit at or after max(hint, USER_MIN). => start VA, or None if no room."""
        start = max(hint, USER_MIN)
        for e in self.entries:
            if e.end <= start:
                continue
            if start + length <= e.start:
                return start
            start = max(start, e.end)
        return start if start + length <= USER_TOP else None

    def insert(self, entry: MapEntry) -> None:
        i = bisect.bisect_left(self._starts, entry.start)
        self.entries.insert(i, entry)
        self._reindex()

    def carve(self, sva: int, eva: int) -> list[MapEntry]:
        """Split entries at sva and eva, then take out and return those inside [sva, eva)."""
        out: list[MapEntry] = []
        keep: list[MapEntry] = []
        for e in self.entries:
            if e.end <= sva or e.start >= eva:
                keep.append(e)
                continue
            if e.start < sva:
                upper = e.split_at(sva)
                keep.append(e)
                e = upper
            if e.end > eva:
                keep.append(e.split_at(eva))
            out.append(e)
        keep.sort(key=lambda x: x.start)
        self.entries = keep
        self._reindex()
        return out

    def check(self) -> list[str]:
        problems: list[str] = []
        prev_end = 0
        for e in self.entries:
            if e.start & PAGE_MASK or e.end & PAGE_MASK or e.start >= e.end:
                problems.append(f"M1: bad entry [{e.start:#x}, {e.end:#x})")
            if e.start < prev_end:
                problems.append(f"M1: entry at {e.start:#x} overlaps its predecessor")
            prev_end = e.end
            for vpn in e.anons:
                if not (e.start >> PAGE_SHIFT <= vpn < e.end >> PAGE_SHIFT):
                    problems.append(f"M2: anon at {vpn << PAGE_SHIFT:#x} outside its entry")
        if self._starts != [e.start for e in self.entries]:
            problems.append("M1: start index stale")
        return problems
