"""Peer call timeouts: one sweep timer per peer, each call its own deadline.

A server that never answers some requests; calls with different timeouts must each
fail with CallTimeout at their own deadline (a short one is not held up by a long one
in flight), answered calls are unaffected, and the peer keeps working afterwards.
"""

from __future__ import annotations

import asyncio

import pytest

from machine.ipc.inmemory import InMemoryTransport, run_simulation
from machine.ipc.peer import CallTimeout, Identity, Peer
from machine.proto import NO_HEADER, CtlPing, CtlPingReply, decode_request, encode


def _serve_odd_only(raw: bytes) -> bytes | None:
    """Answer requests with an odd msg_id; never answer the even ones."""
    req = decode_request(raw)
    if req.h.msg_id % 2 == 0:
        return None
    h = Identity("toy", 1).header(re=req.h.msg_id)
    return encode(CtlPingReply(h=h, role="toy", incarnation=1))


def test_each_call_times_out_at_its_own_deadline_and_the_peer_goes_on() -> None:
    async def main() -> list[tuple[str, float]]:
        bus = InMemoryTransport(1, (0.0, 0.0))

        await bus.bind("mem://toy.kernel", _serve_odd_only)
        peer = await Peer(Identity("t", 7), "mem://toy.kernel", timeout_s=30.0).open(bus)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        log: list[tuple[str, float]] = []

        async def one(limit: float | None) -> None:
            try:
                await peer.call(CtlPing(h=NO_HEADER), limit)
                log.append(("ok", loop.time() - t0))
            except CallTimeout:
                log.append((f"timeout {limit}", loop.time() - t0))

        # msg_ids 1.. in order: 1 answered, 2 (30 s default) lost, 3 answered, 4 (2 s) lost
        await asyncio.gather(one(None), one(None), one(None), one(2.0))
        await one(None)  # 5: answered after the timeouts
        await peer.close()
        return log

    log = run_simulation(main())
    assert [e for e, _ in log].count("ok") == 3
    times = dict(log)
    assert times["timeout 2.0"] == pytest.approx(2.0, abs=0.01)  # not held up by the 30 s one
    assert times["timeout None"] == pytest.approx(30.0, abs=0.01)
