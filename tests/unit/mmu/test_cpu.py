"""The CPU's page-by-page accesses and the trap queue (machine.mmu.cpu), without uvm."""

from __future__ import annotations

import pytest

from machine.ipc.pending import Pending
from machine.mmu.cpu import Access, TrapQueue, step
from machine.mmu.pmap import Mmu
from machine.params import PAGE_SIZE
from machine.proto.trap import TrapAnswer, TrapMapping
from machine.proto.types import EnterFlags, Prot
from machine.ram import Ram

VA = 0x4000_0000
RW = int(Prot.READ | Prot.WRITE)


@pytest.fixture
def mmu() -> Mmu:
    m = Mmu(Ram.anonymous(64 * PAGE_SIZE))
    m.create(1, 77)
    return m


def test_a_store_goes_page_by_page_and_stops_at_the_first_missing_page(mmu: Mmu) -> None:
    mmu.enter(1, VA, 5, Prot(RW), EnterFlags.NONE)
    a = Access(1, 77, VA + PAGE_SIZE - 2, 4, write=True, data=b"wxyz")
    f = step(mmu, a)
    assert f is not None
    assert f.va == VA + PAGE_SIZE
    assert f.access == Prot.WRITE
    assert a.pos == 2  # the first page is written, as a CPU's string store leaves it
    assert bytes(mmu.ram.frame(5)[-2:]) == b"wx"
    mmu.enter(1, VA + PAGE_SIZE, 9, Prot(RW), EnterFlags.NONE)
    assert step(mmu, a) is None
    assert bytes(mmu.ram.frame(9)[:2]) == b"yz"


def test_a_store_to_a_read_only_page_traps_for_protection(mmu: Mmu) -> None:
    mmu.enter(1, VA, 5, Prot.READ, EnterFlags.NONE)
    a = Access(1, 77, VA, 1, write=True, data=b"x")
    f = step(mmu, a)
    assert f is not None
    assert f.reason == "protection"
    assert a.pos == 0
    r = Access(1, 77, VA, 3, write=False)
    assert step(mmu, r) is None
    assert bytes(r.out) == b"\0\0\0"


async def test_a_parked_access_resumes_against_the_answer_at_once(mmu: Mmu) -> None:
    q = TrapQueue(mmu)
    a = Access(1, 77, VA, 3, write=True, data=b"abc")
    f = step(mmu, a)
    assert f is not None
    q.park(a, f)
    traps = q.wait()
    assert isinstance(traps, list)
    assert [t.va for t in traps] == [VA]
    (t,) = traps
    # The answer is entered and the access done in the same call: nothing can come
    # between them (a revocation arriving next finds the store already made).
    q.resolve(TrapAnswer(t.id, [TrapMapping(VA, 7, RW, 0)]))
    assert a.done is not None
    assert a.done.done()
    assert a.done.result() is None
    assert bytes(mmu.ram.frame(7)[:3]) == b"abc"
    mmu.page_protect([7], Prot.NONE)
    assert mmu.extract(1, VA) is None
    q.resolve(TrapAnswer(t.id, [TrapMapping(VA, 7, RW, 0)]))  # a stale duplicate
    assert mmu.extract(1, VA) is None  # changes nothing


async def test_fault_ahead_neighbours_never_replace_a_mapping(mmu: Mmu) -> None:
    q = TrapQueue(mmu)
    mmu.enter(1, VA + PAGE_SIZE, 3, Prot(RW), EnterFlags.NONE)
    a = Access(1, 77, VA, 1, write=False)
    f = step(mmu, a)
    assert f is not None
    q.park(a, f)
    (t,) = q.wait()  # type: ignore[misc]
    ahead = [
        TrapMapping(VA + PAGE_SIZE, 4, int(Prot.READ), 0),
        TrapMapping(VA + 2 * PAGE_SIZE, 5, int(Prot.READ), 0),
    ]
    q.resolve(TrapAnswer(t.id, [TrapMapping(VA, 2, int(Prot.READ), 0), *ahead]))
    pte = mmu.extract(1, VA + PAGE_SIZE)
    assert pte is not None
    assert pte.pfn == 3
    assert pte.prot == RW
    pte2 = mmu.extract(1, VA + 2 * PAGE_SIZE)
    assert pte2 is not None
    assert pte2.pfn == 5


async def test_an_error_answer_ends_the_access_and_a_waiter_gets_later_traps(mmu: Mmu) -> None:
    q = TrapQueue(mmu)
    w = q.wait()
    assert isinstance(w, Pending)
    assert not w.done()
    a = Access(1, 77, VA, 1, write=False)
    f = step(mmu, a)
    assert f is not None
    q.park(a, f)
    assert w.done()
    (t,) = w.result()
    q.resolve(TrapAnswer(t.id, [], "EFAULT", "no mapping"))
    assert a.done is not None
    assert a.done.result() == ("EFAULT", "no mapping")
    w2 = q.wait()
    w3 = q.wait()  # a newer trapwait answers the older with no traps
    assert isinstance(w2, Pending)
    assert w2.result() == []
    assert isinstance(w3, Pending)
    assert not w3.done()
