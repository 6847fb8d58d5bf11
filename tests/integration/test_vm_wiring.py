"""mlock, munlock, mlockall, munlockall, getrlimit and setrlimit through the client API, on
the in-memory machine and on real processes over ZeroMQ: every errno a ported program
sees (NetBSD's), and the frames they wire (the machine's `wired` count).

The real machine is shared by the client-level tests: every count is taken relative
to what it was before, and every process exits (or its session detaches) at the end.
"""

from __future__ import annotations

import pytest

from machine.client import Machine, OutOfMemory, RequestError
from machine.params import PAGE_SIZE, USER_TOP
from machine.proto import Errno
from machine.proto.vmcalls import MCL_CURRENT, MCL_FUTURE, RLIMIT_MEMLOCK
from tests.conftest import Harness

P = PAGE_SIZE


async def wired(m: Machine) -> int:
    return int((await m.stats())["frames"]["wired"])


async def test_locks_do_not_nest_and_ranges_are_rounded(harness: Harness) -> None:
    async with harness.attach() as m:
        before = await wired(m)
        p = await m.spawn()
        va = await p.mmap(4 * P)
        await p.mlock(va, 4 * P)
        await p.mlock(va + 10, 2 * P)  # unaligned: pages 0..2, locked again
        assert await wired(m) == before + 4
        await p.munlock(va, 4 * P)  # one munlock unlocks, however often locked
        assert await wired(m) == before
        await p.mlock(va + P + 1, 1)  # one byte: its page
        assert await wired(m) == before + 1
        await p.munlock(va + 2 * P - 1, 1)
        assert await wired(m) == before
        assert await harness.audit() == []
        await p.exit()


async def test_mlock_and_munlock_errnos(harness: Harness) -> None:
    async with harness.attach() as m:
        p = await m.spawn()
        va = await p.mmap(2 * P)
        none = await p.mmap(P, prot="")
        for call in (p.mlock, p.munlock):
            for addr, n in ((0, P), (va, 64 * P), (USER_TOP - P, 2 * P), (none + P, P)):
                with pytest.raises(OutOfMemory):  # ENOMEM: NULL, unmapped, outside
                    await call(addr, n)
        with pytest.raises(OutOfMemory):
            await p.mlock(none, P)  # PROT_NONE
        with pytest.raises(OutOfMemory):
            await p.munlock(va, P)  # not locked
        q = await m.spawn()
        with pytest.raises(RequestError) as ei:
            await q.mlockall(0)
        assert ei.value.errno is Errno.EINVAL
        with pytest.raises(RequestError) as ei:
            await q.mlockall(MCL_CURRENT | 0x10)
        assert ei.value.errno is Errno.EINVAL
        assert await harness.audit() == []
        await p.exit()
        await q.exit()


async def test_rlimit_memlock_get_set_eagain_and_fork(harness: Harness) -> None:
    async with harness.attach() as m:
        p = await m.spawn()
        ram = int((await m.stats())["frames"]["total"]) * P
        assert await p.getrlimit(RLIMIT_MEMLOCK) == (ram // 3, ram)
        for resource, cur, top, errno in (
            (RLIMIT_MEMLOCK, 2 * P, P, Errno.EINVAL),  # cur > max
            (RLIMIT_MEMLOCK, P, ram + P, Errno.EPERM),  # raising the hard limit
            (8, P, P, Errno.EINVAL),  # RLIMIT_NOFILE: not served
        ):
            with pytest.raises(RequestError) as ei:
                await p.setrlimit(resource, cur, top)
            assert ei.value.errno is errno
        with pytest.raises(RequestError) as ei:
            await p.getrlimit(2)  # RLIMIT_DATA
        assert ei.value.errno is Errno.EINVAL
        assert await p.setrlimit(RLIMIT_MEMLOCK, 2 * P, 4 * P) == (2 * P, 4 * P)
        va = await p.mmap(4 * P)
        with pytest.raises(RequestError) as ei:
            await p.mlock(va, 3 * P)
        assert ei.value.errno is Errno.EAGAIN
        await p.mlock(va, 2 * P)
        child = await p.fork()
        assert await child.getrlimit() == (2 * P, 4 * P)  # inherited...
        await child.mlock(va + 2 * P, 2 * P)  # ...and its own: the parent's locks are not
        with pytest.raises(RequestError) as ei:
            await child.mlock(va, P)
        assert ei.value.errno is Errno.EAGAIN
        assert await harness.audit() == []
        await child.exit()
        await p.exit()


async def test_mlockall_current_and_future(harness: Harness) -> None:
    async with harness.attach() as m:
        before = await wired(m)
        p = await m.spawn()
        va = await p.mmap(3 * P)
        await p.mmap(2 * P, prot="")  # PROT_NONE: not wired
        await p.mlockall(MCL_CURRENT | MCL_FUTURE)
        assert await wired(m) == before + 3
        await p.store(va, b"resident")
        assert p.faults == 0
        later = await p.mmap(2 * P)  # MCL_FUTURE: wired as it is made
        assert await wired(m) == before + 5
        await p.store(later, b"no fault")
        assert p.faults == 0
        child = await p.fork()  # neither the locks nor MCL_FUTURE are inherited
        await child.mmap(4 * P)
        assert await wired(m) == before + 5
        with pytest.raises(OutOfMemory):
            await child.munlock(va, P)
        lim = await p.getrlimit()
        await p.setrlimit(RLIMIT_MEMLOCK, 6 * P, lim[1])
        with pytest.raises(OutOfMemory):  # beyond RLIMIT_MEMLOCK: the mapping is not made
            await p.mmap(2 * P)
        assert await wired(m) == before + 5
        await p.munlockall()
        assert await wired(m) == before
        await p.mmap(P)  # MCL_FUTURE cancelled
        assert await wired(m) == before
        await p.mlockall(MCL_FUTURE)
        assert await wired(m) == before  # nothing mapped so far is locked
        st = (await m.stats())["roles"]["uvm"]["counters"]
        assert st["mlockalls"] >= 2
        assert st["munlockalls"] >= 1
        assert st["wirefutures"] >= 1
        assert await harness.audit() == []
        await child.exit()
        await p.exit()
        assert await wired(m) == before
