"""Loan KVA (sokvareserve/sokvaunreserve): slots, somaxkva accounting, waiting, reuse."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from machine.kassert import KernelPanic
from machine.net.knobs import KVA_BASE, KVA_SLOT_PAGES, new_stats
from machine.net.kva import SLOT_BYTES, KvaArena
from machine.net.synch import WaitChannel
from machine.params import PAGE_SIZE


def arena(somaxkva_pages: int) -> KvaArena:
    return KvaArena(WaitChannel(), new_stats(), somaxkva_pages * PAGE_SIZE)


async def test_reservations_get_disjoint_slots_and_are_counted_in_socurkva() -> None:
    a = arena(64)
    kvas = [await a.reserve(n) for n in (1, 16, 17, 3)]
    assert kvas == [KVA_BASE + i * SLOT_BYTES for i in range(4)]
    ranges = sorted((k, k + KVA_SLOT_PAGES * PAGE_SIZE) for k in kvas)
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(ranges))
    assert a.socurkva == (1 + 16 + 17 + 3) * PAGE_SIZE
    a.free(kvas[1], 16)
    assert a.socurkva == (1 + 17 + 3) * PAGE_SIZE
    assert a.slots_held == 3


async def test_freed_slots_are_reused_last_freed_first_so_the_arena_does_not_grow() -> None:
    a = arena(1 << 20)
    kvas = [await a.reserve(16) for _ in range(6)]
    for k in (kvas[1], kvas[4], kvas[2]):  # holes in the middle, freed out of order
        a.free(k, 16)
    again = [await a.reserve(n) for n in (KVA_SLOT_PAGES, 1, 16)]  # any size fits any hole
    assert again == [kvas[2], kvas[4], kvas[1]]
    assert await a.reserve(1) == KVA_BASE + 6 * SLOT_BYTES  # only now a new slot


async def test_exhaustion_waits_until_a_free_makes_room_and_counts_one_wait() -> None:
    a = arena(32)
    first = await a.reserve(16)
    await a.reserve(16)
    assert not a.fits(1)
    waiter = asyncio.ensure_future(a.reserve(8))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()
    assert a.socurkva == 32 * PAGE_SIZE
    assert a.stats["kvawaits"] == 1
    a.free(first, 16)  # wakes the waiter, which takes its 8 pages
    kva = await asyncio.wait_for(waiter, 1)
    assert kva == first  # the freed slot
    assert a.socurkva == 24 * PAGE_SIZE <= a.somaxkva


async def test_a_wait_ends_only_when_enough_is_freed() -> None:
    a = arena(32)
    k1, k2 = await a.reserve(4), await a.reserve(28)
    waiter = asyncio.ensure_future(a.reserve(16))
    await asyncio.sleep(0)
    a.free(k1, 4)  # 4 pages free: not enough for 16
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()
    a.free(k2, 28)
    await asyncio.wait_for(waiter, 1)
    assert a.socurkva == 16 * PAGE_SIZE


async def test_a_cancelled_wait_leaves_nothing_reserved() -> None:
    a = arena(16)
    k = await a.reserve(16)
    waiter = asyncio.ensure_future(a.reserve(1))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(a.chan) == 0
    a.free(k, 16)
    assert a.socurkva == 0
    assert a.slots_held == 0


async def test_freeing_what_is_not_reserved_panics() -> None:
    a = arena(64)
    k = await a.reserve(4)
    a.free(k, 4)
    with pytest.raises(KernelPanic):
        a.free(k, 4)  # twice
    with pytest.raises(KernelPanic):
        a.free(k + PAGE_SIZE, 1)  # not a slot's base
    with pytest.raises(KernelPanic):
        await a.reserve(KVA_SLOT_PAGES + 1)  # beyond a slot
