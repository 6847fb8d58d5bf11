"""The pmap core alone: translations, pv lists, R/M bits, kernel mappings, the CPU."""

from __future__ import annotations

import pytest

from machine.kassert import KernelPanic
from machine.mmu.pmap import Fault, Mmu
from machine.params import KERNEL_MIN, PAGE_SIZE
from machine.proto import UserError
from machine.proto.types import EnterFlags, Prot
from machine.ram import Ram

RW = Prot.READ | Prot.WRITE
VA = 0x10000


@pytest.fixture
def mmu() -> Mmu:
    m = Mmu(Ram.anonymous(64 * PAGE_SIZE))
    m.create(1, owner=11)
    m.create(2, owner=22)
    return m


def test_store_then_load_through_a_mapping(mmu: Mmu) -> None:
    mmu.enter(1, VA, 5, RW, EnterFlags.NONE)
    assert mmu.store(1, VA + 100, b"abc") is None
    assert mmu.load(1, VA + 100, 3) == b"abc"
    assert bytes(mmu.ram.frame(5)[100:103]) == b"abc"  # bytes are in RAM frame 5
    assert mmu.check() == []


def test_no_translation_and_protection_faults(mmu: Mmu) -> None:
    f = mmu.load(1, VA, 1)
    assert isinstance(f, Fault)
    assert f.va == VA
    assert f.access == Prot.READ
    mmu.enter(1, VA, 5, Prot.READ, EnterFlags.NONE)
    f = mmu.store(1, VA + 8, b"x")
    assert isinstance(f, Fault)
    assert f.reason == "protection"
    assert f.access == Prot.WRITE
    assert mmu.stats.traps == 2


def test_accesses_are_all_or_nothing(mmu: Mmu) -> None:
    mmu.enter(1, VA, 5, RW, EnterFlags.NONE)
    f = mmu.store(1, VA + PAGE_SIZE - 2, b"wxyz")  # second page unmapped
    assert isinstance(f, Fault)
    assert f.va == VA + PAGE_SIZE
    assert mmu.load(1, VA + PAGE_SIZE - 2, 2) == b"\0\0"


def test_a_store_spanning_pages_lands_in_both_frames(mmu: Mmu) -> None:
    mmu.enter(1, VA, 5, RW, EnterFlags.NONE)
    mmu.enter(1, VA + PAGE_SIZE, 9, RW, EnterFlags.NONE)
    assert mmu.store(1, VA + PAGE_SIZE - 2, b"wxyz") is None
    assert bytes(mmu.ram.frame(5)[-2:]) == b"wx"
    assert bytes(mmu.ram.frame(9)[:2]) == b"yz"


def test_pv_lists_track_every_managed_mapping(mmu: Mmu) -> None:
    mmu.enter(1, VA, 5, RW, EnterFlags.NONE)
    mmu.enter(2, VA * 2, 5, Prot.READ, EnterFlags.WIRED)
    assert mmu.pv[5] == {(1, VA >> 12), (2, (VA * 2) >> 12)}
    assert [m[:2] for m in mmu.mappings_of(5)] == [(1, VA), (2, VA * 2)]
    mmu.enter(1, VA, 6, RW, EnterFlags.NONE)  # replace: 5 loses one mapping
    assert mmu.pv[5] == {(2, (VA * 2) >> 12)}
    assert mmu.remove(2, VA * 2, VA * 2 + PAGE_SIZE) == 1
    assert 5 not in mmu.pv
    assert mmu.check() == []


def test_page_protect_read_write_protects_and_none_revokes_even_wired(mmu: Mmu) -> None:
    mmu.enter(1, VA, 5, RW, EnterFlags.NONE)
    mmu.enter(2, VA, 5, RW, EnterFlags.WIRED)
    assert mmu.page_protect([5], Prot.READ) == 2
    assert isinstance(mmu.store(1, VA, b"x"), Fault)
    assert mmu.load(2, VA, 1) == b"\0"
    assert mmu.page_protect([5], Prot.NONE) == 2  # the 1999 i386 behaviour: wired too
    assert mmu.extract(2, VA) is None
    assert mmu.pmaps[2].wired_count == 0
    assert mmu.check() == []


