"""Tasks with an owner: the one way the machine starts a task it does not await at once.

A bare `asyncio.ensure_future` makes a task nobody owns: its exception shows up, if ever,
as "Task exception was never retrieved" when the garbage collector finds it, and nothing
stops it when its owner closes. Every task here has an owner, like a trio nursery or
Python 3.11's `asyncio.TaskGroup`, but without the group's "one child fails, all are
cancelled, errors come back as an ExceptionGroup" (a role's driver loop failing must panic
the role, not cancel its request handlers):

  * `TaskSet.spawn(coro, name)` starts a task the set tracks until it ends.
  * A task that ends with an exception (not a cancellation) is reported at once to the
    set's `on_error(name, exc)`: a role panics (Service.spawn), a transport hands it to
    the loop's exception handler. With `report=False` the owner awaits the task itself and
    gets its exception there; the set reports nothing, it only guarantees the next point.
  * `close()` (or leaving `async with TaskSet()`) cancels every task still running and
    awaits them all: when it returns, none of the set's tasks runs. A task whose
    cancellation ends in another exception is reported then. The set stays usable.
  * `race(*coros)` runs coroutines until the first one ends and cancels and awaits the
    others before it returns: nothing it started outlives it.
Invariant: every task started through this module is either awaited by its owner or
cancelled and awaited by a `close()`, and no exception of one is dropped unseen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
OnError = Callable[[str, BaseException], None]


def report_to_loop(name: str, exc: BaseException) -> None:
    """The default on_error: the running loop's exception handler (logged by asyncio)."""
    asyncio.get_running_loop().call_exception_handler(
        {"message": f"background task {name or '?'} failed", "exception": exc}
    )


class TaskSet:
    """The tasks one owner started (see the module docstring for the rules)."""

    def __init__(self, on_error: OnError = report_to_loop) -> None:
        self.on_error = on_error
        self._tasks: dict[asyncio.Task[Any], tuple[str, bool]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(
        self, coro: Coroutine[Any, Any, T], name: str = "", *, report: bool = True
    ) -> asyncio.Task[T]:
        """Start `coro` as a task of this set.

        => the task runs from the loop's next turn; it is removed from the set when it
           ends, and its exception goes to on_error unless report=False.
        """
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks[task] = (name, report)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        name, report = self._tasks.pop(task, ("", False))
        if report and not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            self.on_error(name, exc)

    async def close(self) -> None:
        """Cancel every task still running and wait until all have ended."""
        while self._tasks:
            pending = dict(self._tasks)
            for t in pending:
                t.cancel()
            results = await asyncio.gather(*pending, return_exceptions=True)
            for (name, report), result in zip(pending.values(), results, strict=True):
                # report=True tasks were reported by _done; the others' owners are gone
                if not report and _failed(result):
                    assert isinstance(result, BaseException)
                    self.on_error(name, result)

    async def __aenter__(self) -> TaskSet:
        return self

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _failed(result: object) -> bool:
    return isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError)


async def race(
    *coros: Coroutine[Any, Any, Any], timeout_s: float | None = None
) -> asyncio.Task[Any] | None:
    """Run `coros` until the first ends (or `timeout_s` passes).

    => the first task to end (done: its result or exception is the caller's to read), or
       None on timeout; every other task has ended (cancelled and awaited), and an
       exception one of them ended with went to the loop's exception handler.
    """
    tasks = TaskSet()
    started = [tasks.spawn(c, f"race {i}", report=False) for i, c in enumerate(coros)]
    try:
        done, _ = await asyncio.wait(
            started, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        await tasks.close()  # reports a loser that fails while being cancelled
    first = next((t for t in started if t in done), None)
    for t in started:
        if t is not first and t in done and not t.cancelled() and t.exception() is not None:
            report_to_loop(f"race {started.index(t)}", t.exception())  # type: ignore[arg-type]
    return first
