"""The in-memory transport and the virtual-time loop: determinism by seed, no hangs."""

from __future__ import annotations

import asyncio
import hashlib
import os
import selectors
import signal
import socket
import threading
from typing import Any

import pytest

from machine.ipc.inmemory import (
    SKIP_POLLS,
    InMemoryTransport,
    SimulationDeadlock,
    SimulationTimeout,
    VirtualTimeLoop,
    run_simulation,
)
from machine.params import PAGE_SIZE
from machine.testing import SimMachine, poll_for


async def _workload(seed: int) -> tuple[list[tuple[float, str, int]], str, float]:
    async with SimMachine.boot(seed=seed, ram_bytes=64 * PAGE_SIZE) as sim:
        sim.transport.trace = []
        async with sim.attach() as a, sim.attach() as b:

            async def proc(m: object, tag: bytes) -> None:
                p = await m.spawn()  # type: ignore[attr-defined]
                va = await p.mmap(8 * PAGE_SIZE)
                for i in range(8):
                    await p.store(va + i * PAGE_SIZE + 3, tag * 4)
                assert await p.load(va + 3, 4) == tag * 4

            await asyncio.gather(proc(a, b"a"), proc(b, b"b"), proc(a, b"c"))
        digest = hashlib.sha256(bytes(sim.ram.view)).hexdigest()
        return list(sim.transport.trace), digest, asyncio.get_running_loop().time()


def test_the_same_seed_gives_the_same_run() -> None:
    first = run_simulation(_workload(5))
    second = run_simulation(_workload(5))
    assert first == second
    assert len(first[0]) > 50


def test_another_seed_gives_another_interleaving() -> None:
    t5, _, _ = run_simulation(_workload(5))
    t6, _, _ = run_simulation(_workload(6))
    assert [e[1] for e in t5] != [e[1] for e in t6] or [e[0] for e in t5] != [e[0] for e in t6]


def test_virtual_time_jumps_instead_of_sleeping() -> None:
    async def main() -> float:
        await asyncio.sleep(3600 * 5)
        return asyncio.get_running_loop().time()

    assert run_simulation(main(), limit_s=1e9) == pytest.approx(18000)


def test_a_deadlocked_simulation_raises_instead_of_hanging() -> None:
    async def main() -> None:
        await asyncio.Event().wait()

    with pytest.raises(SimulationDeadlock):
        run_simulation(main())


def test_virtual_time_is_bounded() -> None:
    async def main() -> None:
        while True:  # noqa: ASYNC110 - the point is to run out of virtual time
            await asyncio.sleep(10)

    with pytest.raises(SimulationTimeout):
        run_simulation(main(), limit_s=100)


def test_the_loop_reports_virtual_time() -> None:
    loop = VirtualTimeLoop()
    try:
        assert loop.time() == 0.0
        loop.advance(1.5)
        assert loop.time() == 1.5
    finally:
        loop.close()


def test_pub_sub_delivers_in_publish_order_as_zeromq_does() -> None:
    """Latencies are random, but one publisher's events reach a subscriber in order (the
    wire's mbufs of one send were once reassembled out of order)."""

    async def main() -> list[bytes]:
        bus = InMemoryTransport(seed=3, latency_s=(1e-6, 1e-3))
        pub = await bus.publisher("inproc://p")
        got: list[bytes] = []
        await bus.subscribe("inproc://p", "t", got.append)
        for i in range(300):
            pub.publish("t", i.to_bytes(2, "big"))
            if i % 7 == 0:
                await asyncio.sleep(2e-4)
        await asyncio.sleep(1.0)
        return got

    got = run_simulation(main())
    assert got == [i.to_bytes(2, "big") for i in range(300)]