def test_protect_lowers_only_and_none_removes(mmu: Mmu) -> None:
    mmu.enter(1, VA, 5, Prot.READ, EnterFlags.NONE)
    mmu.protect(1, VA, VA + PAGE_SIZE, RW)
    pte = mmu.extract(1, VA)
    assert pte is not None
    assert pte.prot == Prot.READ
    mmu.protect(1, VA, VA + PAGE_SIZE, Prot.NONE)
    assert mmu.extract(1, VA) is None


def test_referenced_and_modified_bits(mmu: Mmu) -> None:
    mmu.enter(1, VA, 5, RW, EnterFlags.NONE)
    mmu.load(1, VA, 1)
    assert mmu.get_attrs([5], False, False) == [1]
    mmu.store(1, VA, b"x")
    assert mmu.get_attrs([5], True, False) == [3]
    assert mmu.get_attrs([5], False, True) == [2]
    assert mmu.get_attrs([5], False, False) == [0]
    mmu.store(1, VA, b"y")
    mmu.remove(1, VA, VA + PAGE_SIZE)
    assert mmu.get_attrs([5], False, False) == [3]  # bits survive the mapping's removal


def test_kenter_is_unmanaged_and_survives_page_protect(mmu: Mmu) -> None:
    mmu.ram.frame(7)[:4] = b"loan"
    mmu.kenter(KERNEL_MIN, [7, 8], Prot.READ)
    assert 7 not in mmu.pv
    assert mmu.page_protect([7], Prot.NONE) == 0
    assert mmu.load(0, KERNEL_MIN, 4) == b"loan"
    assert mmu.get_attrs([7], False, False) == [0]  # kernel accesses leave R/M alone
    assert mmu.mappings_of(7) == [(0, KERNEL_MIN, 1, True, False)]
    assert mmu.kremove(KERNEL_MIN, 2) == 2
    assert isinstance(mmu.load(0, KERNEL_MIN, 1), Fault)


def test_kenter_over_an_existing_mapping_panics(mmu: Mmu) -> None:
    mmu.kenter(KERNEL_MIN, [7], Prot.READ)
    with pytest.raises(KernelPanic, match="pmap_kenter_pa: mapping already present"):
        mmu.kenter(KERNEL_MIN, [8], Prot.READ)


@pytest.mark.parametrize(
    ("call", "errno"),
    [
        (lambda m: m.enter(9, VA, 1, RW, EnterFlags.NONE), "ESRCH"),
        (lambda m: m.enter(1, VA + 1, 1, RW, EnterFlags.NONE), "EINVAL"),
        (lambda m: m.enter(1, VA, 64, RW, EnterFlags.NONE), "EINVAL"),
        (lambda m: m.enter(1, VA, 1, Prot.NONE, EnterFlags.NONE), "EINVAL"),
        (lambda m: m.enter(0, KERNEL_MIN, 1, RW, EnterFlags.NONE), "EINVAL"),
        (lambda m: m.enter(1, 1 << 48, 1, RW, EnterFlags.NONE), "EINVAL"),
        (lambda m: m.remove(1, VA, VA - PAGE_SIZE), "EINVAL"),
        (lambda m: m.kenter(VA, [1], Prot.READ), "EINVAL"),
        (lambda m: m.page_protect([1, 64], Prot.NONE), "EINVAL"),
        (lambda m: m.create(1, 5), "EINVAL"),
        (lambda m: m.destroy(0), "EINVAL"),
    ],
)
def test_bad_arguments_change_nothing(mmu: Mmu, call: object, errno: str) -> None:
    mmu.enter(1, VA, 1, RW, EnterFlags.NONE)
    before = {a: dict(p.ptes) for a, p in mmu.pmaps.items()}, {k: set(v) for k, v in mmu.pv.items()}
    with pytest.raises(UserError) as ei:
        call(mmu)  # type: ignore[operator]
    assert ei.value.errno == errno
    after = {a: dict(p.ptes) for a, p in mmu.pmaps.items()}, {k: set(v) for k, v in mmu.pv.items()}
    assert before == after


def test_destroy_removes_every_mapping(mmu: Mmu) -> None:
    for i in range(4):
        mmu.enter(1, VA + i * PAGE_SIZE, i, RW, EnterFlags.WIRED if i % 2 else EnterFlags.NONE)
    assert mmu.destroy(1) == 4
    assert 1 not in mmu.pmaps
    assert mmu.pv == {}
    assert mmu.check() == []
