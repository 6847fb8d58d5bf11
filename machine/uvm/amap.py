"""vm_amap: the anon layer of map entries (sparse slots of anons, copy-on-write by reference).

Structure (NetBSD's, kept so the slot/back-pointer equation can be checked):
  nslot        number of slots (am_nslot)
  anon[X]      the anon in slot X (am_anon); a slot without a key is empty
  slots        packed list of the used slot numbers (am_slots)
  bckptr[X]    index of X in `slots` (am_bckptr), for every used slot X
  ref          number of map entries referring to this amap (am_ref)
  shared       AMAP_SHARED: entries of several processes refer to it as one memory
               (fork of a private entry inherited MAP_INHERIT_SHARE); cleared when
               ref falls to 1, as amap_unref does
  ppref        the references' slot ranges (am_ppref), a Counter of (first slot,
               nslots) -> entries; None while every reference covers [0, nslot)
An entry refers to slots [aoff, aoff + npages) of its amap (MapEntry.aoff, NetBSD's
aref.ar_pageoff): the page at va is slot aoff + (va - start) / PAGE_SIZE.
Invariants (check(), and audit.py for what needs the map entries):
  AM1  for every X in anon, 0 <= X < nslot and slots[bckptr[X]] == X;
       len(slots) == len(anon) == len(bckptr) == number of used slots (am_nused).
  AM2  ref == the entries referring to the amap; ppref (or [0, nslot) x ref) is the
       multiset of their ranges; a shared amap has ref > 1 and no NEEDSCOPY entry.
  AM3  every used slot lies in some reference's range: an anon nobody can reach is
       freed at once (amap_pp_adjref's wipe), never kept until the amap dies.

Memory follows use: NetBSD's am_anon and am_bckptr are arrays of nslot
entries, and amap_copy clips a large entry to UVM_AMAP_CHUNK pages around
the fault so that a huge, sparsely touched mapping does not cost an array
per virtual page. Here `anon` and `bckptr` are dicts keyed by slot, so an
amap costs O(used slots) whatever nslot is, and every operation (lookup,
add, unadd, used, copy, split, check) costs O(used slots) at most, never
O(nslot): a 2^40-byte mapping with one page touched holds one anon. ppref
holds one key per distinct reference range (a few), not a count per slot.

Sharing, two kinds:
  * copy-on-write after fork: both entries carry NEEDSCOPY; the first write through
    either makes that entry's own copy (copy(): same anons, each anon's ref + 1).
  * one memory (AMAP_SHARED, minherit SHARE of a private entry): the entries write
    into the amap itself, so every store, zero-fill and promotion is seen by all.
Splitting an entry (clip) whose amap is unshared (ref 1) cuts the amap in two
(split(), after trim() drops the slots outside the entry); an amap with other
references is split by reference instead (splitref(): both pieces keep referring
to the same amap at their offsets, NetBSD's amap_splitref), so a shared amap stays
shared whichever process clips it. unreference() drops one reference's range and
frees the anons no remaining reference covers.
cf. NetBSD sys/uvm/uvm_amap.c (amap_ref, amap_unref, amap_splitref, amap_pp_adjref;
concepts only).
"""

from __future__ import annotations

from collections import Counter

from machine.kassert import kassert
from machine.uvm.anon import Anon


