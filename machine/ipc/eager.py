"""Eager start of a coroutine handler: run it here, up to its first wait, before any task.

What it does. `start(coro)` steps the coroutine synchronously, in the caller's frame (the
transport's receive callback), exactly as a task's first step would:
  * it returns without waiting (a ctl request, a fault on a resident page): `Ready(value)`,
    and no task, no future and no extra loop iteration was spent on it;
  * it raises before its first wait: the exception propagates out of `start` itself;
  * it waits: `Resumed(coro, first)`, an awaitable that hands what the coroutine yielded
    (the future it waits on) to whatever task awaits it, then keeps stepping the
    coroutine, sending values and throwing exceptions (a cancellation among them) into
    it as the task would have. Only then does the request cost a task (the transport's).
Invariants: the coroutine runs on exactly one path (here, then inside the awaiting task);
`start` never swallows an exception; a `Resumed` is awaited at most once.

Why. A task per request is an allocation, a `call_soon` and one more turn of the event loop
before the handler's first line runs. Most requests never wait (every ctl.* request, uvm
faults that find the page resident, the daemon's claim), and a hop on the in-memory machine
is about 20 µs in all (one loop iteration plus the codec: bench/README.md, step 4, and the
in-memory column of `bench/bench_machine.py --quick`'s breakdown). Measured on the project
host (2 vCPUs, Python 3.11): a handler that returns at once costs 0.7-0.8 µs started here
and 7.7-10 µs as a task awaited by the caller. PERF-ANCHORS anchor 3 is the same effect at
the transport: zmq.asyncio, with a future and a task step per message, costs 2.2x the
synchronous round trip. Introduced in commit 5aec74c ("sync handlers without tasks, eager
start of async handlers").

Python 3.12's `asyncio.eager_task_factory` (and `Task(..., eager_start=True)`) does the
same; when the project moves to 3.12 this module goes and `Service.handle` creates its
tasks with that factory.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Ready(Generic[T]):
    """A coroutine that finished during `start`: its return value, no task needed."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value


class Resumed(Generic[T]):
    """Awaitable that carries on driving a coroutine that already ran to its first wait.

    `first` is what the coroutine yielded to its event loop (a future, or None for a
    bare yield); awaiting this object hands it to the running task and then keeps
    stepping the coroutine, exactly as the task would have.
    """

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, T], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, T]:
        pending = self.first
        while True:
            try:
                value = yield pending
            except BaseException as exc:
                try:
                    pending = self.coro.throw(exc)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
            else:
                try:
                    pending = self.coro.send(value)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]


def start(coro: Coroutine[Any, Any, T]) -> Ready[T] | Resumed[T]:
    """Run `coro` synchronously until it returns or first waits.

    => Ready(value) when it returned; Resumed when it waits (await that, in a task, for the
       rest); whatever it raised before its first wait propagates.
    """
    try:
        first = coro.send(None)
    except StopIteration as done:
        return Ready(done.value)
    return Resumed(coro, first)
