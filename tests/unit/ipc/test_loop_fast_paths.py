"""The virtual loop's fast paths: running_loop() and VirtualTimeLoop's lean turns.

running_loop() must answer what asyncio.get_running_loop() answers, in every loop of every
thread, one after another; the lean call_at/_run_once must run callbacks in the order
asyncio's own code does (the debug loop runs asyncio's), ties and cancellations included.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from machine.ipc.inmemory import VirtualTimeLoop
from machine.ipc.transport import running_loop


async def _both() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
    return running_loop(), asyncio.get_running_loop()


def test_running_loop_is_the_running_loop_in_loop_after_loop() -> None:
    for _ in range(3):
        mine, theirs = asyncio.run(_both())
        assert mine is theirs
    loop = VirtualTimeLoop()
    try:
        mine, theirs = loop.run_until_complete(_both())
        assert mine is theirs is loop
    finally:
        loop.close()


def test_running_loop_outside_a_loop_raises_as_asyncio_does() -> None:
    asyncio.run(_both())  # a loop found before, now stopped
    with pytest.raises(RuntimeError):
        running_loop()


def each_thread_sees_its_own_loop(run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    """Two threads each run a loop (`run`, asyncio.run or uvloop.run) at once: in each,
    running_loop() is always that thread's running loop."""
    seen: dict[str, bool] = {}
    go = threading.Barrier(2, timeout=10)

    async def check(name: str) -> None:
        go.wait()  # both loops run from here on
        for _ in range(50):
            seen[name] = seen.get(name, True) and running_loop() is asyncio.get_running_loop()
            await asyncio.sleep(0)

    t = threading.Thread(target=lambda: run(check("thread")))
    t.start()
    run(check("main"))
    t.join(10)
    assert seen == {"thread": True, "main": True}


def test_running_loop_in_two_threads_answers_each_its_own() -> None:
    each_thread_sees_its_own_loop(asyncio.run)


def _order(debug: bool, seed: int) -> list[int]:
    """Timers with many equal times, some cancelled, some scheduling more: the callback
    order. Debug mode runs asyncio's own call_at and _run_once."""
    rng = random.Random(seed)
    loop = VirtualTimeLoop()
    loop.set_debug(debug)
    loop.slow_callback_duration = 1e9  # no warnings in debug mode
    out: list[int] = []
    handles: list[asyncio.TimerHandle] = []

    def cb(i: int) -> None:
        out.append(i)
        if i % 7 == 0 and i < 1000:
            loop.call_at(loop.time() + rng.choice((0.0, 0.001, 0.002)), cb, i + 1000)
            loop.call_soon(cb, i + 2000)

    async def main() -> None:
        for i in range(300):
            handles.append(loop.call_at(rng.choice((0.001, 0.002, 0.003, 0.0035)), cb, i))
        for h in rng.sample(handles, 40):
            h.cancel()
        await asyncio.sleep(0.01)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lean_turns_run_callbacks_in_asyncios_order(seed: int) -> None:
    assert _order(False, seed) == _order(True, seed)
