"""Leases any request renews, and the one answer to an ended session (issue 21).

A client that sends only mmu requests (loads and stores: what a client mostly
does) keeps its session: the mmu reports the sessions it served to uvm in
batches (pmap.sessions, every lease_s / 4) and uvm renews their leases. A
session that has ended, by detach or by its lease, gets ESESSION from every
role that takes session requests (uvm, mmu, net), never ESRCH or EBADF, and
the client library raises SessionEnded for it.

Mostly on the in-memory machine in virtual time (run_simulation): deterministic,
and three leases cost no wall time; the detach case also over real processes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from machine.client import Machine, RequestError, SessionEnded
from machine.ipc.inmemory import run_simulation
from machine.net.service import NetService
from machine.params import PAGE_SIZE
from machine.proto import (
    NO_HEADER,
    Errno,
    MmuLoad,
    MmuStore,
    NetClose,
    NetSend,
    Request,
    UvmMmap,
    UvmSpawn,
)
from machine.testing import SimMachine, poll_for
from machine.uvm.service import UvmService
from tests.conftest import Harness

_H = NO_HEADER
LEASE_S = 1.0


async def _one_role_client_survives(seed: int, role: str = "mmu") -> tuple[Any, ...]:
    """=> whether the busy and the idle session live after 3.5 leases, the number of
    sessions, the busy one's last store, and uvm's last-seen stamp of each session."""
    async with SimMachine.boot(seed=seed, ram_bytes=4 << 20, lease_s=LEASE_S) as sim:
        uvm = sim.service("uvm")
        assert isinstance(uvm, UvmService)
        async with sim.attach(keepalive=False) as busy, sim.attach(keepalive=False) as idle:
            p = await busy.spawn()
            va = await p.mmap(PAGE_SIZE)
            loop = asyncio.get_running_loop()
            end = loop.time() + 3.5 * LEASE_S
            n = 0
            while loop.time() < end:  # only requests to `role` from here on
                if role == "mmu":
                    await p.store(va, n.to_bytes(4, "big"))
                    assert await p.load(va, 4) == n.to_bytes(4, "big")
                else:  # an authenticated request that fails renews the lease as well
                    with pytest.raises(RequestError) as ei:
                        await busy.call_role("net", NetClose(h=_H, sock=1 << 30))
                    assert ei.value.errno is Errno.EBADF
                n += 1
                await asyncio.sleep(LEASE_S / 20)  # the workload's pace, in virtual time
            busy_live = busy.session in uvm.sessions
            idle_live = idle.session in uvm.sessions
            await p.store(va, b"last")
            stamps = sorted(uvm.sessions.items())
            return busy_live, idle_live, len(uvm.sessions), await p.load(va, 4), stamps


@pytest.mark.parametrize("role", ["mmu", "net"])
def test_a_client_that_sends_only_mmu_or_net_requests_survives_three_leases(role: str) -> None:
    busy_live, idle_live, nsessions, last, _ = run_simulation(_one_role_client_survives(21, role))
    assert busy_live  # renewed by its loads and stores alone
    assert not idle_live
    assert nsessions == 1
    assert last == b"last"


def test_the_lease_reports_are_deterministic() -> None:
    """Virtual time and the services' clock only: the same seed renews at the same times."""
    assert run_simulation(_one_role_client_survives(5)) == run_simulation(
        _one_role_client_survives(5)
    )


