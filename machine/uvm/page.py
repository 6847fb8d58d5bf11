"""vm_page records for every frame, the free list and the paging queues.

Layout: structure of arrays. A Python object per page would cost ~200 bytes
per frame; here every field is one slot in a typed array indexed by pfn
(about 31 bytes per frame), and the queues are intrusive doubly-linked lists
threaded through the `nxt`/`prv` arrays, so every queue operation is O(1).

Ownership legend for fields: [u] changed only inside the uvm process by the
core; [b] changed only by whoever holds the page BUSY.

Fields (per frame):
  flags [b]        PageFlag bits (BUSY, WANTED, CLEAN, FAKE, RELEASED, TABLED, ANON)
  pqflags [u]      the queue the page is on: FREE, ACTIVE, INACTIVE, or 0 (none)
  wire_count [u]   number of wirings; a wired page is on no paging queue
  loan_count [u]   number of loans (machine.uvm.loan)
  uanon [u]        id of the owning anon, or -1
  uobject [u]      id of the owning object, or -1
  offset [u]       offset in the owning object

Page identities and transitions (section 2.6 of uvm-semantics.md):

      pagealloc(anon)            pageactivate / pagedeactivate
  FREE ---------------> ANON (busy, no queue) <-----------------> ACTIVE / INACTIVE
   ^                        |                                        |
   +------------------------+---------------- pagefree --------------+

Invariants (check()):
  I1  wire_count > 0  =>  not on the active or inactive queue.
  I2  FREE  <=>  on the free list, no owner, wire_count == loan_count == 0.
  I3  allocated and ownerless  =>  loan_count > 0 (an orphan kept by its loans),
      or a kernel-owned page (the shared zero page).
  Q1  each queue's count equals the length of its list, and every page on a
      list has exactly that queue's pqflag.
  I8  a page held by an anon or an object (owned, or borrowed by an anon: uanon
      set, PG_ANON clear), not BUSY, not wired, with no loan to the kernel, is on
      a paging queue: off every queue nothing could ever page it out ([cvs139],
      scenario 27).
A violated precondition of a primitive is a kernel panic with NetBSD's message.
cf. NetBSD sys/uvm/uvm_page.c, uvm_page_i.h.
"""

from __future__ import annotations

from array import array

from machine.kassert import kassert

NIL = -1

# Who allocates, for the reserves of uvm_pagealloc (section 3): a user
# allocation fails once free <= RESERVE_KERNEL; a kernel one once free <=
# RESERVE_PAGEDAEMON; only the page daemon may take the last pages.
USER, KERNEL, PAGEDAEMON = 0, 1, 2
RESERVE_KERNEL = 5
RESERVE_PAGEDAEMON = 1


class PageFlag:
    """PG_* bits (owner lock / busy holder). Plain ints: an IntFlag operation costs about
    0.5 us, and the fault and loan paths test these bits several times per page."""

    BUSY = 0x01
    WANTED = 0x02
    CLEAN = 0x04
    FAKE = 0x08
    RELEASED = 0x10
    TABLED = 0x20
    ANON = 0x40


class PQ:
    """PQ_* bits: which queue a page is on (at most one). Plain ints, as PageFlag."""

    FREE = 0x1
    ACTIVE = 0x2
    INACTIVE = 0x4


class PageQueue:
    """An intrusive doubly-linked list of pfns over the VmPages link arrays."""

    __slots__ = ("count", "flag", "head", "name", "tail")

    def __init__(self, name: str, flag: int) -> None:
        self.name = name
        self.flag = flag
        self.head = NIL
        self.tail = NIL
        self.count = 0


