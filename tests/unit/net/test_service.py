"""NetService over the core, with a fake kernel: when the driver ends on a peer's panic.

The driver stops when uvm or the mmu panicked (PeerPanic). net did not panic, so it
must neither publish ctl.panic nor answer pings with EPANIC (the supervisor would
report net, not the role that panicked); but it must not report "running" either.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from machine.ipc.inmemory import InMemoryTransport
from machine.net.service import HALTED, NetService
from machine.params import PAGE_SIZE
from machine.proto import (
    NO_HEADER,
    CtlHalt,
    CtlPanic,
    CtlPing,
    CtlPingReply,
    Errno,
    Event,
    Header,
    NetSend,
    Status,
    UserError,
)
from machine.testing import poll_for
from tests.unit.net.fakes import ASID, OWNER, VA0, FakeKernel, make_net


def service() -> tuple[NetService, FakeKernel, list[Event]]:
    svc = NetService(InMemoryTransport(1), rng=random.Random(1))
    svc.net, k = make_net()  # the core over a fake kernel instead of the bus
    published: list[Event] = []
    svc.publish = published.append  # type: ignore[method-assign]
    return svc, k, published


def send(sock: int, n: int = PAGE_SIZE) -> NetSend:
    h = Header(msg_id=1, sender="client", incarnation=OWNER)
    return NetSend(h=h, asid=ASID, sock=sock, va=VA0, n=n)


async def test_a_driver_stopped_by_a_peer_panic_leaves_net_halted_not_running() -> None:
    svc, k, published = service()
    try:
        so = await svc.net.socreate(OWNER, ASID, 1 << 20)
        await svc.on_send(send(so.id))  # one loaned mbuf
        k.panic_on.add("unloan")  # uvm has panicked: sopendfree's unloan gets EPANIC
        await svc.link_up()
        await poll_for(lambda: svc.state != "running", 2, 0.001, "net to leave running")
        assert svc.state == HALTED
        assert "uvm: panic in unloan" in svc.panic_message
        assert not [e for e in published if isinstance(e, CtlPanic)]  # not net's panic
        ping = svc.on_ping(CtlPing(h=NO_HEADER))
        assert isinstance(ping, CtlPingReply)  # the supervisor's heartbeat blames no one
        assert ping.status is Status.OK
        with pytest.raises(UserError) as e:  # nothing will ever be sent again
            await svc.on_send(send(so.id))
        assert e.value.errno is Errno.EPANIC
        svc.on_halt(CtlHalt(h=NO_HEADER, reason="panic in uvm: uvm_unloanpage"))
        assert svc.state == "panicked"  # then halted by the supervisor, like every role
        assert svc.panic_message == "panic in uvm: uvm_unloanpage"
    finally:
        await svc.close()


async def test_any_other_driver_failure_is_net_own_panic() -> None:
    svc, k, published = service()

    async def broken(*_: Any) -> int:
        raise RuntimeError("pmap_kremove: bad kva")

    k.kremove = broken  # type: ignore[method-assign]
    try:
        so = await svc.net.socreate(OWNER, ASID, 1 << 20)
        await svc.on_send(send(so.id))
        await svc.link_up()
        await poll_for(lambda: svc.state != "running", 2, 0.001, "net to panic")
        assert svc.state == "panicked"
        assert "pmap_kremove: bad kva" in svc.panic_message
        assert [e.role for e in published if isinstance(e, CtlPanic)] == ["net"]
    finally:
        await svc.close()
