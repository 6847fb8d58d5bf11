"""The kernel's page table in shared memory: loan KVA -> frame, as an IOMMU walks it.

The mmu is the only writer of translations (pmap_kenter_pa / pmap_kremove /
pmap_page_protect(NONE) of a kernel mapping write or clear the entry); net's
driver reads them when a DMA starts, with no message (machine.net.driver). The
table covers the loan KVA arena's first KPT_SLOTS slots (LOAN_KVA_BASE, slots of
LOAN_KVA_SLOT_PAGES pages); a range outside it, or one the reader cannot read
cleanly, is translated by message (pmap.kextract_ranges), as before.

Layout: a segment beside RAM's (`<ram>.kpt` under /dev/shm, sparse: only the pages
of entries ever touched take memory), three arrays of u32, one word per KVA page:
  gen[i]      the entry's generation: odd while the mmu changes it (a seqlock);
  pfn[i]      the frame + 1, or 0: no translation (never entered, or revoked);
  readers[i]  the readers inside the page (a DMA reading from its frame).
The mmu writes gen and pfn only; net writes readers only: no word has two writers,
so no atomic read-modify-write across processes is needed.

The reader protocol (`read`, or `enter` ... `leave`):
  1. readers[i] += 1 for each page (announce: "I am inside this frame");
  2. read gen[i] then pfn[i]; an odd gen (the mmu is writing) retries; pfn 0 is
     the fault (the announcement is withdrawn; the driver asks the mmu why);
  3. copy the bytes from RAM at the pfns;
  4. re-read gen[i]: if any changed, the copy is discarded and the read retried
     (it then sees the cleared entry and faults, or the new one);
  5. readers[i] -= 1.
A DMA that reads later (`pin`, net's zero-copy transmit, machine.net.dma) does steps
1-2 and keeps the reader announced, holding views of the frames instead of a copy,
until its completion (`leave`). Steps 1 and the mmu's check of readers are each
followed by a full barrier (`fence`, a lock's atomic exchange), so of a revocation
and a reader's announcement at least one sees the other: the mmu sees the reader
(its reply waits) or the reader sees the cleared entry (it faults): K2 without the
after-copy check, which a pinned reader cannot make (its bytes leave RAM later).

The revocation (the mmu's `clear`): gen odd, pfn 0, gen even; its reply waits
until readers[i] is 0 for every page it cleared (`inside`: the TLB shootdown the
copy path's holds are, machine.mmu.hold). uvm awaits that reply before it frees or
reuses the page.

Invariants:
  K1  pfn[i] != 0  <=>  the kernel pmap holds a mapping at that page (kept by the
      mmu's pmap, checked by Mmu.check against its ptes);
  K2  no bytes a reader copied are used unless every page's gen was even and the
      same before and after the copy: a copy that overlapped a revocation (or a
      re-enter) is never handed to the wire, even where the store-load reordering
      of step 1 against the mmu's check of readers hid the reader from the mmu;
  K3  a revocation's reply is sent only when no announced reader is inside a page
      it cleared (readers[i] == 0): a reader cannot be inside a frame that uvm
      frees or reuses;
  K4  readers[i] returns to its value before every `read` (and after `leave`).
A dead reader (net) leaves its counts up: a dead role is a machine panic, as with
holds. In the simulator the table is an anonymous mapping with the same semantics.
"""

from __future__ import annotations

import mmap
import threading

from machine import shm
from machine.params import KERNEL_MIN, PAGE_SHIFT, PAGE_SIZE

LOAN_KVA_BASE = KERNEL_MIN + (1 << 40)  # the loan KVA arena (machine.net.kva)
LOAN_KVA_SLOT_PAGES = 2048  # VA per mbuf slot (8 MiB)
KPT_SLOTS = 1024  # slots the table covers (the arena reuses freed slots first)
KPT_PAGES = KPT_SLOTS * LOAN_KVA_SLOT_PAGES
KPT_BYTES = 3 * 4 * KPT_PAGES  # gen, pfn, readers
BASE_VPN = LOAN_KVA_BASE >> PAGE_SHIFT
_M = 0xFFFFFFFF
RETRIES = 8  # reads retried (a concurrent change) before falling back to a message
_FENCE = threading.Lock()


