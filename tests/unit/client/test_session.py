"""A session owns its tasks: closing it leaves none running, even after the machine panicked."""

from __future__ import annotations

import asyncio

import pytest

from machine.ipc.inmemory import run_simulation
from machine.params import PAGE_SIZE
from machine.proto import NO_HEADER, CtlKpanic
from machine.testing import SimMachine, poll_for


def _client_tasks() -> set[str]:
    """The running tasks of the client library (by their coroutine's name)."""
    names = {getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks()}
    return names & {"Session._keep_alive", "WireFeed._poll"}


@pytest.mark.parametrize("panic", [False, True])
def test_closing_a_session_cancels_its_keepalive_and_wire_poll(panic: bool) -> None:
    async def main() -> None:
        async with SimMachine.boot(seed=3, ram_bytes=64 * PAGE_SIZE) as sim:
            async with sim.attach() as m:
                assert _client_tasks() == {"Session._keep_alive"}
                async with m.wire():
                    assert _client_tasks() == {"Session._keep_alive", "WireFeed._poll"}
                    if panic:
                        await sim.kcall("net", CtlKpanic(h=NO_HEADER, message="test"))
                        await poll_for(lambda: m.panic is not None, what="the client saw it")
                assert _client_tasks() == {"Session._keep_alive"}
            assert _client_tasks() == set()

    run_simulation(main())
