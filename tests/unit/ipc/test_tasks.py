"""machine.ipc.tasks: every task has an owner; failures are reported; close ends them all."""

from __future__ import annotations

import asyncio
import random

from machine.ipc.inmemory import InMemoryTransport
from machine.ipc.tasks import TaskSet, race

from .test_service import Toy


async def _fail(msg: str) -> None:
    await asyncio.sleep(0)
    raise RuntimeError(msg)


async def _forever(log: list[str], name: str) -> None:
    try:
        await asyncio.get_running_loop().create_future()
    finally:
        log.append(f"{name} ended")


async def test_a_failing_task_is_reported_once_with_its_name() -> None:
    errors: list[tuple[str, str]] = []
    tasks = TaskSet(on_error=lambda name, exc: errors.append((name, str(exc))))
    t = tasks.spawn(_fail("boom"), "driver")
    await asyncio.wait([t])
    await asyncio.sleep(0)  # done callbacks run on the next turn
    assert errors == [("driver", "boom")]
    assert len(tasks) == 0
    await tasks.close()
    assert errors == [("driver", "boom")]


async def test_close_cancels_and_awaits_every_task() -> None:
    log: list[str] = []
    errors: list[str] = []
    tasks = TaskSet(on_error=lambda name, exc: errors.append(name))
    a = tasks.spawn(_forever(log, "a"), "a")
    b = tasks.spawn(_forever(log, "b"), "b", report=False)
    await asyncio.sleep(0)
    await tasks.close()
    assert a.cancelled()
    assert b.cancelled()
    assert sorted(log) == ["a ended", "b ended"]  # their finally blocks ran before close returned
    assert errors == []  # a cancellation is not a failure
    assert len(tasks) == 0


async def test_an_owner_awaited_task_is_not_reported_unless_it_fails_at_close() -> None:
    errors: list[str] = []
    tasks = TaskSet(on_error=lambda name, exc: errors.append(f"{name}: {exc}"))
    t = tasks.spawn(_fail("mine"), "awaited", report=False)
    try:
        await t
    except RuntimeError:
        pass
    assert errors == []

    async def fails_when_cancelled() -> None:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            raise ValueError("while stopping") from None

    tasks.spawn(fails_when_cancelled(), "stubborn", report=False)
    await asyncio.sleep(0)
    await tasks.close()
    assert errors == ["stubborn: while stopping"]


async def test_leaving_the_block_ends_the_tasks_even_on_an_exception() -> None:
    log: list[str] = []
    try:
        async with TaskSet() as tasks:
            tasks.spawn(_forever(log, "child"), report=False)
            await asyncio.sleep(0)
            raise LookupError("the owner fails")
    except LookupError:
        pass
    assert log == ["child ended"]


async def test_race_returns_the_first_and_ends_the_others() -> None:
    log: list[str] = []

    async def quick() -> str:
        await asyncio.sleep(0)
        return "quick"

    first = await race(_forever(log, "slow"), quick())
    assert first is not None
    assert first.result() == "quick"
    assert log == ["slow ended"]


async def test_race_with_a_timeout_returns_none_and_ends_everything() -> None:
    log: list[str] = []
    assert await race(_forever(log, "x"), _forever(log, "y"), timeout_s=0.01) is None
    assert sorted(log) == ["x ended", "y ended"]


async def test_a_roles_failing_background_task_panics_it_and_close_ends_the_others() -> None:
    toy = Toy(InMemoryTransport(1), rng=random.Random(1), pid=1)
    log: list[str] = []
    toy.spawn(_forever(log, "loop"), "loop")
    failing = toy.spawn(_fail("driver died"), "driver")
    await asyncio.wait([failing])
    await asyncio.sleep(0)
    assert toy.state == "panicked"
    assert "background task driver failed" in toy.panic_message
    await toy.close()
    assert log == ["loop ended"]
