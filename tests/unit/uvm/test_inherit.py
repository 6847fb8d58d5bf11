"""minherit at fork (machine.uvm.mmap.fork), for anonymous and file mappings, private and
shared, with stores checked in parent and child; amaps shared by MAP_INHERIT_SHARE
(AMAP_SHARED) stay shared when either process clips them, and after the other exits.
The auditor (AM2: amap references equal the entries and their ranges) after each step."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from machine.mmu.pmap import Mmu
from machine.params import PAGE_SIZE
from machine.proto import (
    MAP_INHERIT_COPY,
    MAP_INHERIT_NONE,
    MAP_INHERIT_SHARE,
    MAP_INHERIT_ZERO,
    BadAddress,
)
from machine.proto.types import Prot
from machine.uvm import advice, files, mmap, wiring
from machine.uvm.audit import audit
from machine.uvm.fault import fault
from machine.uvm.pager import pageout
from machine.uvm.state import Uvm
from tests.unit.uvm.localpmap import make_uvm
from tests.unit.uvm.test_core import OWN, cpu_load, cpu_store

RW = Prot.READ | Prot.WRITE
P = PAGE_SIZE


@pytest.fixture
def vm(tmp_path: Path) -> tuple[Uvm, Mmu]:
    return make_uvm(128, tmp_path, swap_pages=64)


async def clean(uvm: Uvm) -> None:
    assert await audit(uvm) == []


async def _mapping(uvm: Uvm, p: int, kind: str, tmp_path: Path, n: int = 4) -> int:
    """n pages of kind anon / anon-shared / file / file-shared in p, page i holding
    b"orig<i>" (file: in the file; anon: stored by p)."""
    if kind.startswith("file"):
        name = f"{kind}-{p}.bin"
        (tmp_path / "disk" / name).write_bytes(
            b"".join(b"orig%d" % i + bytes(P - 5) for i in range(n))
        )
        h, _ = files.open(uvm, OWN, name, False, None)
        return await mmap.mmap(uvm, p, OWN, n * P, RW, handle=h, shared=kind == "file-shared")
    va = await mmap.mmap(uvm, p, OWN, n * P, RW, shared=kind == "anon-shared")
    for i in range(n):
        await cpu_store(uvm, uvm_mmu(uvm), p, va + i * P, b"orig%d" % i)
    return va


def uvm_mmu(uvm: Uvm) -> Mmu:
    return uvm.pmap.mmu  # type: ignore[attr-defined, no-any-return]


KINDS = ["anon", "anon-shared", "file", "file-shared"]


@pytest.mark.parametrize("kind", KINDS)
async def test_inherit_none_leaves_a_hole(vm: tuple[Uvm, Mmu], tmp_path: Path, kind: str) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await _mapping(uvm, p, kind, tmp_path)
    await advice.minherit(uvm, p, OWN, va + P, P, MAP_INHERIT_NONE)
    c = await mmap.fork(uvm, p, OWN)
    assert await cpu_load(uvm, mmu, c, va, 5) == b"orig0"
    with pytest.raises(BadAddress):
        await cpu_load(uvm, mmu, c, va + P, 1)
    assert uvm.spaces[c].map.size == uvm.spaces[p].map.size - P
    assert await cpu_load(uvm, mmu, p, va + P, 5) == b"orig1"
    await clean(uvm)


@pytest.mark.parametrize("kind", KINDS)
async def test_inherit_zero_gives_fresh_zero_memory(
    vm: tuple[Uvm, Mmu], tmp_path: Path, kind: str
) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await _mapping(uvm, p, kind, tmp_path)
    await advice.minherit(uvm, p, OWN, va, 2 * P, MAP_INHERIT_ZERO)
    c = await mmap.fork(uvm, p, OWN)
    assert await cpu_load(uvm, mmu, c, va, 5) == bytes(5)  # neither the data nor the file
    assert await cpu_load(uvm, mmu, c, va + 2 * P, 5) == b"orig2"
    await cpu_store(uvm, mmu, c, va + P, b"child")
    assert await cpu_load(uvm, mmu, p, va + P, 5) == b"orig1"
    e = uvm.spaces[c].map.lookup(va)
    assert e is not None
    assert e.obj is None
    assert e.cow
    assert e.inheritance.value == "zero"
    g = await mmap.fork(uvm, c, OWN)  # the child's entry is ZERO too: again zeros
    assert await cpu_load(uvm, mmu, g, va + P, 5) == bytes(5)
    await clean(uvm)
    for a in (g, c, p):
        await mmap.exit(uvm, a, OWN)
    await clean(uvm)


@pytest.mark.parametrize("kind", ["anon", "file"])
async def test_inherit_share_of_private_memory_shares_every_store(
    vm: tuple[Uvm, Mmu], tmp_path: Path, kind: str
) -> None:
    """NetBSD shares the amap (AMAP_SHARED): stores, zero-fills and promotions of either
    are the other's; the file never changes."""
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await _mapping(uvm, p, kind, tmp_path, n=6)
    if kind == "file":
        await cpu_store(uvm, mmu, p, va, b"PRIV0")  # one page promoted before the fork
    await advice.minherit(uvm, p, OWN, va, 6 * P, MAP_INHERIT_SHARE)
    c = await mmap.fork(uvm, p, OWN)
    assert await cpu_load(uvm, mmu, c, va + 3 * P, 5) == b"orig3"  # child maps page 3 first
    await cpu_store(uvm, mmu, p, va + 3 * P, b"par-3")  # then the parent writes it
    assert await cpu_load(uvm, mmu, c, va + 3 * P, 5) == b"par-3"
    await cpu_store(uvm, mmu, c, va + 4 * P, b"chi-4")
    assert await cpu_load(uvm, mmu, p, va + 4 * P, 5) == b"chi-4"
    await clean(uvm)
    if kind == "file":
        assert await cpu_load(uvm, mmu, c, va, 5) == b"PRIV0"
        data = (tmp_path / "disk" / f"file-{p}.bin").read_bytes()
        assert data[3 * P : 3 * P + 5] == b"orig3"
    await pageout(uvm, c, va + 4 * P)  # through swap: still one page for both
    await cpu_store(uvm, mmu, p, va + 4 * P, b"again")
    assert await cpu_load(uvm, mmu, c, va + 4 * P, 5) == b"again"
    await mmap.exit(uvm, p, OWN)
    assert await cpu_load(uvm, mmu, c, va + 3 * P, 5) == b"par-3"
    await clean(uvm)


