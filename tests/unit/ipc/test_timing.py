"""machine.ipc.timing: the hook the bench turns on; off, the service binds its plain handlers."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from machine.ipc import timing
from machine.ipc.inmemory import InMemoryTransport
from machine.ipc.peer import Identity, Peer
from machine.ipc.service import Service
from machine.proto import CtlDump, CtlDumpReply, CtlPing, PdWakeup, Reply, Request

from .test_service import H, Toy


@pytest.fixture
def timed() -> Iterator[timing.Timing]:
    t = timing.Timing()
    Service.timing = Peer.timing = t
    try:
        yield t
    finally:
        Service.timing = Peer.timing = None


def test_from_env_is_on_only_for_1() -> None:
    assert timing.from_env({}) is None
    assert timing.from_env({timing.ENV_VAR: "0"}) is None
    assert isinstance(timing.from_env({timing.ENV_VAR: "1"}), timing.Timing)


async def _bound(svc: Service) -> tuple[Any, InMemoryTransport]:
    bus = InMemoryTransport(1)
    svc.transport = bus
    await svc.start("mem://toy.kernel", None, "mem://toy.pub")
    return bus.servers["mem://toy.kernel"].handler, bus


async def test_off_the_service_binds_its_own_handler() -> None:
    toy = Toy(InMemoryTransport(1), rng=random.Random(1), pid=1)
    handler, _ = await _bound(toy)
    assert handler == toy._on_kernel  # nothing between the transport and handle()
    await toy.close()


class Echo(Service):
    role: ClassVar[str] = "echo"
    serves: ClassVar[tuple[type[Request], ...]] = (PdWakeup,)

    async def on_wakeup(self, msg: PdWakeup) -> Reply:
        await self.peers["toy"].call(CtlPing(h=H))
        return self.ack(msg)


async def test_on_every_request_and_call_is_timed_and_dump_hands_them_over(
    timed: timing.Timing,
) -> None:
    bus = InMemoryTransport(1)
    toy = Toy(bus, rng=random.Random(1), pid=1)
    echo = Echo(bus, rng=random.Random(2), pid=2)
    await toy.start("mem://toy.kernel", None, "mem://toy.pub")
    await echo.start("mem://echo.kernel", None, "mem://echo.pub")
    await echo.connect_peer("toy", "mem://toy.kernel")
    client = await Peer(Identity("client", 5), "mem://echo.kernel").open(bus)
    await client.call(PdWakeup(h=H))  # echo's coroutine handler calls toy's plain ctl.ping
    rep = await client.call(CtlDump(h=H))
    assert isinstance(rep, CtlDumpReply)
    got = rep.state["timings"]
    handled = {(r[0], r[1], r[5]): r for r in got["handled"]}
    ping, wake = handled[("ctl.ping", "echo", "toy")], handled[("pd.wakeup", "client", "echo")]
    assert wake[3] <= ping[3] <= ping[4] <= wake[4]  # the call ran inside the handler
    calls = {(c[0], c[1]): c for c in got["calls"]}
    assert calls[("echo", "ctl.ping")][3] <= ping[3]
    assert ping[4] <= calls[("echo", "ctl.ping")][4]
    assert ("client", "pd.wakeup") in calls
    left = timed.drain()  # the dump took everything before it: only its own records remain
    assert [r[0] for r in left["handled"]] == ["ctl.dump"]
    assert [c[1] for c in left["calls"]] == ["ctl.dump"]
    await client.close()
    await echo.close()
    await toy.close()
