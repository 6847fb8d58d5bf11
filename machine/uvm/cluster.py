"""Pageout clustering: a batch of swap-backed pages gets contiguous swap slots and is
written with one pwrite per run of consecutive slots (NetBSD uvm_pager_put's clusters,
uvm_swap_alloc of `npages` contiguous slots; concepts only).

  swap_cluster(uvm, pages)   the page daemon's pageouts of one uvm.pd_finish, in the
      order the policy decided them: for each cluster of up to CLUSTER (MAXBSIZE >>
      PAGE_SHIFT) pages, the pages without a slot get one contiguous run of slots
      (falling back to smaller runs, down to single slots, as swap fragments or fills:
      a page that gets none is left without a slot, and the per-page evict then
      finds swap full exactly as before); then every dirty page is written, one
      pwrite per run of consecutive slots.
  runs(pairs)                (slot or pgoff, pfn), sorted -> runs of consecutive keys,
      each one SwapDevice.put or VnodeFile.put_run (one pwrite).

Invariants: nothing is written but the frames' bytes, to the slots their owners hold
afterwards (anon.swslot, aobj.swslots[pgoff]); a slot handed out here is owned at
once (swpginuse counts it); the page's state (queues, BUSY, owner) is untouched: the
caller's per-page evict, in the policy's order, does the bookkeeping and finds the
slot set and the data written (dirty=False).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from machine.proto.pageinfo import MODIFIED, PdOp
from machine.uvm.anon import Anon
from machine.uvm.object import AObj, VnodeObject
from machine.uvm.page import NIL, PageFlag
from machine.uvm.state import Uvm
from machine.uvm.swap import CLUSTER, SwapDevice

MAX_RUN = 256  # pages per pwrite (1 MiB)


@dataclass
class Victim:
    """One swap-backed page being paged out: its frame and where its slot lives."""

    pfn: int
    dirty: bool
    anon: Anon | None = None
    obj: AObj | None = None
    pgoff: int = 0

    @property
    def slot(self) -> int:
        if self.anon is not None:
            return self.anon.swslot
        assert self.obj is not None
        return self.obj.swslots.get(self.pgoff, 0)

    def give(self, slot: int) -> None:
        if self.anon is not None:
            self.anon.swslot = slot
        else:
            assert self.obj is not None
            self.obj.swslots[self.pgoff] = slot


def _alloc_runs(sw: SwapDevice, n: int) -> list[tuple[int, int]]:
    """Up to n slots as few contiguous runs as swap allows: => [(first, count)]."""
    runs: list[tuple[int, int]] = []
    want = n
    while n > 0 and want > 0:
        first = sw.alloc(want)
        if first:
            runs.append((first, want))
            n -= want
            want = min(want, n)
        else:
            want //= 2
    return runs


def swap_cluster(uvm: Uvm, victims: list[Victim]) -> None:
    """Give slotless victims contiguous slots per cluster and write every dirty one
    (a page that gets a new slot is dirty by definition: swap holds nothing of it)."""
    sw = uvm.swap
    if sw is None or not victims:
        return
    for i in range(0, len(victims), CLUSTER):
        need = [v for v in victims[i : i + CLUSTER] if not v.slot]
        slots = (s for first, cnt in _alloc_runs(sw, len(need)) for s in range(first, first + cnt))
        for v, s in zip(need, slots, strict=False):
            v.give(s)
            v.dirty = True
    writes = sorted((v.slot, v.pfn) for v in victims if v.slot and v.dirty)
    for first, pfns in runs(writes):
        sw.put(first, uvm.ram, pfns)


def runs(pairs: Iterable[tuple[int, int]]) -> list[tuple[int, list[int]]]:
    """(key, pfn) sorted by key -> [(first key, pfns)] of consecutive keys, <= MAX_RUN."""
    out: list[tuple[int, list[int]]] = []
    for key, pfn in pairs:
        if out and key == out[-1][0] + len(out[-1][1]) and len(out[-1][1]) < MAX_RUN:
            out[-1][1].append(pfn)
        else:
            out.append((key, [pfn]))
    return out


def pageout_io(uvm: Uvm, items: Sequence[tuple[str, int]], mods: dict[int, int]) -> set[int]:
    """The I/O of one uvm.pd_finish's pageouts, clustered, before its per-page bookkeeping.

    Every PAGEOUT item whose page is still claimed (BUSY, not RELEASED) is a victim:
    swap-backed pages go through swap_cluster, file pages are written one pwrite per
    run of consecutive dirty pages of a file. => the pfns whose store now holds their
    data: their evict passes dirty=False (and finds the slot already set).
    """
    pages = uvm.pages
    swapped: list[Victim] = []
    files: dict[int, list[tuple[int, int]]] = {}
    seen: set[int] = set()
    for op, pfn in items:
        if op != PdOp.PAGEOUT or pfn in seen:
            continue
        seen.add(pfn)
        f = pages.flags[pfn]
        if not f & PageFlag.BUSY or f & PageFlag.RELEASED:
            continue
        dirty = bool(mods.get(pfn, 0) & MODIFIED) or not f & PageFlag.CLEAN
        if f & PageFlag.ANON:
            anon = uvm.anons.get(pages.uanon[pfn])
            if anon is not None and uvm.swap is not None:
                swapped.append(Victim(pfn, dirty, anon=anon))
            continue
        obj = uvm.objects.get(pages.uobject[pfn]) if pages.uobject[pfn] != NIL else None
        pgoff = int(pages.offset[pfn])
        if isinstance(obj, AObj) and uvm.swap is not None:
            swapped.append(Victim(pfn, dirty, obj=obj, pgoff=pgoff))
        elif isinstance(obj, VnodeObject) and obj.file is not None and dirty:
            files.setdefault(obj.id, []).append((pgoff, pfn))
    swap_cluster(uvm, swapped)
    out = {v.pfn for v in swapped if v.slot}
    for obj_id, dirty_pages in files.items():
        obj = uvm.objects[obj_id]
        assert isinstance(obj, VnodeObject)
        assert obj.file is not None
        for first, pfns in runs(sorted(dirty_pages)):
            obj.file.put_run(first, uvm.ram, pfns)
            out.update(pfns)
    return out
