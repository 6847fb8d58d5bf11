"""Loan KVA: the kernel VA an mbuf's loaned pages are entered at (sokvareserve/sokvaunreserve).

The arena (from KVA_BASE) is cut into slots of KVA_SLOT_PAGES pages; one loaned mbuf
takes one slot, whatever its size, so the arena cannot fragment: any free slot fits any
chunk (a chunk is at most a loan chunk of bytes, far below a slot). What is bounded is
the loan KVA in use, `socurkva` (the pages of every reservation, in bytes), against
`somaxkva` (SOMAXKVA, or what net.link set): a reservation that would pass it waits.

Invariants:
  * 0 <= socurkva <= somaxkva after every reserve (somaxkva lowered by net.link may
    leave socurkva above it until enough is freed: reservations wait meanwhile);
  * a slot is held by at most one reservation; its VA range
    [kva, kva + KVA_SLOT_PAGES pages) overlaps no other slot's;
  * free() takes back exactly what reserve() gave (a slot not held is a panic);
  * freed slots are reused first, the most recently freed first (LIFO).
"""

from __future__ import annotations

from machine.kassert import kassert
from machine.net.knobs import KVA_BASE, KVA_SLOT_PAGES, SOMAXKVA, new_stats
from machine.net.synch import WaitChannel
from machine.params import PAGE_SHIFT, PAGE_SIZE

SLOT_BYTES = KVA_SLOT_PAGES * PAGE_SIZE


class KvaArena:
    """The loan KVA arena and its accounting."""

    def __init__(
        self, chan: WaitChannel, stats: dict[str, int] | None = None, somaxkva: int = SOMAXKVA
    ) -> None:
        self.chan = chan  # woken on every free
        self.stats = stats if stats is not None else new_stats()  # counts kvawaits
        self.somaxkva = somaxkva
        self.socurkva = 0
        self._free_slots: list[int] = []
        self._next_slot = 0
        self._held: set[int] = set()

    @property
    def slots_held(self) -> int:
        return len(self._held)

    def fits(self, npages: int) -> bool:
        """Would a reservation of npages pass somaxkva now?"""
        return self.socurkva + (npages << PAGE_SHIFT) <= self.somaxkva

    async def reserve(self, npages: int) -> int:
        """Reserve loan KVA for npages (at most KVA_SLOT_PAGES), waiting while it would
        pass somaxkva. => the slot's base VA."""
        kassert(0 < npages <= KVA_SLOT_PAGES, "sokvareserve: %d pages", npages)
        if not self.fits(npages):
            self.stats["kvawaits"] += 1
            await self.chan.sleep_until(lambda: self.fits(npages))
        self.socurkva += npages << PAGE_SHIFT
        if self._free_slots:
            slot = self._free_slots.pop()
        else:
            slot = self._next_slot
            self._next_slot += 1
        self._held.add(slot)
        return KVA_BASE + slot * SLOT_BYTES

    def free(self, kva: int, npages: int) -> None:
        """Give back a reservation of npages at kva; wakes every sleeper."""
        slot, off = divmod(kva - KVA_BASE, SLOT_BYTES)
        kassert(off == 0 and slot in self._held, "sokvaunreserve: %#x is not reserved", kva)
        self._held.discard(slot)
        self._free_slots.append(slot)
        self.socurkva -= npages << PAGE_SHIFT
        kassert(self.socurkva >= 0, "sokvaunreserve: socurkva %d < 0", self.socurkva)
        self.chan.wakeup()