class VmPages:
    """Every frame's vm_page, as parallel arrays, plus the free list and paging queues."""

    def __init__(self, nframes: int, diagnostic: bool = True) -> None:
        n = nframes
        self.npages = n
        # The profile's DIAGNOSTIC knob: the checks NetBSD compiles only under
        # DIAGNOSTIC (e.g. uvm_pagedeactivate's wire-count panic) run only when set.
        self.diagnostic = diagnostic
        self.flags = array("H", bytes(2 * n))
        self.pqflags = bytearray(n)
        self.wire_count = array("H", bytes(2 * n))
        self.loan_count = array("H", bytes(2 * n))
        self.uanon = array("i", [NIL]) * n
        self.uobject = array("i", [NIL]) * n
        self.offset = array("q", bytes(8 * n))
        self.nxt = array("i", range(1, n + 1))
        self.prv = array("i", range(-1, n - 1))
        if n:
            self.nxt[n - 1] = NIL
        self.free = PageQueue("free", PQ.FREE)
        self.active = PageQueue("active", PQ.ACTIVE)
        self.inactive = PageQueue("inactive", PQ.INACTIVE)
        self.free.head, self.free.tail, self.free.count = (0, n - 1, n) if n else (NIL, NIL, 0)
        self.pqflags[:] = bytes([PQ.FREE]) * n
        self.wired = 0  # uvmexp.wired: pages with wire_count > 0
        # Pages a kernel object owns outside any uvm object table (modern's shared
        # zero page of uvm_loanzero_object): allocated, ownerless, and legitimately so.
        self.kernel_owned: set[int] = set()

    # -- queue mechanics ----------------------------------------------------

    def _queue_of(self, pfn: int) -> PageQueue | None:
        q = self.pqflags[pfn]
        if q == PQ.FREE:
            return self.free
        if q == PQ.ACTIVE:
            return self.active
        if q == PQ.INACTIVE:
            return self.inactive
        kassert(q == 0, "vm_page %d: corrupt pqflags %#x", pfn, q)
        return None

    def _insert_tail(self, q: PageQueue, pfn: int) -> None:
        kassert(
            self.pqflags[pfn] == 0,
            "page %d: queue insert while on queue %#x",
            pfn,
            self.pqflags[pfn],
        )
        self.nxt[pfn] = NIL
        self.prv[pfn] = q.tail
        if q.tail == NIL:
            q.head = pfn
        else:
            self.nxt[q.tail] = pfn
        q.tail = pfn
        q.count += 1
        self.pqflags[pfn] = q.flag

    def inject_active(self, pfn: int) -> None:
        """Fault injection (QUEUE_INVARIANT=violated): put an off-queue page (a wired one)
        on the active queue's tail, breaking I1 on purpose (machine.uvm.loan)."""
        self._insert_tail(self.active, pfn)

    def _unlink(self, q: PageQueue, pfn: int) -> None:
        n, p = self.nxt[pfn], self.prv[pfn]
        if p == NIL:
            q.head = n
        else:
            self.nxt[p] = n
        if n == NIL:
            q.tail = p
        else:
            self.prv[n] = p
        self.nxt[pfn] = self.prv[pfn] = NIL
        q.count -= 1
        self.pqflags[pfn] = 0

    def dequeue(self, pfn: int) -> None:
        """uvm_pagedequeue: take the page off whatever paging queue it is on."""
        q = self._queue_of(pfn)
        if q is not None:
            kassert(q is not self.free, "uvm_pagedequeue: page %d is free", pfn)
            self._unlink(q, pfn)

    # -- primitives (section 3) ---------------------------------------------

    def alloc(self, anon: int = NIL, obj: int = NIL, offset: int = 0, who: int = USER) -> int:
        """uvm_pagealloc: take a free page. => pfn, or NIL if none may be had.

        => below the reserves a user allocation fails (free <= RESERVE_KERNEL),
           a kernel one too once free <= RESERVE_PAGEDAEMON; the page daemon
           may take the last page.
        => the page comes back BUSY|CLEAN|FAKE, on no queue; the caller
           activates or wires it, then unbusies it.
        """
        kassert(anon == NIL or obj == NIL, "uvm_pagealloc: obj and anon != NULL")
        free = self.free.count
        if (who == USER and free <= RESERVE_KERNEL) or (
            who == KERNEL and free <= RESERVE_PAGEDAEMON
        ):
            return NIL
        pfn = self.free.head
        if pfn == NIL:
            return NIL
        self._unlink(self.free, pfn)
        self.flags[pfn] = PageFlag.BUSY | PageFlag.CLEAN | PageFlag.FAKE
        self.wire_count[pfn] = 0
        self.loan_count[pfn] = 0
        self.uanon[pfn] = anon
        self.uobject[pfn] = obj
        self.offset[pfn] = offset
        if anon != NIL:
            self.flags[pfn] |= PageFlag.ANON
        if obj != NIL:
            self.flags[pfn] |= PageFlag.TABLED
        return pfn

    def free_page(self, pfn: int) -> None:
        """uvm_pagefree (no loans yet): dequeue, drop wiring, put on the free list."""
        kassert(self.pqflags[pfn] != PQ.FREE, "uvm_pagefree: freeing free page %d", pfn)
        kassert(self.loan_count[pfn] == 0, "uvm_pagefree: loan count on page %d", pfn)
        self.dequeue(pfn)
        if self.wire_count[pfn]:
            self.wire_count[pfn] = 0
            self.wired -= 1
        self.flags[pfn] = 0
        self.uanon[pfn] = NIL
        self.uobject[pfn] = NIL
        self.offset[pfn] = 0
        self._insert_tail(self.free, pfn)

    def activate(self, pfn: int) -> None:
        """uvm_pageactivate: to the active tail; a wired page is never queued."""
        kassert(self.pqflags[pfn] != PQ.FREE, "uvm_pageactivate: page %d is free", pfn)
        q = self._queue_of(pfn)
        if q is not None:
            self._unlink(q, pfn)
        if self.wire_count[pfn] == 0:
            self._insert_tail(self.active, pfn)

    def deactivate(self, pfn: int) -> None:
        """uvm_pagedeactivate: to the inactive queue (caller handled mappings)."""
        if self.diagnostic:
            kassert(
                self.wire_count[pfn] == 0 or self.pqflags[pfn] == PQ.INACTIVE,
                "uvm_pagedeactivate: caller did not check wire count",
            )
        if self.pqflags[pfn] == PQ.ACTIVE:
            self._unlink(self.active, pfn)
        if self.pqflags[pfn] == 0:
            self._insert_tail(self.inactive, pfn)

    def wire(self, pfn: int) -> None:
        """uvm_pagewire: first wiring takes the page off the paging queues."""
        if self.wire_count[pfn] == 0:
            self.dequeue(pfn)
            self.wired += 1
        self.wire_count[pfn] += 1

    def unwire(self, pfn: int) -> None:
        """uvm_pageunwire: the last unwiring puts the page on the active queue."""
        kassert(self.wire_count[pfn] > 0, "uvm_pageunwire: page %d not wired", pfn)
        self.wire_count[pfn] -= 1
        if self.wire_count[pfn] == 0:
            self.wired -= 1
            self.activate(pfn)

    def unbusy(self, pfn: int) -> None:
        kassert(self.flags[pfn] & PageFlag.BUSY, "uvm_page_unbusy: page %d not busy", pfn)
        self.flags[pfn] &= ~(PageFlag.BUSY | PageFlag.WANTED | PageFlag.FAKE)

    # -- audit --------------------------------------------------------------

    def walk(self, q: PageQueue) -> list[int]:
        out: list[int] = []
        pfn = q.head
        while pfn != NIL and len(out) <= self.npages:
            out.append(pfn)
            pfn = self.nxt[pfn]
        return out

    def check(self) -> list[str]:
        """Check I1, I2, I3, I8, Q1 over every frame; returns the problems found."""
        problems: list[str] = []
        for q in (self.free, self.active, self.inactive):
            pfns = self.walk(q)
            if len(pfns) != q.count:
                problems.append(f"Q1: {q.name} count {q.count} but list has {len(pfns)}")
            for pfn in pfns:
                if self.pqflags[pfn] != q.flag:
                    problems.append(
                        f"Q1: page {pfn} on {q.name} has pqflags {self.pqflags[pfn]:#x}"
                    )
        wired = 0
        for pfn in range(self.npages):
            pq = self.pqflags[pfn]
            wc = self.wire_count[pfn]
            if wc:
                wired += 1
                if pq in (PQ.ACTIVE, PQ.INACTIVE):
                    problems.append(f"I1: wired page {pfn} on a paging queue")
            if pq == PQ.FREE and (
                self.uanon[pfn] != NIL or self.uobject[pfn] != NIL or wc or self.loan_count[pfn]
            ):
                problems.append(f"I2: free page {pfn} has an owner, wiring or loan")
            if (
                pq != PQ.FREE
                and self.uanon[pfn] == NIL
                and self.uobject[pfn] == NIL
                and self.loan_count[pfn] == 0
                and not self.flags[pfn] & PageFlag.RELEASED  # freed when unbusied
                and pfn not in self.kernel_owned
            ):
                problems.append(f"I3: allocated page {pfn} has no owner and no loan")
            f = self.flags[pfn]
            if pq == 0 and not wc and not f & PageFlag.BUSY and pfn not in self.kernel_owned:
                borrowed = not f & PageFlag.ANON and self.uanon[pfn] != NIL
                held = f & (PageFlag.ANON | PageFlag.TABLED) or borrowed
                if held and self.loan_count[pfn] == int(borrowed):  # no kernel loan keeps it
                    problems.append(f"I8: page {pfn} is held but off every paging queue")
        if wired != self.wired:
            problems.append(f"wired counter {self.wired} != {wired} wired pages")
        return problems

    def bytes_per_frame(self) -> float:
        arrays = (
            self.flags,
            self.wire_count,
            self.loan_count,
            self.uanon,
            self.uobject,
            self.offset,
            self.nxt,
            self.prv,
        )
        total = sum(a.itemsize * len(a) for a in arrays) + len(self.pqflags)
        return total / max(self.npages, 1)
