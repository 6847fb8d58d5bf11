"""The swap device: a host file of page-sized slots, and its accounting.

Slot 0 means "no slot" (an_swslot == 0), so slot numbers start at 1 and
the device holds `swpages` usable slots in a file of (swpages + 1) pages.

Counters (NetBSD's uvmexp names):
  swpages    usable slots
  swpginuse  slots allocated
  swpgonly   slots whose data exists only on swap (the page is not resident);
             uvm raises it when it frees a resident page that has a slot, and
             lowers it when it pages the data back in or frees the slot.

Allocation is first-fit over a bitmap and can hand out a contiguous cluster
(the pageout code writes clusters of up to 16 pages, MAXBSIZE >> PAGE_SHIFT);
unused slots of a cluster are returned with free().

Invariants (check()): swpginuse == number of allocated slots;
0 <= swpgonly <= swpginuse.
cf. NetBSD sys/uvm/uvm_swap.c (concepts only).
"""

from __future__ import annotations

import os
from pathlib import Path

from machine.kassert import kassert
from machine.params import PAGE_SHIFT, PAGE_SIZE
from machine.ram import Ram

CLUSTER = 16  # MAXBSIZE (64 KiB) >> PAGE_SHIFT


class SwapDevice:
    def __init__(self, path: Path, swpages: int) -> None:
        self.path = path
        self.swpages = swpages
        self.used = bytearray(swpages + 1)
        self.used[0] = 1  # slot 0 is "no slot"
        self.swpginuse = 0
        self.swpgonly = 0
        self.pgswapout = 0
        self.pgswapin = 0
        self._hint = 1
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self.fd, (swpages + 1) * PAGE_SIZE)

    def alloc(self, n: int = 1) -> int:
        """uvm_swap_alloc: n contiguous free slots. => the first slot, or 0 if none."""
        if n <= 0 or self.swpages - self.swpginuse < n:
            return 0
        run = 0
        for start in (self._hint, 1):
            run = 0
            for slot in range(start, self.swpages + 1):
                run = run + 1 if not self.used[slot] else 0
                if run == n:
                    first = slot - n + 1
                    for s in range(first, slot + 1):
                        self.used[s] = 1
                    self.swpginuse += n
                    self._hint = slot + 1 if slot < self.swpages else 1
                    return first
        return 0

    def free(self, slot: int, n: int = 1) -> None:
        """uvm_swap_free: release n slots from `slot`."""
        for s in range(slot, slot + n):
            kassert(
                0 < s <= self.swpages and self.used[s],
                "uvm_swap_free: freeing free or bogus slot %d",
                s,
            )
            self.used[s] = 0
        self.swpginuse -= n
        self._hint = min(self._hint, slot)

    def put(self, slot: int, ram: Ram, pfns: list[int]) -> None:
        """Write frames to consecutive slots from `slot` (the swap pager's put)."""
        kassert(
            all(self.used[slot + i] for i in range(len(pfns))),
            "swap put to unallocated slots at %d",
            slot,
        )
        data = b"".join(bytes(ram.frame(p)) for p in pfns)
        os.pwrite(self.fd, data, slot << PAGE_SHIFT)
        self.pgswapout += len(pfns)

    def get(self, slot: int, ram: Ram, pfn: int) -> None:
        """Read one slot into a frame (the swap pager's get)."""
        kassert(0 < slot <= self.swpages and self.used[slot], "swap get of free slot %d", slot)
        data = os.pread(self.fd, PAGE_SIZE, slot << PAGE_SHIFT)
        ram.frame(pfn)[:] = data
        self.pgswapin += 1

    def check(self) -> list[str]:
        problems = []
        inuse = sum(self.used) - 1
        if inuse != self.swpginuse:
            problems.append(f"swap: swpginuse {self.swpginuse} != {inuse} slots in use")
        if not 0 <= self.swpgonly <= self.swpginuse:
            problems.append(f"swap: swpgonly {self.swpgonly} outside [0, {self.swpginuse}]")
        return problems

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