@pytest.mark.parametrize("kind", ["anon-shared", "file-shared"])
async def test_inherit_copy_of_a_shared_mapping_is_a_private_copy(
    vm: tuple[Uvm, Mmu], tmp_path: Path, kind: str
) -> None:
    """uvm_mapent_forkcopy of a shared entry: the child's is COPYONWRITE|NEEDSCOPY over
    the same object: it sees the object until it writes a page, then its own copy."""
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await _mapping(uvm, p, kind, tmp_path)
    await advice.minherit(uvm, p, OWN, va, 4 * P, MAP_INHERIT_COPY)
    c = await mmap.fork(uvm, p, OWN)
    e = uvm.spaces[c].map.lookup(va)
    assert e is not None
    assert e.cow
    assert e.obj is not None
    await cpu_store(uvm, mmu, p, va, b"later")  # the parent's store to the object
    assert await cpu_load(uvm, mmu, c, va, 5) == b"later"
    await cpu_store(uvm, mmu, c, va + P, b"mine!")
    assert await cpu_load(uvm, mmu, p, va + P, 5) == b"orig1"
    await cpu_store(uvm, mmu, p, va + P, b"PAREN")
    assert await cpu_load(uvm, mmu, c, va + P, 5) == b"mine!"
    await clean(uvm)
    await mmap.exit(uvm, c, OWN)
    if kind == "file-shared":
        await mmap.exit(uvm, p, OWN)
        data = (tmp_path / "disk" / f"{kind}-{p}.bin").read_bytes()
        assert data[:5] == b"later"
        assert data[P : P + 5] == b"PAREN"
    await clean(uvm)


