"""A representative subset of the errno table of docs/vm-interface.md over the client API,
on the in-memory machine and on real processes: each refused call's RequestError.errno,
and that it changed nothing a program or the machine can see (the bytes, the residency,
the wired frames, the counters of the calls, the auditor). Every row and its tests:
tests/unit/uvm/errno_coverage.py; the same conditions on the core: test_errno_table.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from machine.client import Machine, RequestError
from machine.params import PAGE_SIZE, USER_MIN, USER_TOP
from machine.proto import (
    MADV_FREE,
    MADV_NORMAL,
    MAP_INHERIT_NONE,
    MS_INVALIDATE,
    MS_SYNC,
    RLIM_INFINITY,
    RLIMIT_MEMLOCK,
    Errno,
)
from tests.conftest import Harness

P = PAGE_SIZE
#: The highest page a message can name (addresses are below 2^63 on the wire, so no range
#: of a message wraps: the core's wrap checks are tests/unit/uvm/test_errno_table.py's).
HIGH = (1 << 63) - P
CALL_COUNTERS = (
    "mmaps",
    "munmaps",
    "forks",
    "wirings",
    "unwirings",
    "mlockalls",
    "truncations",
    "msyncinval",
    "madv_free",
    "madv_dontneed",
)


def _name(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}.bin"


async def seen(m: Machine) -> tuple[Any, ...]:
    """What a refused call must leave as it was, as a client sees the machine."""
    st = await m.stats()
    counters = st["roles"]["uvm"]["counters"]
    return st["frames"]["wired"], {k: counters[k] for k in CALL_COUNTERS}


async def refused(calls: list[tuple[Callable[[], Awaitable[Any]], Errno]]) -> None:
    for call, errno in calls:
        with pytest.raises(RequestError) as ei:
            await call()
        assert ei.value.errno is errno, ei.value


async def test_range_errnos_over_the_wire(harness: Harness) -> None:
    async with harness.attach() as m:
        p = await m.spawn()
        va = await p.mmap(4 * P)
        await p.store(va, b"kept")
        resident = await p.mincore(va, 4 * P)
        before = await seen(m)
        await refused(
            [
                (lambda: p.munmap(va + 1, P), Errno.EINVAL),  # an unaligned address
                (lambda: p.munmap(USER_TOP - P, 2 * P), Errno.EINVAL),  # leaves user space
                (lambda: p.mprotect(USER_TOP - P, 2 * P, "r"), Errno.EINVAL),
                (lambda: p.mprotect(va, 64 * P, "r"), Errno.ENOMEM),  # not all mapped
                (lambda: p.minherit(HIGH, 2 * P, MAP_INHERIT_NONE), Errno.EINVAL),
                (lambda: p.madvise(HIGH, 2 * P, MADV_NORMAL), Errno.EINVAL),
                (lambda: p.mincore(HIGH, 2 * P), Errno.ENOMEM),  # sys_mincore: unmapped
                (lambda: p.mincore(va + 1, P), Errno.EINVAL),
                (lambda: p.mlock(HIGH, 2 * P), Errno.ENOMEM),  # t_mlock: ENOMEM
                (lambda: p.munlock(HIGH, 2 * P), Errno.ENOMEM),
            ]
        )
        assert await seen(m) == before
        assert await p.mincore(va, 4 * P) == resident
        assert await p.load(va, 4) == b"kept"
        await p.store(va + P, b"still writable")  # mprotect changed nothing
        assert await harness.audit() == []
        await p.exit()


async def test_mmap_errnos_over_the_wire(harness: Harness) -> None:
    async with harness.attach() as m:
        p = await m.spawn()
        va = await p.mmap(P)
        await p.store(va, b"kept")
        f = await m.open(_name("offset"), create=True, size=2 * P)
        closed = await m.open(_name("closed"), create=True, size=P)
        await closed.close()
        before = await seen(m)
        await refused(
            [
                (lambda: p.mmap(USER_TOP - USER_MIN + P), Errno.ENOMEM),  # no room (uvm_map)
                (lambda: p.mmap(1 << 48), Errno.EINVAL),  # beyond the message's bound
                (lambda: p.mmap(USER_TOP, va=USER_MIN, fixed=True), Errno.EINVAL),  # range_test
                (lambda: p.mmap(P, file=f, offset=100), Errno.EINVAL),  # an unaligned offset
                (lambda: p.mmap(P, file=closed), Errno.EBADF),
            ]
        )
        assert await seen(m) == before
        assert await p.load(va, 4) == b"kept"
        assert await p.mmap(P, va=va) == va + P  # the space is as it was: first fit above
        assert await harness.audit() == []
        await f.close()
        await p.exit()


async def test_file_and_lock_errnos_over_the_wire(harness: Harness) -> None:
    async with harness.attach() as m:
        f = await m.open(_name("locked"), create=True, size=2 * P)
        p = await m.spawn()
        fva = await p.mmap(2 * P, file=f, shared=True)
        await p.store(fva, b"file")
        await p.mlock(fva, 2 * P)
        limits = await p.getrlimit(RLIMIT_MEMLOCK)
        closed = await m.open(_name("closed"), create=True, size=P)
        await closed.close()
        before = await seen(m)
        await refused(
            [
                (lambda: p.msync(fva, 2 * P, MS_SYNC | MS_INVALIDATE), Errno.EBUSY),  # locked
                (lambda: p.madvise(fva, 2 * P, MADV_FREE), Errno.EBUSY),  # wired
                (lambda: p.getrlimit(5), Errno.EINVAL),  # RLIMIT_RSS: not served
                (lambda: p.setrlimit(RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY), Errno.EPERM),
                (lambda: closed.close(), Errno.EBADF),
                (lambda: closed.ftruncate(0), Errno.EBADF),
            ]
        )
        assert await seen(m) == before
        assert await p.getrlimit(RLIMIT_MEMLOCK) == limits
        assert await p.mincore(fva, 2 * P) == b"\x01\x01"
        assert await p.load(fva, 4) == b"file"
        assert await harness.audit() == []
        await p.munlock(fva, 2 * P)
        await p.exit()
        await f.close()
