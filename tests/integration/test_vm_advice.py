"""minherit, madvise, mincore and mmap's placement through the client API, end to end, on
the in-memory machine and on real processes (the `harness` fixture)."""

from __future__ import annotations

import uuid

import pytest

from machine.client import (
    MADV_DONTNEED,
    MADV_FREE,
    MADV_RANDOM,
    MADV_WILLNEED,
    MAP_INHERIT_COPY,
    MAP_INHERIT_NONE,
    MAP_INHERIT_SHARE,
    MAP_INHERIT_ZERO,
    Machine,
    RequestError,
    Segv,
)
from machine.params import PAGE_SIZE
from machine.proto import Errno
from tests.conftest import Harness

P = PAGE_SIZE


async def counters(m: Machine) -> dict[str, int]:
    return dict((await m.stats())["roles"]["uvm"]["counters"])


async def test_minherit_variants_at_fork(harness: Harness) -> None:
    async with harness.attach() as m:
        parent = await m.spawn()
        va = await parent.mmap(4 * P)
        for i in range(4):
            await parent.store(va + i * P, b"page%d" % i)
        for i, inherit in enumerate(
            (MAP_INHERIT_SHARE, MAP_INHERIT_COPY, MAP_INHERIT_NONE, MAP_INHERIT_ZERO)
        ):
            await parent.minherit(va + i * P, P, inherit)
        child = await parent.fork()
        await child.store(va, b"CHILD")  # shared: the parent sees it
        assert await parent.load(va, 5) == b"CHILD"
        await parent.store(va + 10, b"PARENT")
        assert await child.load(va + 10, 6) == b"PARENT"
        await child.store(va + P, b"mine!")  # copied: the parent does not
        assert await parent.load(va + P, 5) == b"page1"
        with pytest.raises(Segv):
            await child.load(va + 2 * P, 1)  # none: a hole
        assert await child.load(va + 3 * P, 5) == bytes(5)  # zero: fresh memory
        # the shared page stays shared when the parent clips the mapping around it
        await parent.mprotect(va + P, P, "r")
        await parent.munmap(va + 2 * P, 2 * P)
        await parent.store(va + 100, b"after clip")
        assert await child.load(va + 100, 10) == b"after clip"
        await parent.exit()
        assert await child.load(va + 100, 10) == b"after clip"
        assert await harness.audit() == []
        with pytest.raises(RequestError) as ei:
            await child.minherit(va, P, 3)  # MAP_INHERIT_DONATE_COPY
        assert ei.value.errno is Errno.EINVAL
    assert await harness.audit() == []


async def test_minherit_share_of_a_private_file_mapping(harness: Harness) -> None:
    name = f"inherit-{uuid.uuid4().hex[:8]}.bin"
    harness.disk.mkdir(parents=True, exist_ok=True)
    (harness.disk / name).write_bytes(b"file bytes" + bytes(2 * P))
    async with harness.attach() as m:
        f = await m.open(name)
        parent = await m.spawn()
        va = await parent.mmap(2 * P, file=f)
        await parent.minherit(va, 2 * P, MAP_INHERIT_SHARE)
        child = await parent.fork()
        assert await child.load(va, 10) == b"file bytes"
        await parent.store(va, b"FILE")
        assert await child.load(va, 10) == b"FILE bytes"
        await child.store(va + P, b"from child")
        assert await parent.load(va + P, 10) == b"from child"
        await parent.exit()
        await child.exit()
        await f.close()
    assert (harness.disk / name).read_bytes()[:10] == b"file bytes"
    assert await harness.audit() == []


async def test_madvise_and_mincore(harness: Harness) -> None:
    name = f"advice-{uuid.uuid4().hex[:8]}.bin"
    harness.disk.mkdir(parents=True, exist_ok=True)
    (harness.disk / name).write_bytes(b"r" * 4 * P)
    async with harness.attach() as m:
        p = await m.spawn()
        va = await p.mmap(4 * P)
        assert await p.mincore(va, 4 * P) == bytes(4)
        await p.store(va, b"x" * 2 * P)
        assert await p.mincore(va, 4 * P) == b"\x01\x01\x00\x00"
        before = await counters(m)
        await p.madvise(va, 4 * P, MADV_DONTNEED)
        await p.madvise(va, P, MADV_FREE)
        after = await counters(m)
        assert after["madv_dontneed"] >= before["madv_dontneed"] + 2
        assert after["madv_free"] == before["madv_free"] + 1
        assert await p.mincore(va, 4 * P) == b"\x00\x01\x00\x00"
        assert await p.load(va, 2) == bytes(2)  # freed: zero-fill
        assert await p.load(va + P, 2) == b"xx"  # deactivated: kept
        f = await m.open(name)
        fva = await p.mmap(4 * P, "r", file=f)
        await p.madvise(fva, 4 * P, MADV_WILLNEED)
        assert await p.mincore(fva, 4 * P) == b"\x01" * 4
        assert (await counters(m))["madv_willneed"] >= after["madv_willneed"] + 4
        await p.madvise(fva, 4 * P, MADV_RANDOM)
        assert await p.load(fva + 3 * P, 2) == b"rr"
        for call, errno in (
            (p.madvise(va, P, 5), Errno.EINVAL),  # MADV_SPACEAVAIL
            (p.madvise(va, 64 * P, MADV_FREE), Errno.EFAULT),  # a hole after the mapping
            (p.mincore(va + 1, P), Errno.EINVAL),
            (p.mincore(va, 64 * P), Errno.ENOMEM),
        ):
            with pytest.raises(RequestError) as ei:
                await call
            assert ei.value.errno is errno
        await f.close()
    assert await harness.audit() == []


async def test_mmap_hint_and_fixed_replace(harness: Harness) -> None:
    async with harness.attach() as m:
        p = await m.spawn()
        va = await p.mmap(2 * P)
        await p.store(va, b"old data")
        # a hint over a mapping: the first fit above it; an unaligned one: rounded up
        assert await p.mmap(P, va=va) == va + 2 * P
        assert await p.mmap(P, va=va + 3 * P + 1) == va + 4 * P
        assert await p.mmap(2 * P, va=va, fixed=True) == va  # replaced, one operation
        assert await p.load(va, 8) == bytes(8)
        with pytest.raises(RequestError) as ei:
            await p.mmap(P, va=0, fixed=True)
        assert ei.value.errno is Errno.EINVAL
        await p.munmap(va, 2 * P)
    assert await harness.audit() == []