def fence() -> None:
    """A full memory barrier (a lock's atomic exchange): the store before it is visible
    before any load after it (x86 reorders a later load ahead of an earlier store)."""
    with _FENCE:
        pass


class KernelPageTable:
    """One mapping of the table (the writer's or the reader's side: same object)."""

    def __init__(self, name: str, buf: mmap.mmap, fd: int, owner: bool) -> None:
        self.name = name
        self.owner = owner
        self._fd = fd
        self._map = buf
        self._words = words = memoryview(buf).cast("I")
        self.gen = words[:KPT_PAGES]
        self.pfn = words[KPT_PAGES : 2 * KPT_PAGES]
        self.readers = words[2 * KPT_PAGES :]
        self.retries = 0  # reads that saw a concurrent change (counters)
        self.written: set[int] = set()  # the writer's pages with a translation (audits)

    @classmethod
    def anonymous(cls) -> KernelPageTable:
        """An in-process table (the simulator's): a private anonymous mapping."""
        return cls("", mmap.mmap(-1, KPT_BYTES), -2, owner=False)

    @classmethod
    def create(cls, name: str) -> KernelPageTable:
        """Create the segment (sparse, all zero: no translations). => FileExistsError."""
        fd = shm.create(name, KPT_BYTES)
        return cls(name, mmap.mmap(fd, KPT_BYTES, mmap.MAP_SHARED), fd, owner=True)

    @classmethod
    def attach(cls, name: str) -> KernelPageTable:
        """Map an existing segment. => ValueError if its size is not the table's."""
        fd = shm.open_sized(name, KPT_BYTES, "kernel page table")
        return cls(name, mmap.mmap(fd, KPT_BYTES, mmap.MAP_SHARED), fd, owner=False)

    def close(self) -> None:
        """Unmap (and, for the owner, unlink). Idempotent."""
        if self._fd == -1:
            return
        for v in (self.gen, self.pfn, self.readers, self._words):
            v.release()
        shm.unmap(self._map, self._fd)
        self._fd = -1
        if self.owner:
            self.unlink()

    def unlink(self) -> None:
        if self.name:
            shm.unlink(self.name)

    @staticmethod
    def covers(vpn: int, npages: int) -> bool:
        """Is every page of [vpn, vpn + npages) in the table?"""
        return BASE_VPN <= vpn and vpn + npages <= BASE_VPN + KPT_PAGES

    # -- the writer: the mmu's kernel pmap ------------------------------------------

    def put(self, vpn: int, pfn: int) -> None:
        """pmap_kenter_pa of one page (a page outside the table: nothing to write)."""
        i = vpn - BASE_VPN
        if 0 <= i < KPT_PAGES:
            g = self.gen
            g[i] = (g[i] + 1) & _M
            self.pfn[i] = pfn + 1
            g[i] = (g[i] + 1) & _M
            self.written.add(vpn)

    def clear(self, vpn: int) -> bool:
        """The page's translation goes (kremove, page_protect NONE). => a reader is
        inside it: the revocation's reply must wait (`inside`)."""
        i = vpn - BASE_VPN
        if not 0 <= i < KPT_PAGES:
            return False
        g = self.gen
        g[i] = (g[i] + 1) & _M
        self.pfn[i] = 0
        g[i] = (g[i] + 1) & _M
        self.written.discard(vpn)
        fence()  # the cleared entry is visible before readers is read (K3 with `enter`)
        return self.readers[i] != 0

    def inside(self, vpns: set[int]) -> bool:
        """Is a reader still inside one of these pages (the shootdown's wait)?"""
        r = self.readers
        return any(r[v - BASE_VPN] for v in vpns if 0 <= v - BASE_VPN < KPT_PAGES)

    def lookup(self, vpn: int) -> int | None:
        """The frame the page translates to now (None: none; tests, audits)."""
        i = vpn - BASE_VPN
        p = self.pfn[i] if 0 <= i < KPT_PAGES else 0
        return p - 1 if p else None

    # -- the reader: net's driver -----------------------------------------------------

    def enter(self, vpn: int, npages: int) -> tuple[list[int], list[int]] | int | None:
        """Steps 1-2: announce the reader and translate. => (pfns, gens) with the reader
        inside every page (call `leave`); the first vpn without a translation (nothing
        left announced); None when not covered or a writer kept changing it."""
        if not self.covers(vpn, npages):
            return None
        lo = vpn - BASE_VPN
        hi = lo + npages
        r, g, p = self.readers, self.gen, self.pfn
        for i in range(lo, hi):
            r[i] += 1
        fence()  # announced before the entries are read: the mmu's clear sees one or the other
        for _ in range(RETRIES):
            gens = g[lo:hi].tolist()
            pfns = p[lo:hi].tolist()
            if any(x & 1 for x in gens) or g[lo:hi].tolist() != gens:
                self.retries += 1
                continue
            if 0 in pfns:
                self._withdraw(lo, hi)
                return vpn + pfns.index(0)
            return [x - 1 for x in pfns], gens
        self._withdraw(lo, hi)
        return None

    def leave(self, vpn: int, gens: list[int]) -> bool:
        """Steps 4-5. => True if no page changed since `enter` (the copy is good)."""
        lo = vpn - BASE_VPN
        hi = lo + len(gens)
        same = self.gen[lo:hi].tolist() == gens
        self._withdraw(lo, hi)
        return same

    def _withdraw(self, lo: int, hi: int) -> None:
        r = self.readers
        for i in range(lo, hi):
            r[i] -= 1

    def read(
        self, view: memoryview, vpn: int, npages: int, pgoff: int, length: int
    ) -> bytes | int | None:
        """A DMA of `length` bytes from `pgoff` in the frames [vpn, vpn + npages) map.
        => the bytes; the first vpn without a translation (the fault); None: translate
        by message instead (not covered, or changed under every retry)."""
        for _ in range(RETRIES):
            got = self.enter(vpn, npages)
            if not isinstance(got, tuple):
                return got
            pfns, gens = got
            data = copy_frames(view, pfns, pgoff, length)
            if self.leave(vpn, gens):
                return data
            self.retries += 1  # K2: a revocation overlapped the copy: discard it
        return None

    def pin(
        self, view: memoryview, vpn: int, npages: int, pgoff: int, length: int
    ) -> tuple[list[memoryview], list[int]] | int | None:
        """A DMA that reads later (machine.net.dma): steps 1-2 (`enter`), and views of the
        bytes in RAM instead of a copy; the reader stays inside every page until `leave`,
        so a revocation's reply waits for it (K3) and no frame is freed or reused under
        the views. => (views, gens); the fault's vpn; None, as `enter`."""
        got = self.enter(vpn, npages)
        if not isinstance(got, tuple):
            return got
        pfns, gens = got
        return frame_views(view, pfns, pgoff, length), gens


def frame_views(view: memoryview, pfns: list[int], pgoff: int, length: int) -> list[memoryview]:
    """`length` bytes from `pgoff` in the first frame on, as views of RAM: one per run of
    consecutive frames (no copy)."""
    out: list[memoryview] = []
    lo, left, i, n = pgoff, length, 0, len(pfns)
    while left > 0 and i < n:
        j = i + 1
        while j < n and pfns[j] == pfns[j - 1] + 1 and (j - i) * PAGE_SIZE - lo < left:
            j += 1
        base = pfns[i] << PAGE_SHIFT
        take = min((j - i) * PAGE_SIZE - lo, left)
        out.append(view[base + lo : base + lo + take])
        left -= take
        lo, i = 0, j
    return out


def copy_frames(view: memoryview, pfns: list[int], pgoff: int, length: int) -> bytes:
    """`length` bytes from `pgoff` in the first frame on, across the frames: one copy."""
    lo, left, parts = pgoff, length, []
    for pfn in pfns:
        hi = min(PAGE_SIZE, lo + left)
        base = pfn << PAGE_SHIFT
        parts.append(view[base + lo : base + hi])
        left -= hi - lo
        lo = 0
        if left <= 0:
            break
    return b"".join(parts)
