"""The era rules as the cores ask them: each era difference is a named decision
(machine.rules), and each decision is reached by a test that fails when it is deleted.

The page daemon's claim: "modern never deactivates a wired page". Under modern a wired
page is never queued, so only a page put on the active queue by hand reaches the rule;
1999 and 2002 trust "active => not wired" and let it through (the thread's bug).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from machine.params import PAGE_SIZE
from machine.profile import SHIPPED, load_profile, with_overrides
from machine.uvm import loan, mmap, pdops, wiring
from machine.uvm.page import NIL, PQ
from machine.uvm.state import Uvm
from tests.unit.uvm.localpmap import make_uvm
from tests.unit.uvm.test_core import OWN, RW, cpu_store


async def _wired_page_on_the_active_queue(era: str) -> tuple[Uvm, int]:
    uvm, mmu = make_uvm(32, knobs={"ERA": era})
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW)
    await cpu_store(uvm, mmu, p, va, b"w")
    await wiring.mlock(uvm, p, OWN, va, PAGE_SIZE)
    (pfn,) = [f for f in range(uvm.pages.npages) if uvm.pages.wire_count[f]]
    assert uvm.pages.pqflags[pfn] == 0  # wiring took it off the queues (I1)
    uvm.pages.inject_active(pfn)  # what QUEUE_INVARIANT=violated leaves behind
    assert uvm.pages.pqflags[pfn] == PQ.ACTIVE
    return uvm, pfn


@pytest.mark.parametrize(("era", "claimed"), [("modern", False), ("1999", True), ("2002", True)])
async def test_claim_of_a_wired_active_page_for_deactivation(era: str, claimed: bool) -> None:
    uvm, pfn = await _wired_page_on_the_active_queue(era)
    assert pdops.claim(uvm, [("free", pfn), ("pageout", pfn)]) == []  # never evicted
    assert (pdops.claim(uvm, [("deactivate", pfn)]) == [pfn]) is claimed


def test_every_shipped_profile_builds_its_rules_once_and_typed() -> None:
    for name in SHIPPED:
        p = load_profile(name)
        assert p.rules is p.rules  # built once
        assert p.rules.era is p.settings.era
        assert p.rules.inject_queue_violation == (p.settings.queue_invariant == "violated")
        assert p.rules.page_protect_panics_on_wired == (p.settings.ppp_wired == "panic")


@pytest.mark.parametrize(
    ("knobs", "queued"),
    [({"ERA": "1999", "QUEUE_INVARIANT": "violated"}, True), ({"ERA": "modern"}, False)],
    ids=["1999", "modern"],
)
async def test_an_orphan_nobody_borrows_leaves_the_queues_after_1999(
    knobs: dict[str, str], queued: bool
) -> None:
    """rules.orphan_dequeued: the owner frees a page the kernel still borrows. 1999's
    uvm_pagefree leaves it where it was (the injected state: on the active queue, where
    the daemon finds it); later eras dequeue it (section 3)."""
    uvm, mmu = make_uvm(32, knobs=knobs)
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, PAGE_SIZE, RW)
    await cpu_store(uvm, mmu, p, va, b"o")
    [pfn] = await loan.loan_to_kernel(uvm, p, OWN, va, 1)
    assert uvm.pages.pqflags[pfn] == PQ.ACTIVE  # 1999: injected; modern: loans stay queued
    await mmap.munmap(uvm, p, OWN, va, PAGE_SIZE)  # the anon goes: an orphan
    assert uvm.pages.uanon[pfn] == NIL
    assert uvm.pages.loan_count[pfn] == 1
    assert (uvm.pages.pqflags[pfn] == PQ.ACTIVE) is queued


def test_a_profile_loaded_again_is_a_fresh_copy_of_the_same_table(tmp_path: Path) -> None:
    """load_profile parses each text once (machine.profile._parsed): a caller that changes
    its Profile's knobs changes no later load's, and an edited file is read again."""
    a = load_profile("modern")
    a.knobs["LOAN_THRESHOLD"] = -1
    b = load_profile("modern")
    assert b.knobs["LOAN_THRESHOLD"] != -1
    assert b is not a
    f = Path(with_overrides(b, {"ERA": "1999"}, tmp_path, "mine"))
    assert load_profile(str(f)).knobs["ERA"] == "1999"
    f.write_text(f.read_text().replace('ERA = "1999"', 'ERA = "2002"'))
    assert load_profile(str(f)).knobs["ERA"] == "2002"
