"""uvm's machine-wide caps shared fairly (machine.share): maxproc and maxentries.

With three attached sessions and small caps, one greedy session is refused first, with
the cap's usual errno and a detail naming its share, and the other sessions still get
their share of the resource."""

from __future__ import annotations

from pathlib import Path

import pytest

from machine.limits import Limits
from machine.mmu.pmap import Mmu
from machine.params import PAGE_SIZE
from machine.proto import UserError
from machine.proto.types import Prot
from machine.uvm import mmap, report
from machine.uvm.audit import audit
from machine.uvm.state import Uvm
from tests.unit.uvm.localpmap import make_uvm

RW = Prot.READ | Prot.WRITE
GREEDY, A, B = 101, 102, 103


@pytest.fixture
def vm(tmp_path: Path) -> tuple[Uvm, Mmu]:
    return make_uvm(128, tmp_path, sessions={GREEDY, A, B})


async def test_maxproc_greedy_session_gets_eagain_first(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    uvm.limits = Limits(procs=100, maxproc=12)  # n = 3 + 1, f = 3
    greedy = [await mmap.spawn(uvm, GREEDY) for _ in range(3)]  # its share: 3 of 12
    with pytest.raises(UserError) as ei:
        await mmap.spawn(uvm, GREEDY)  # 4 + 3 (A) + 3 (B) + 3 (a newcomer) > 12
    assert ei.value.errno == "EAGAIN"
    assert "fair share of maxproc" in ei.value.detail
    with pytest.raises(UserError) as ei:
        await mmap.fork(uvm, greedy[0], GREEDY)
    assert ei.value.errno == "EAGAIN"
    for owner in (A, B):  # the others still get theirs
        for _ in range(3):
            await mmap.spawn(uvm, owner)
    assert uvm.procs.held == {GREEDY: 3, A: 3, B: 3}
    assert report.counters(uvm, 3)["share_refused_maxproc"] == 2  # the spawn and the fork
    assert await audit(uvm) == []


async def test_maxentries_greedy_session_gets_enomem_first(vm: tuple[Uvm, Mmu]) -> None:
    uvm, _ = vm
    uvm.limits = Limits(maxentries=40)  # f = 10
    g = await mmap.spawn(uvm, GREEDY)
    for _ in range(10):  # its share (no merging: one entry each)
        await mmap.mmap(uvm, g, GREEDY, PAGE_SIZE, Prot.READ)
    with pytest.raises(UserError) as ei:
        await mmap.mmap(uvm, g, GREEDY, PAGE_SIZE, Prot.READ)
    assert ei.value.errno == "ENOMEM"  # NetBSD's pool of map entries
    assert "fair share of maxentries" in ei.value.detail
    with pytest.raises(UserError) as ei:
        await mmap.fork(uvm, g, GREEDY)  # the child's 10 entries: past the share too
    assert ei.value.errno == "ENOMEM"
    for owner in (A, B):
        p = await mmap.spawn(uvm, owner)
        for _ in range(10):
            await mmap.mmap(uvm, p, owner, PAGE_SIZE, Prot.READ)
    assert uvm.entry_pool.share.held == {GREEDY: 10, A: 10, B: 10}
    assert report.counters(uvm, 3)["share_refused_maxentries"] == 2
    assert await audit(uvm) == []


async def test_maxentries_a_lone_session_may_take_what_nobody_claims(
    vm: tuple[Uvm, Mmu],
) -> None:
    """Within the cap, past its share, a session still gets what the others and a newcomer
    could not claim: the others' unclaimed shares stay free, nothing more."""
    uvm, _ = vm
    uvm.limits = Limits(maxentries=40)
    a = await mmap.spawn(uvm, A)
    for _ in range(10):
        await mmap.mmap(uvm, a, A, PAGE_SIZE, Prot.READ)
    # A's share is used and B holds nothing: the greedy one still stops at its share,
    # since B and a newcomer could each claim 10.
    g = await mmap.spawn(uvm, GREEDY)
    for _ in range(10):
        await mmap.mmap(uvm, g, GREEDY, PAGE_SIZE, Prot.READ)
    with pytest.raises(UserError):
        await mmap.mmap(uvm, g, GREEDY, PAGE_SIZE, Prot.READ)
    await mmap.exit(uvm, a, A)  # A gives its 10 back: A could claim them again, so still no
    with pytest.raises(UserError):
        await mmap.mmap(uvm, g, GREEDY, PAGE_SIZE, Prot.READ)
    assert await audit(uvm) == []
