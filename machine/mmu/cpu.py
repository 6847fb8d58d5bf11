"""The CPU of user processes: accesses that go page by page, and traps that uvm resolves.

A user load or store (mmu.load / mmu.store) is performed as a CPU's string
instruction is: page by page, in address order. At the first page that does
not translate (no mapping, or a protection the mapping does not give) the
access is *parked* where it stopped and a trap is queued for uvm
(machine.proto.trap): uvm holds one pmap.trapwait outstanding here, and its
reply hands over every queued trap. uvm's answer (pmap.resolve, a notice on
the same ordered connection as its revocations) carries the mappings to
enter; the access resumes against them at once, in the same handler, and
either completes or parks again at its next missing page. The client sees
one request and one reply (or EFAULT: SIGSEGV, with the faulting VA). The
parked access's outcome and the waiting trapwait's traps are Pendings
(machine.ipc.pending): the reply each stands for is sent by the handler that
sets it (the answer's, the next trap's), with no task wake-up in between.

Invariants:
  * the pages before `Access.pos` are done (loaded into `out`, or stored), the
    ones after it untouched: a SIGSEGV mid-way leaves the earlier pages
    written, as a CPU's would be; no access ever needs every page of its
    range resident at once;
  * an access is parked under at most one trap id at a time, and a trap id is
    queued or handed to uvm at most once; an answer for an unknown id (its
    access ended) changes nothing;
  * between entering an answer's first mapping and using it for the access no
    other message is handled (the resume is synchronous), so a fault's page
    cannot be taken back before its access: the page daemon cannot starve one;
  * at most one trapwait waits here; a newer one answers the older with [].
cf. the i386 trap handler -> uvm_fault -> pmap_enter -> iret (concepts only).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from machine.ipc.pending import Pending
from machine.mmu.pmap import Fault, Mmu
from machine.params import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from machine.proto import UserError
from machine.proto.pageinfo import MODIFIED, REFERENCED
from machine.proto.trap import TRAP_BATCH, Trap, TrapAnswer
from machine.proto.types import Prot


@dataclass(slots=True)
class Access:
    """A user access in progress: `pos` bytes of [va, va + n) are done."""

    asid: int
    owner: int
    va: int
    n: int
    write: bool
    data: bytes = b""  # a store's bytes
    out: bytearray = field(default_factory=bytearray)  # a load's bytes so far
    pos: int = 0
    traps: int = 0  # traps this access took
    fault: Fault | None = None  # the trap it is parked on
    #: The outcome once it ends: None (done) or an error (errno, detail, the fault). Set
    #: synchronously by the answer's handler, which so sends the client's reply itself.
    done: Pending[tuple[str, str] | None] | None = None


def step(mmu: Mmu, a: Access) -> Fault | None:
    """Perform `a` from a.pos, page by page, up to its end or the first page that does not
    translate. => None when complete; else the trap, with a.pos at the faulting address."""
    pm = mmu.pmaps.get(a.asid)
    acc = int(Prot.WRITE if a.write else Prot.READ)
    end = a.va + a.n
    view = mmu.ram.view
    attrs = mmu.attrs
    while a.pos < a.n:
        pos = a.va + a.pos
        pte = pm.ptes.get(pos >> PAGE_SHIFT) if pm is not None else None
        if pte is None or not pte.prot & acc:
            mmu.stats.traps += 1
            why = "no translation" if pte is None else "protection"
            return Fault(pos, Prot(acc), why)
        off = pos & PAGE_MASK
        take = min(PAGE_SIZE - off, end - pos)
        base = (pte.pfn << PAGE_SHIFT) + off
        if a.write:
            view[base : base + take] = a.data[a.pos : a.pos + take]
            if pte.managed:
                attrs[pte.pfn] |= REFERENCED | MODIFIED
        else:
            a.out += view[base : base + take]
            if pte.managed:
                attrs[pte.pfn] |= REFERENCED
        a.pos += take
    if a.write:
        mmu.stats.stores += 1
    else:
        mmu.stats.loads += 1
    return None


class TrapQueue:
    """The parked accesses, the traps queued for uvm, and uvm's one waiting trapwait."""

    def __init__(self, mmu: Mmu) -> None:
        self.mmu = mmu
        self.parked: dict[int, Access] = {}
        self.queued: list[Trap] = []
        self._waiter: Pending[list[Trap]] | None = None
        self._ids = itertools.count(1)
        self.resumed = 0  # answers applied

    def park(self, a: Access, f: Fault) -> None:
        """Park `a` on trap `f` and queue it for uvm (creating its Pending reply on first park)."""
        if a.done is None:
            a.done = Pending()
        a.fault = f
        a.traps += 1
        tid = next(self._ids)
        self.parked[tid] = a
        self.queued.append(Trap(tid, a.asid, a.owner, f.va, int(f.access)))
        w = self._waiter
        if w is not None and not w.done():
            self._waiter = None
            w.set(self._take())  # uvm's trapwait reply goes out here

    def _take(self) -> list[Trap]:
        out, self.queued = self.queued[:TRAP_BATCH], self.queued[TRAP_BATCH:]
        return out

    def wait(self) -> list[Trap] | Pending[list[Trap]]:
        """uvm's trapwait: the queued traps now, or a Pending of them."""
        old = self._waiter
        self._waiter = None
        if old is not None and not old.done():
            old.set([])  # superseded: uvm keeps one outstanding
        if self.queued:
            return self._take()
        self._waiter = Pending()
        return self._waiter

    def resolve(self, ans: TrapAnswer) -> None:
        """Apply one answer: enter its mappings, resume the access at once."""
        a = self.parked.pop(ans.id, None)
        if a is None or a.done is None or a.done.done():
            return
        self.resumed += 1
        if ans.errno:
            a.done.set((ans.errno, ans.detail))
            return
        mmu = self.mmu
        try:
            for i, m in enumerate(ans.mappings):
                pm = mmu.pmaps.get(a.asid)
                if i and (pm is None or (m.va >> PAGE_SHIFT) in pm.ptes):
                    continue  # fault-ahead: only where nothing is mapped (PMAP_CANFAIL)
                mmu.enter(a.asid, m.va, m.pfn, m.prot, m.flags)
        except UserError as e:  # the space went away while the trap was out
            a.done.set((str(e.errno), e.detail))
            return
        f = step(mmu, a)
        if f is None:
            a.done.set(None)
        else:
            self.park(a, f)
