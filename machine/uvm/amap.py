"""vm_amap: the anon layer of a map entry (sparse slots of anons, copy-on-write by reference).

Structure (NetBSD's, kept so the slot/back-pointer equation can be checked):
  nslot        number of slots: one per page of the entry (am_nslot)
  anon[X]      the anon in slot X (am_anon); a slot without a key is empty
  slots        packed list of the used slot numbers (am_slots)
  bckptr[X]    index of X in `slots` (am_bckptr), for every used slot X
  ref          number of map entries referring to this amap (am_ref)
Invariant AM1: for every X in anon, 0 <= X < nslot and slots[bckptr[X]] == X;
len(slots) == len(anon) == len(bckptr) == number of used slots (am_nused).

Memory follows use: NetBSD's am_anon and am_bckptr are arrays of nslot
entries, and amap_copy clips a large entry to UVM_AMAP_CHUNK pages around
the fault so that a huge, sparsely touched mapping does not cost an array
per virtual page. Here `anon` and `bckptr` are dicts keyed by slot, so an
amap costs O(used slots) whatever nslot is, and every operation (lookup,
add, unadd, used, copy, split, check) costs O(used slots) at most, never
O(nslot): a 2^40-byte mapping with one page touched holds one anon.

Sharing: an amap is shared only between entries that both carry NEEDSCOPY
(after fork); the first write through either makes that entry's own copy
(copy(): same anons, each anon's ref + 1). An entry is only ever split or
partly unmapped after it has its own amap (ref == 1), so per-page
references (am_ppref) are not needed: amap_splitref becomes split().
cf. NetBSD sys/uvm/uvm_amap.c (concepts only).
"""

from __future__ import annotations

from machine.kassert import kassert
from machine.uvm.anon import Anon


class Amap:
    __slots__ = ("anon", "bckptr", "nslot", "ref", "slots")  # an amap per entry: keep it small

    def __init__(self, nslot: int) -> None:
        self.nslot = nslot
        self.anon: dict[int, Anon] = {}
        self.bckptr: dict[int, int] = {}
        self.slots: list[int] = []
        self.ref = 1

    @property
    def nused(self) -> int:
        return len(self.slots)

    def lookup(self, slot: int) -> Anon | None:
        return self.anon.get(slot)

    def add(self, slot: int, anon: Anon, replace: bool = False) -> None:
        """amap_add: put an anon in a slot (replace: the slot holds one already)."""
        kassert(0 <= slot < self.nslot, "amap_add: slot %d out of %d", slot, self.nslot)
        if replace:
            kassert(slot in self.anon, "amap_add: replacing null anon")
        else:
            kassert(slot not in self.anon, "amap_add: slot %d in use", slot)
            self.bckptr[slot] = len(self.slots)
            self.slots.append(slot)
        self.anon[slot] = anon

    def unadd(self, slot: int) -> Anon:
        """amap_unadd: empty a slot. => the anon that was there."""
        anon = self.anon.pop(slot, None)
        kassert(anon is not None, "amap_unadd: slot %d is empty", slot)
        assert anon is not None
        i = self.bckptr.pop(slot)
        last = self.slots.pop()
        if last != slot:
            self.slots[i] = last
            self.bckptr[last] = i
        return anon

    def used(self, lo: int = 0, hi: int | None = None) -> list[tuple[int, Anon]]:
        """(slot, anon) for the used slots in [lo, hi), in slot order. O(used slots)."""
        hi = self.nslot if hi is None else hi
        return sorted(((s, a) for s, a in self.anon.items() if lo <= s < hi), key=lambda x: x[0])

    def copy(self, lo: int, n: int) -> Amap:
        """amap_copy: a new amap of slots [lo, lo+n) with the same anons, each ref + 1."""
        new = Amap(n)
        for slot, anon in self.used(lo, lo + n):
            anon.ref += 1
            new.add(slot - lo, anon)
        return new

    def split(self, at: int) -> Amap:
        """Cut an unshared amap at slot `at`; self keeps [0, at), the result holds the rest."""
        kassert(self.ref == 1, "amap split while shared (ref %d)", self.ref)
        upper = Amap(self.nslot - at)
        for slot, anon in self.used(at):
            self.unadd(slot)
            upper.add(slot - at, anon)
        self.nslot = at
        return upper

    def check(self) -> list[str]:
        """AM1, in O(used slots)."""
        problems = []
        used = sorted(self.anon)
        if sorted(self.slots) != used or sorted(self.bckptr) != used:
            problems.append(f"AM1: slots {sorted(self.slots)} != used {used}")
        for s in used:
            if not 0 <= s < self.nslot:
                problems.append(f"AM1: slot {s} outside [0, {self.nslot})")
            i = self.bckptr.get(s, -1)
            if not 0 <= i < len(self.slots) or self.slots[i] != s:
                problems.append(f"AM1: slots[bckptr[{s}]] != {s}")
        return problems