async def test_inherit_share_of_a_shared_mapping_and_copy_of_private_are_the_defaults(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    priv = await _mapping(uvm, p, "file", tmp_path)
    shared = await _mapping(uvm, p, "anon-shared", tmp_path)
    await advice.minherit(uvm, p, OWN, priv, P, MAP_INHERIT_COPY)  # no change
    await advice.minherit(uvm, p, OWN, shared, P, MAP_INHERIT_SHARE)
    c = await mmap.fork(uvm, p, OWN)
    await cpu_store(uvm, mmu, c, priv, b"c-own")
    await cpu_store(uvm, mmu, c, shared, b"c-shr")
    assert await cpu_load(uvm, mmu, p, priv, 5) == b"orig0"
    assert await cpu_load(uvm, mmu, p, shared, 5) == b"c-shr"
    await clean(uvm)


async def test_a_shared_amap_stays_shared_when_either_process_clips_it(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    """amap_splitref: mprotect and munmap of part of a shared amap, in the parent and in
    the child, keep the rest shared; anons go only when no reference covers them."""
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await _mapping(uvm, p, "anon", tmp_path, n=8)
    await advice.minherit(uvm, p, OWN, va, 8 * P, MAP_INHERIT_SHARE)
    c = await mmap.fork(uvm, p, OWN)
    await mmap.mprotect(uvm, p, OWN, va + 2 * P, 2 * P, Prot.READ)  # parent: 3 pieces
    await clean(uvm)
    await mmap.munmap(uvm, c, OWN, va + 5 * P, P)  # child: 2 pieces and a hole
    await clean(uvm)
    amap = uvm.spaces[p].map.lookup(va)
    assert amap is not None
    assert amap.amap is not None
    assert amap.amap.ref == 5
    assert amap.amap.shared
    for who, other in ((p, c), (c, p)):
        for i in (0, 3, 7):
            if i == 3 and who == p:
                continue  # read-only in the parent
            await cpu_store(uvm, mmu, who, va + i * P, b"w%d-%d" % (who, i))
            assert await cpu_load(uvm, mmu, other, va + i * P, 4) == b"w%d-%d" % (who, i)
    # the child's hole: the parent still has page 5, the anon lives on for it
    assert await cpu_load(uvm, mmu, p, va + 5 * P, 5) == b"orig5"
    await cpu_store(uvm, mmu, p, va + 5 * P, b"only p")
    await clean(uvm)
    used = uvm.pages.npages - uvm.pages.free.count
    await mmap.munmap(uvm, p, OWN, va + 5 * P, P)  # nobody covers page 5 now: freed
    assert uvm.pages.npages - uvm.pages.free.count == used - 1
    await mmap.munmap(uvm, p, OWN, va + 6 * P, P)  # the child still covers page 6: kept
    assert uvm.pages.npages - uvm.pages.free.count == used - 1
    await clean(uvm)
    await mmap.exit(uvm, p, OWN)  # the child alone: its stores still there, writable
    for i, want in ((0, b"w%d-0" % c), (6, b"orig6"), (7, b"w%d-7" % c)):
        assert await cpu_load(uvm, mmu, c, va + i * P, 4) == want[:4]
    await cpu_store(uvm, mmu, c, va + 2 * P, b"solo")
    await mmap.mprotect(uvm, c, OWN, va + P, P, Prot.READ)  # a clip with ref 1: trimmed
    await clean(uvm)
    await mmap.exit(uvm, c, OWN)
    assert uvm.pages.free.count == uvm.pages.npages
    assert uvm.anons == {}


async def test_copy_fork_of_a_shared_amap_snapshots_and_the_sharers_keep_sharing(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await _mapping(uvm, p, "anon", tmp_path, n=2)
    await advice.minherit(uvm, p, OWN, va, 2 * P, MAP_INHERIT_SHARE)
    s = await mmap.fork(uvm, p, OWN)  # s shares with p
    await advice.minherit(uvm, p, OWN, va, 2 * P, MAP_INHERIT_COPY)
    d = await mmap.fork(uvm, p, OWN)  # d: a copy, taken now
    await clean(uvm)
    await cpu_store(uvm, mmu, s, va, b"from s")
    await cpu_store(uvm, mmu, p, va + P, b"from p")
    assert await cpu_load(uvm, mmu, p, va, 6) == b"from s"
    assert await cpu_load(uvm, mmu, s, va + P, 6) == b"from p"
    assert await cpu_load(uvm, mmu, d, va, 5) == b"orig0"
    assert await cpu_load(uvm, mmu, d, va + P, 5) == b"orig1"
    await cpu_store(uvm, mmu, d, va, b"from d")
    assert await cpu_load(uvm, mmu, s, va, 6) == b"from s"
    await clean(uvm)


async def test_share_of_a_wired_private_entry_shares_it_unwired(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await _mapping(uvm, p, "anon", tmp_path, n=2)
    await wiring.mlock(uvm, p, OWN, va, 2 * P)
    await advice.minherit(uvm, p, OWN, va, 2 * P, MAP_INHERIT_SHARE)
    wired = uvm.pages.wired
    c = await mmap.fork(uvm, p, OWN)
    e = uvm.spaces[c].map.lookup(va)
    assert e is not None
    assert e.wired_count == 0
    assert uvm.pages.wired == wired
    await cpu_store(uvm, mmu, c, va, b"shared")
    assert await cpu_store(uvm, mmu, p, va + P, b"no fault") == 0  # the parent: wired
    assert await cpu_load(uvm, mmu, p, va, 6) == b"shared"
    assert await cpu_load(uvm, mmu, c, va + P, 8) == b"no fault"
    await clean(uvm)
    await mmap.exit(uvm, c, OWN)
    await wiring.munlock(uvm, p, OWN, va, 2 * P)
    assert uvm.pages.wired == 0
    await clean(uvm)


async def test_a_zero_fill_race_on_a_shared_amap_keeps_one_page(
    vm: tuple[Uvm, Mmu], tmp_path: Path
) -> None:
    """Two sharers zero-fill one slot at once, the first waiting for memory: the second's
    anon wins, the first refaults onto it (no second anon in the slot, no panic)."""
    uvm, mmu = vm
    p = await mmap.spawn(uvm, OWN)
    va = await mmap.mmap(uvm, p, OWN, P, RW)
    await advice.minherit(uvm, p, OWN, va, P, MAP_INHERIT_SHARE)
    c = await mmap.fork(uvm, p, OWN)
    entered, gate = asyncio.Event(), asyncio.Event()
    real = uvm.alloc_page_wait

    async def slow_once(*args: object, **kw: object) -> int:
        uvm.alloc_page_wait = real  # type: ignore[method-assign]
        entered.set()
        await gate.wait()
        return await real(*args, **kw)  # type: ignore[arg-type]

    uvm.alloc_page_wait = slow_once  # type: ignore[method-assign]
    first = asyncio.ensure_future(fault(uvm, p, OWN, va, Prot.WRITE))
    await asyncio.wait_for(entered.wait(), 5)
    await cpu_store(uvm, mmu, c, va, b"second")
    gate.set()
    await asyncio.wait_for(first, 5)
    assert await cpu_load(uvm, mmu, p, va, 6) == b"second"
    await clean(uvm)