class Amap:
    __slots__ = ("anon", "bckptr", "nslot", "ppref", "ref", "shared", "slots")  # keep it small

    def __init__(self, nslot: int) -> None:
        self.nslot = nslot
        self.anon: dict[int, Anon] = {}
        self.bckptr: dict[int, int] = {}
        self.slots: list[int] = []
        self.ref = 1
        self.shared = False
        self.ppref: Counter[tuple[int, int]] | None = None

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
        """Cut an unshared amap at slot `at`; self keeps [0, at), the result holds the rest.

        => ref == 1 and the one reference covers every slot (trim() first)."""
        kassert(self.ref == 1, "amap split while shared (ref %d)", self.ref)
        kassert(self.ppref is None, "amap split of a partly referenced amap")
        upper = Amap(self.nslot - at)
        for slot, anon in self.used(at):
            self.unadd(slot)
            upper.add(slot - at, anon)
        self.nslot = at
        return upper

    # -- references (amap_ref, amap_unref, amap_splitref) -------------------------------

    def _ranges(self) -> Counter[tuple[int, int]]:
        """ppref, made explicit (am_ppref's lazy allocation)."""
        if self.ppref is None:
            self.ppref = Counter({(0, self.nslot): self.ref})
        return self.ppref

    def reference(self, off: int, n: int, shared: bool = False) -> None:
        """amap_ref: one more entry refers to slots [off, off+n) (shared: AMAP_SHARED)."""
        kassert(0 <= off and off + n <= self.nslot, "amap_ref: [%d, +%d) out of range", off, n)
        if self.ppref is not None or (off, n) != (0, self.nslot):
            self._ranges()[off, n] += 1
        self.ref += 1
        if shared:
            self.shared = True

    def splitref(self, off: int, n: int, at: int) -> None:
        """amap_splitref: the reference to [off, off+n) becomes two, [off, off+at) and
        [off+at, off+n): one more reference, no anon moves."""
        kassert(0 < at < n, "amap_splitref: split at %d of %d", at, n)
        ranges = self._ranges()
        kassert(ranges[off, n] > 0, "amap_splitref: no reference [%d, +%d)", off, n)
        ranges[off, n] -= 1
        if not ranges[off, n]:
            del ranges[off, n]
        ranges[off, at] += 1
        ranges[off + at, n - at] += 1
        self.ref += 1

    def unreference(self, off: int, n: int) -> list[Anon]:
        """amap_unref of the reference to [off, off+n). => the anons no reference covers
        any more, taken out of their slots (the caller drops one ref of each)."""
        kassert(self.ref > 0, "amap_unref: ref %d", self.ref)
        self.ref -= 1
        if self.ref <= 1:
            self.shared = False  # AMAP_SHARED ends with the last sharer
        if self.ref == 0:
            self.ppref = None
            return [self.unadd(slot) for slot, _ in self.used()]
        if self.ppref is None:
            kassert((off, n) == (0, self.nslot), "amap_unref: [%d, +%d) not referenced", off, n)
            return []
        kassert(self.ppref[off, n] > 0, "amap_unref: no reference [%d, +%d)", off, n)
        self.ppref[off, n] -= 1
        if not self.ppref[off, n]:
            del self.ppref[off, n]
        gone = [s for s, _ in self.used(off, off + n) if not self.covered(s)]
        if set(self.ppref) == {(0, self.nslot)}:
            self.ppref = None  # every reference whole again
        return [self.unadd(s) for s in gone]

    def covered(self, slot: int) -> bool:
        """Does some reference's range hold the slot?"""
        if self.ppref is None:
            return 0 <= slot < self.nslot and self.ref > 0
        return any(o <= slot < o + k for o, k in self.ppref)

    def trim(self, off: int, n: int) -> None:
        """Make an amap of one reference, to [off, off+n), exactly that range: slots move
        down by off, nslot becomes n. => ref == 1; no anon lies outside the range (AM3)."""
        kassert(self.ref == 1, "amap trim while shared (ref %d)", self.ref)
        used = self.used()
        kassert(all(off <= s < off + n for s, _ in used), "amap trim: anon outside the range")
        self.anon, self.bckptr, self.slots = {}, {}, []
        self.nslot, self.ppref = n, None
        for s, anon in used:
            self.add(s - off, anon)

    def check(self) -> list[str]:
        """AM1, AM3 and the ppref counts of AM2, in O(used slots x ranges)."""
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
            if not self.covered(s):
                problems.append(f"AM3: slot {s} holds anon {self.anon[s].id} no entry refers to")
        if self.ppref is not None and self.ppref.total() != self.ref:
            problems.append(f"AM2: ppref counts {self.ppref.total()} references, ref {self.ref}")
        if self.shared and self.ref < 2:
            problems.append(f"AM2: AMAP_SHARED with ref {self.ref}")
        return problems