async def _errnos_of_an_ended_session(how: str) -> dict[str, Any]:
    async with SimMachine.boot(seed=7, ram_bytes=4 << 20, lease_s=LEASE_S) as sim:
        uvm, net = sim.service("uvm"), sim.service("net")
        assert isinstance(uvm, UvmService)
        assert isinstance(net, NetService)
        cm = sim.attach(keepalive=False)
        gone = await cm.__aenter__()
        p = await gone.spawn()
        va = await p.mmap(PAGE_SIZE)
        await p.store(va, b"x")
        so = await p.socket()
        sid, key = gone.session, gone.ident.key
        assert key is not None
        if how == "detach":
            await cm.__aexit__(None, None, None)
        else:  # silent: reaped after its lease
            await poll_for(lambda: sid not in uvm.sessions, 10 * LEASE_S, LEASE_S / 4, "reap")
        # net learns it from uvm.session_ended (the fast path); then every role answers alike.
        await poll_for(lambda: net.auth.ended(sid), 2 * LEASE_S, 0.01, "net learns the end")
        async with sim.attach(keepalive=False) as other:
            other.ident.become(sid, key)  # the ended session's own credentials
            other.ident.last_id = 1 << 30
            asks: list[tuple[str, Request]] = [
                ("uvm", UvmSpawn(h=_H)),
                ("uvm", UvmMmap(h=_H, asid=p.asid, length=PAGE_SIZE, prot=3)),
                ("mmu", MmuLoad(h=_H, asid=p.asid, va=va, n=1)),
                ("mmu", MmuStore(h=_H, asid=p.asid, va=va, data=b"y")),
                ("net", NetClose(h=_H, sock=so.id)),
                ("net", NetSend(h=_H, sock=so.id, asid=p.asid, va=va, n=1)),
            ]
            got: dict[str, Any] = {}
            for role, req in asks:
                try:
                    await other.call_role(role, req)
                    got[f"{role} {type(req).__name__}"] = "ok"
                except SessionEnded as e:
                    got[f"{role} {type(req).__name__}"] = e.errno
        if how == "reap":
            await cm.__aexit__(None, None, None)
        return got


@pytest.mark.parametrize("how", ["detach", "reap"])
def test_an_ended_sessions_request_at_each_role_gets_the_one_session_ended_answer(
    how: str,
) -> None:
    got = run_simulation(_errnos_of_an_ended_session(how))
    assert len(got) == 6
    assert set(got.values()) == {Errno.ESESSION}, got


async def test_the_client_library_raises_session_ended() -> None:
    async with SimMachine.boot(seed=3, ram_bytes=4 << 20) as sim:
        async with sim.attach(keepalive=False) as m:
            sid, key = m.session, m.ident.key
        assert key is not None
        async with sim.attach(keepalive=False) as other:
            other.ident.become(sid, key)
            other.ident.last_id = 1 << 30
            with pytest.raises(SessionEnded, match="ended") as ei:
                await other.call_role("uvm", UvmSpawn(h=_H))
            assert ei.value.errno is Errno.ESESSION
            assert isinstance(other, Machine)


async def test_a_detached_sessions_requests_get_session_ended_at_every_role(
    harness: Harness,
) -> None:
    """Both transports: after a detach, uvm, the mmu and net answer ESESSION."""
    async with harness.attach(keepalive=False) as gone:
        p = await gone.spawn()
        va = await p.mmap(PAGE_SIZE)
        await p.store(va, b"x")
        so = await p.socket()
        sid, key = gone.session, gone.ident.key
    assert key is not None
    async with harness.attach(keepalive=False) as other:
        other.ident.become(sid, key)
        other.ident.last_id = 1 << 30

        async def net_says_ended() -> bool:  # net learns it from uvm.session_ended
            try:
                await other.call_role("net", NetClose(h=_H, sock=so.id))
            except SessionEnded:
                return True
            except RequestError:
                return False
            return False

        await poll_for(net_says_ended, 5.0, 0.02, "net answers ESESSION")
        for role, req in (
            ("uvm", UvmSpawn(h=_H)),
            ("mmu", MmuLoad(h=_H, asid=p.asid, va=va, n=1)),
            ("net", NetSend(h=_H, sock=so.id, asid=p.asid, va=va, n=1)),
        ):
            with pytest.raises(SessionEnded) as ei:
                await other.call_role(role, req)
            assert ei.value.errno is Errno.ESESSION, role
