"""vm_page records and the page queues: the primitives of section 3 and their panics."""

from __future__ import annotations

import pytest

from machine.kassert import KernelPanic
from machine.uvm.page import KERNEL, NIL, PAGEDAEMON, PQ, USER, PageFlag, VmPages


def test_alloc_takes_a_free_page_busy_clean_fake_unqueued() -> None:
    p = VmPages(4)
    pfn = p.alloc(who=PAGEDAEMON, anon=3)
    assert pfn == 0
    assert p.free.count == 3
    assert p.flags[pfn] == PageFlag.BUSY | PageFlag.CLEAN | PageFlag.FAKE | PageFlag.ANON
    assert p.pqflags[pfn] == 0
    assert p.uanon[pfn] == 3
    assert p.check() == []  # allocated and owned, not yet queued: fine


def test_alloc_fails_when_no_page_is_free() -> None:
    p = VmPages(2)
    assert p.alloc(who=PAGEDAEMON, anon=1) != NIL
    assert p.alloc(who=PAGEDAEMON, anon=2) != NIL
    assert p.alloc(who=PAGEDAEMON, anon=3) == NIL


def test_activate_deactivate_free_move_between_queues() -> None:
    p = VmPages(8)
    a, b = p.alloc(who=PAGEDAEMON, anon=1), p.alloc(who=PAGEDAEMON, anon=2)
    p.activate(a)
    p.activate(b)
    assert p.walk(p.active) == [a, b]
    p.deactivate(a)
    assert p.walk(p.active) == [b]
    assert p.walk(p.inactive) == [a]
    p.activate(a)  # reactivation goes to the tail
    assert p.walk(p.active) == [b, a]
    assert p.inactive.count == 0
    p.free_page(a)
    assert p.pqflags[a] == PQ.FREE
    assert p.uanon[a] == NIL
    assert p.free.count == 7
    assert p.check() == []


def test_wiring_dequeues_and_the_last_unwire_activates() -> None:
    p = VmPages(4)
    a = p.alloc(who=PAGEDAEMON, anon=1)
    p.activate(a)
    p.wire(a)
    p.wire(a)
    assert p.pqflags[a] == 0
    assert p.wire_count[a] == 2
    assert p.wired == 1
    p.activate(a)  # a wired page is never queued
    assert p.pqflags[a] == 0
    p.unwire(a)
    assert p.pqflags[a] == 0
    p.unwire(a)
    assert p.pqflags[a] == PQ.ACTIVE
    assert p.wired == 0
    assert p.check() == []


def test_freeing_a_wired_page_drops_the_wiring() -> None:
    p = VmPages(4)
    a = p.alloc(who=PAGEDAEMON, anon=1)
    p.wire(a)
    p.free_page(a)
    assert p.wired == 0
    assert p.wire_count[a] == 0
    assert p.check() == []


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p, a: (p.free_page(a), p.free_page(a)), "uvm_pagefree: freeing free page"),
        (lambda p, a: (p.wire(a), p.deactivate(a)), "caller did not check wire count"),
        (lambda p, a: p.unwire(a), "uvm_pageunwire: page 0 not wired"),
        (
            lambda p, a: p.alloc(who=PAGEDAEMON, anon=1, obj=2),
            "uvm_pagealloc: obj and anon != NULL",
        ),
        (lambda p, a: (p.unbusy(a), p.unbusy(a)), "not busy"),
    ],
)
def test_violated_preconditions_panic_with_netbsd_messages(setup: object, message: str) -> None:
    p = VmPages(4)
    a = p.alloc(who=PAGEDAEMON, anon=1)
    with pytest.raises(KernelPanic, match=message):
        setup(p, a)  # type: ignore[operator]


def test_check_finds_corrupted_queues() -> None:
    p = VmPages(4)
    a = p.alloc(who=PAGEDAEMON, anon=1)
    p.activate(a)
    p.active.count += 1
    assert any("Q1" in x for x in p.check())
    p.active.count -= 1
    p.wire_count[a] = 1  # wired but on the active queue: the 1999 thread's state
    p.wired = 1
    assert any("I1" in x for x in p.check())


def test_structure_of_arrays_costs_few_bytes_per_frame() -> None:
    assert VmPages(1024).bytes_per_frame() < 40


def test_allocation_reserves() -> None:
    """Scenario 20: free = 5 -> a user allocation fails, a kernel one succeeds;
    free = 1 -> only the page daemon gets the page."""
    p = VmPages(8)
    for _ in range(3):
        assert p.alloc(anon=1) != NIL  # 8, 7, 6 free: fine
    assert p.free.count == 5
    assert p.alloc(anon=1, who=USER) == NIL
    for _ in range(4):
        assert p.alloc(obj=2, who=KERNEL) != NIL
    assert p.free.count == 1
    assert p.alloc(obj=2, who=KERNEL) == NIL
    assert p.alloc(obj=2, who=PAGEDAEMON) != NIL
    assert p.free.count == 0
    assert p.check() == []


def test_the_diagnostic_knob_controls_the_deactivate_panic() -> None:
    """bug1999 runs without DIAGNOSTIC: uvm_pagedeactivate of a wired page goes through."""
    p = VmPages(8, diagnostic=False)
    a = p.alloc(who=PAGEDAEMON, anon=1)
    p.wire(a)
    p.deactivate(a)  # no panic without DIAGNOSTIC
    assert p.pqflags[a] == PQ.INACTIVE
    assert any("I1" in x for x in p.check())  # but the auditor sees the broken invariant
