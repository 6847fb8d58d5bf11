"""machine.ipc.eager: a coroutine runs here up to its first wait, and only then needs a task."""

from __future__ import annotations

import asyncio

import pytest

from machine.ipc import eager


async def test_a_coroutine_runs_synchronously_up_to_its_first_wait() -> None:
    steps: list[str] = []
    gate = asyncio.get_running_loop().create_future()

    async def handler() -> str:
        steps.append("before")
        value = await gate
        steps.append("after")
        return f"got {value}"

    started = eager.start(handler())
    assert steps == ["before"]  # ran in start(), before any loop turn
    assert isinstance(started, eager.Resumed)
    rest = asyncio.get_running_loop().create_task(_awaiting(started))
    await asyncio.sleep(0)
    assert steps == ["before"]  # still waiting on the gate
    gate.set_result(7)
    assert await rest == "got 7"
    assert steps == ["before", "after"]


async def _awaiting(rest: eager.Resumed[str]) -> str:
    return await rest


async def test_a_reply_ready_without_a_wait_costs_no_task() -> None:
    async def handler() -> int:
        return 42

    before = len(asyncio.all_tasks())
    started = eager.start(handler())
    assert isinstance(started, eager.Ready)
    assert started.value == 42
    assert len(asyncio.all_tasks()) == before


async def test_an_exception_before_the_first_wait_propagates_from_start() -> None:
    async def handler() -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        eager.start(handler())


async def test_an_exception_after_the_first_wait_propagates_from_the_await() -> None:
    async def handler() -> None:
        await asyncio.sleep(0)
        raise KeyError("late")

    started = eager.start(handler())
    assert isinstance(started, eager.Resumed)
    with pytest.raises(KeyError, match="late"):
        await started


async def test_a_cancellation_reaches_the_coroutine_at_its_wait() -> None:
    seen: list[str] = []

    async def handler() -> None:
        try:
            await asyncio.get_running_loop().create_future()  # waits forever
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    started = eager.start(handler())
    assert isinstance(started, eager.Resumed)
    task = asyncio.get_running_loop().create_task(_awaiting(started))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]