def test_the_wire_places_each_mbuf_by_its_offset() -> None:
    from machine.client import Machine, Wire
    from machine.proto import WirePacket

    w = Wire(Machine.__new__(Machine))
    for off, chunk in ((4, b"efgh"), (0, b"abcd"), (8, b"ij")):
        w._on_packet(
            WirePacket(session=1, asid=1, sock=1, seq=1, off=off, total=10, payload=chunk,
                       loaned=off == 4)
        )  # fmt: skip
    pkt = w._q.get_nowait()
    assert (pkt.payload, pkt.loaned) == (b"abcdefghij", True)
    assert w._q.empty()
    # A send whose other mbufs were dropped is discarded when the socket's next send comes.
    w._on_packet(WirePacket(session=1, asid=1, sock=1, seq=2, off=0, total=8, payload=b"ab",
                            loaned=False))  # fmt: skip
    w._on_packet(WirePacket(session=1, asid=1, sock=1, seq=3, off=0, total=2, payload=b"cd",
                            loaned=False))  # fmt: skip
    assert (w._q.get_nowait().seq, w.lost, w._partial) == (3, 1, {})


def _busy_until(done: list[bool], turns: list[int], limit: int) -> None:
    """A callback that keeps the loop busy (a ready callback every turn) until `done`."""
    turns[0] += 1
    if not done[0] and turns[0] < limit:
        asyncio.get_running_loop().call_soon(_busy_until, done, turns, limit)


def test_a_busy_virtual_loop_polls_no_fd_when_only_its_self_pipe_is_registered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    polls = [0]
    real = selectors.DefaultSelector.select

    def counted(self: selectors.BaseSelector, timeout: float | None = None) -> Any:
        polls[0] += 1
        return real(self, timeout)  # type: ignore[arg-type]

    monkeypatch.setattr(selectors.DefaultSelector, "select", counted)

    async def main() -> int:
        turns = [0]
        _busy_until([False], turns, 1000)
        await poll_for(lambda: turns[0] >= 1000, timeout_s=5, what="1000 turns")
        return turns[0]

    assert run_simulation(main()) == 1000
    # A turn with callbacks ready costs no epoll_wait, but one in SKIP_POLLS + 1 still
    # polls (the self-pipe carries signal wake-ups); idle turns poll as before.
    assert 1000 // (SKIP_POLLS + 1) <= polls[0] < 1000 // (SKIP_POLLS + 1) + 100, polls[0]


def test_a_busy_virtual_loop_still_polls_a_registered_fd() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        r, w = socket.socketpair()
        done, turns = [False], [0]

        def readable() -> None:
            r.recv(1)
            done[0] = True

        loop.add_reader(r.fileno(), readable)
        w.send(b"x")
        _busy_until(done, turns, 10_000)  # never idle: the fd must be polled anyway
        try:
            await poll_for(lambda: done[0], timeout_s=5, what="the reader")
        finally:
            loop.remove_reader(r.fileno())
            r.close()
            w.close()
        return turns[0]

    assert run_simulation(main()) < 10


def test_a_threads_callback_runs_while_the_virtual_loop_is_busy() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        done, turns = [False], [0]
        t = threading.Thread(target=lambda: loop.call_soon_threadsafe(done.__setitem__, 0, True))
        _busy_until(done, turns, 1_000_000)
        t.start()
        await poll_for(lambda: done[0], timeout_s=5, what="the thread's callback")
        t.join()
        return turns[0]

    assert run_simulation(main()) < 1_000_000


def test_a_signal_handler_runs_while_the_virtual_loop_is_busy() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        done, turns = [False], [0]
        loop.add_signal_handler(signal.SIGUSR1, done.__setitem__, 0, True)
        try:
            _busy_until(done, turns, 1_000_000)
            os.kill(os.getpid(), signal.SIGUSR1)
            await poll_for(lambda: done[0], timeout_s=5, what="the signal handler")
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
        return turns[0]

    # Delivered through the self-pipe, which a busy turn polls at least every SKIP_POLLS + 1.
    assert run_simulation(main()) <= 2 * (SKIP_POLLS + 1) + 2
