"""An attach flood locks nobody out: at the session limit, an attach reclaims the least
recently seen session that holds nothing (no process, no open file) and has been silent
for reclaim_idle_s; sessions holding something, or seen more recently, are kept (EAGAIN).

Red team: 1023 unsigned uvm.attach in 0.4 s filled limits.sessions, and every later
attach got EAGAIN for the whole lease (10 s). Time passing is simulated by backdating
the sessions' last-seen stamps (no sleeps); keepalive is off so no ping renews them.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from machine.client import Machine, RequestError
from machine.limits import Limits
from machine.params import PAGE_SIZE
from machine.proto import NO_HEADER, CtlPing, Errno
from machine.testing import SimMachine
from machine.uvm.service import UvmService


def backdate(svc: UvmService, seconds: float) -> None:
    """As if `seconds` had passed since every live session was last seen."""
    for sid in svc.sessions:
        svc.sessions[sid] -= seconds


async def test_an_attach_at_the_limit_reclaims_the_oldest_idle_session_holding_nothing() -> None:
    async with SimMachine.boot(seed=11, limits=Limits(sessions=4), latency_s=(0.0, 0.0)) as sim:
        svc = sim.service("uvm")
        assert isinstance(svc, UvmService)
        async with contextlib.AsyncExitStack() as stack:

            async def attach() -> Machine:
                return await stack.enter_async_context(sim.attach(keepalive=False))

            with_proc, with_file = await attach(), await attach()
            p = await with_proc.spawn()
            va = await p.mmap(PAGE_SIZE)
            f = await with_file.open("kept.bin", create=True, size=PAGE_SIZE)
            flood = [await attach(), await attach()]  # attached, then silent
            with pytest.raises(RequestError) as ei:  # all four seen just now
                await attach()
            assert ei.value.errno is Errno.EAGAIN
            assert len(svc.sessions) == 4

            backdate(svc, 2 * svc.reclaim_idle_s)
            victim = await attach()  # reclaims flood[0], the least recently seen
            assert svc.vm.stats.sessreclaimed == 1
            with pytest.raises(RequestError) as ei:
                await flood[0].spawn()
            assert ei.value.errno is Errno.ESESSION
            assert "ended" in ei.value.detail
            await flood[1].spawn()  # still live; now it holds a process
            backdate(svc, 2 * svc.reclaim_idle_s)
            await attach()  # the victim is idle and holds nothing: it goes
            assert svc.vm.stats.sessreclaimed == 2
            with pytest.raises(RequestError) as ei:
                await victim.spawn()
            assert ei.value.errno is Errno.ESESSION
            with pytest.raises(RequestError) as ei:  # three hold something, one is fresh
                await attach()
            assert ei.value.errno is Errno.EAGAIN
            # whoever holds a process or a file was never reclaimed, however idle
            await p.store(va, b"still mine")
            assert await p.load(va, 10) == b"still mine"
            g = await with_file.open("kept.bin")
            assert g.size == PAGE_SIZE
            await f.close()


async def test_a_session_seen_recently_is_not_reclaimed() -> None:
    async with SimMachine.boot(seed=12, limits=Limits(sessions=2), latency_s=(0.0, 0.0)) as sim:
        svc = sim.service("uvm")
        assert isinstance(svc, UvmService)
        async with sim.attach(keepalive=False) as a, sim.attach(keepalive=False) as b:
            backdate(svc, 2 * svc.reclaim_idle_s)
            await a.call_role("uvm", CtlPing(h=NO_HEADER))  # renews a's stamp: b is idle
            async with sim.attach(keepalive=False) as c:
                await a.spawn()
                with pytest.raises(RequestError) as ei:
                    await b.spawn()
                assert ei.value.errno is Errno.ESESSION
                with pytest.raises(RequestError) as ei:  # a holds a process, c is fresh
                    async with sim.attach(keepalive=False):
                        pass
                assert ei.value.errno is Errno.EAGAIN
                await c.spawn()


def test_a_live_client_holding_nothing_survives_an_attach_flood() -> None:
    """Red team, second pass: a client that only listens on the wire (or waits before its
    first spawn) holds nothing in uvm, but its keepalive pings uvm every lease/4: it is
    never idle for lease/2, so a flood of attaches reclaims only the flood's own sessions.
    Runs on virtual time: 30 simulated seconds of flooding (the default lease, 10 s)."""
    from machine.ipc.inmemory import run_simulation

    async def main() -> None:
        boot = SimMachine.boot(seed=12, lease_s=10.0, limits=Limits(sessions=3))
        async with boot as sim, sim.attach() as live:  # keepalive on
            svc = sim.service("uvm")
            assert isinstance(svc, UvmService)
            assert svc.reclaim_idle_s == 5.0
            loop = asyncio.get_running_loop()
            end, made = loop.time() + 30.0, 0
            async with contextlib.AsyncExitStack() as stack:
                while loop.time() < end:
                    with contextlib.suppress(RequestError):
                        await stack.enter_async_context(sim.attach(keepalive=False))
                        made += 1
                    await asyncio.sleep(0.25)  # the flooder's pace (simulated time)
            assert made > 5  # the flood did get sessions, by reclaiming its own
            assert svc.vm.stats.sessreclaimed >= made - 2
            assert live.session in svc.sessions
            p = await live.spawn()  # still its own session
            await p.exit()

    run_simulation(main())
