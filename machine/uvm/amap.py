"""vm_amap: the anon layer of a map entry (an array of anons, copy-on-write by reference).

Structure (NetBSD's, kept so the slot/back-pointer equation can be checked):
  anon[X]      the anon in slot X, or None
  slots        packed list of the used slot numbers (am_slots)
  bckptr[X]    index of X in `slots` (am_bckptr)
  ref          number of map entries referring to this amap (am_ref)
Invariant AM1: for every X with anon[X] not None, slots[bckptr[X]] == X, and
len(slots) == number of used slots (am_nused).

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
    def __init__(self, nslot: int) -> None:
        self.nslot = nslot
        self.anon: list[Anon | None] = [None] * nslot
        self.bckptr: list[int] = [0] * nslot
        self.slots: list[int] = []
        self.ref = 1

    @property
    def nused(self) -> int:
        return len(self.slots)

    def lookup(self, slot: int) -> Anon | None:
        return self.anon[slot]

    def add(self, slot: int, anon: Anon, replace: bool = False) -> None:
        """amap_add: put an anon in a slot (replace: the slot holds one already)."""
        if replace:
            kassert(self.anon[slot] is not None, "amap_add: replacing null anon")
        else:
            kassert(self.anon[slot] is None, "amap_add: slot %d in use", slot)
            self.bckptr[slot] = len(self.slots)
            self.slots.append(slot)
        self.anon[slot] = anon

    def unadd(self, slot: int) -> Anon:
        """amap_unadd: empty a slot. => the anon that was there."""
        anon = self.anon[slot]
        kassert(anon is not None, "amap_unadd: slot %d is empty", slot)
        assert anon is not None
        i = self.bckptr[slot]
        last = self.slots.pop()
        if last != slot:
            self.slots[i] = last
            self.bckptr[last] = i
        self.anon[slot] = None
        return anon

    def used(self, lo: int = 0, hi: int | None = None) -> list[tuple[int, Anon]]:
        """(slot, anon) for the used slots in [lo, hi), in slot order."""
        hi = self.nslot if hi is None else hi
        out = [(s, self.anon[s]) for s in self.slots if lo <= s < hi]
        out.sort(key=lambda x: x[0])
        return out  # type: ignore[return-value]

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
        del self.anon[at:]
        del self.bckptr[at:]
        return upper

    def check(self) -> list[str]:
        problems = []
        used = [s for s in range(self.nslot) if self.anon[s] is not None]
        if len(used) != len(self.slots) or sorted(self.slots) != used:
            problems.append(f"AM1: slots {sorted(self.slots)} != used {used}")
        for s in used:
            if self.slots[self.bckptr[s]] != s:
                problems.append(f"AM1: slots[bckptr[{s}]] != {s}")
        return problems
