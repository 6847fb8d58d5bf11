"""The memory watchdog's decisions (machine.ipc.memwatch), on made-up samples; and a ZeroMQ
ROUTER's reset: the attack's connection is closed and freed, the endpoint serves on."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys

import pytest
import zmq

from machine.ipc import memwatch
from machine.ipc.memwatch import MemWatch
from machine.ipc.zmqtransport import ZmqTransport
from tests.integration.multipart_attack import Attack

M = 1 << 20
L = 512 * M  # soft 256, panic 384


def _ticks(w: MemWatch, samples: list[int]) -> list[str | None]:
    it = iter(samples)
    return [w.tick(lambda: (next(it), 0)) for _ in samples]


def test_under_the_soft_line_nothing_happens() -> None:
    w = MemWatch(L)
    assert _ticks(w, [30 * M, 200 * M, 255 * M]) == [None, None, None]
    assert w.resets == 0
    assert w.peak == 255 * M


def test_past_the_soft_line_a_reset_then_a_trim_tick() -> None:
    w = MemWatch(L)
    # reset, then the next tick trims and resamples (40 M: the parts were freed), re-armed
    assert _ticks(w, [300 * M, 40 * M, 290 * M, 35 * M]) == ["reset", None, "reset", None]
    assert w.resets == 2
    assert w.counters()["mem_resets"] == 2
    assert w.counters()["mem_peak_kb"] == 300 * 1024


def test_own_memory_past_the_soft_line_is_not_reset_every_tick() -> None:
    """W2: after a reset that freed nothing, another needs L/8 more growth."""
    w = MemWatch(L)
    got = _ticks(w, [270 * M, 270 * M, 280 * M, 300 * M, 334 * M, 280 * M, 100 * M, 300 * M])
    assert got == ["reset", None, None, None, "reset", None, None, "reset"]


def test_own_memory_past_the_panic_line_after_a_trim_panics() -> None:
    w = MemWatch(L)
    assert _ticks(w, [400 * M, 390 * M]) == ["reset", "panic"]
    assert "384" in w.describe() or "390" in w.describe()


def test_a_spike_past_the_panic_line_that_a_reset_frees_does_not_panic() -> None:
    w = MemWatch(L)
    assert _ticks(w, [450 * M, 40 * M]) == ["reset", None]


def test_the_supervisor_resets_but_never_panics() -> None:
    w = MemWatch(L, panics=False)
    assert _ticks(w, [450 * M, 440 * M]) == ["reset", None]


def test_sample_reads_this_process() -> None:
    anon, data = memwatch.sample()
    assert 0 < anon <= data


def test_set_data_limit_in_a_child() -> None:
    """RLIMIT_DATA set (soft and hard); a bigger private allocation then fails."""
    code = (
        "import resource\n"
        "from machine.ipc import memwatch\n"
        "memwatch.set_data_limit(256 << 20)\n"
        "print(resource.getrlimit(resource.RLIMIT_DATA))\n"
        "try:\n    bytearray(300 << 20)\nexcept MemoryError:\n    print('MemoryError')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    ).stdout.split("\n")
    assert out[0] == f"({256 << 20}, {256 << 20})"
    assert out[1] == "MemoryError"
    assert resource.getrlimit(resource.RLIMIT_DATA)[0] != 256 << 20  # not ours


@pytest.mark.timeout(30)
async def test_a_reset_closes_the_attack_and_the_endpoint_serves_on() -> None:
    t = ZmqTransport()
    srv = await t.bind("tcp://127.0.0.1:*", lambda b: b"re:" + b, user=True)
    try:
        a = Attack(srv.endpoint, part_bytes=1 << 16)
        assert a.send_parts(64)
        await srv.reset()
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        while a.send_parts(16):  # the role's side is gone: a send fails soon
            assert loop.time() < end, "the attacking connection stayed open"
            await asyncio.sleep(0.01)
        a.close()
        client = t.ctx.socket(zmq.DEALER)
        client.connect(srv.endpoint)
        client.send(b"hi")
        while not client.poll(0):
            assert loop.time() < end, "no reply after the reset"
            await asyncio.sleep(0.01)
        assert client.recv() == b"re:hi"
        client.close(linger=0)
    finally:
        await srv.close()
        await t.close()
