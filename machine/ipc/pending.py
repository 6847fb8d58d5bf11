"""Pending: a reply that a later message's handler completes, synchronously.

A request that must wait for another message (a user access parked on a trap
until uvm's answer comes; uvm's pmap.trapwait until a trap comes) can return a
Pending instead of suspending a coroutine. The handler of the message that
completes it calls `set(value)`, and every `then` callback runs right there,
inside that handler: the transport sends the reply bytes before the handler
returns. No task, no future, no turn of the event loop stands between the
completing message and the reply (a coroutine's wake-up costs a call_soon, a
loop iteration and a task step: about a third of the mmu's CPU per fault,
bench/README.md "Deferred replies").

Invariants:
  * a Pending is set at most once; a later `set` is ignored (the first value wins);
  * each callback runs exactly once, with the value: at `set`, or at `then` when
    already set; callbacks run in the order they were added;
  * a callback must not raise (the service layer's, which turns a Reply into bytes,
    catches everything: every request gets exactly one reply);
  * a Pending is also awaitable (a future's wait), so a transport or tool that does
    not know it still gets the value, one loop turn later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
U = TypeVar("U")

_UNSET: Any = object()


class Pending(Generic[T]):
    """A value to come, handed to callbacks synchronously when it is set."""

    __slots__ = ("_callbacks", "_value")

    def __init__(self) -> None:
        self._value: T = _UNSET
        self._callbacks: list[Callable[[T], None]] = []

    def done(self) -> bool:
        return self._value is not _UNSET

    def result(self) -> T:
        """The value. => LookupError while not set."""
        if self._value is _UNSET:
            raise LookupError("pending: not set yet")
        return self._value

    def then(self, cb: Callable[[T], None]) -> None:
        """Call cb(value) when set (now, if it is)."""
        if self._value is _UNSET:
            self._callbacks.append(cb)
        else:
            cb(self._value)

    def set(self, value: T) -> None:
        """Set the value and run the callbacks here. A second set is ignored."""
        if self._value is not _UNSET:
            return
        self._value = value
        cbs, self._callbacks = self._callbacks, []
        for cb in cbs:
            cb(value)

    def map(self, fn: Callable[[T], U]) -> Pending[U]:
        """A Pending of fn(value), set in the same call as this one."""
        out: Pending[U] = Pending()
        self.then(lambda v: out.set(fn(v)))
        return out

    def __await__(self) -> Generator[Any, None, T]:
        if self._value is _UNSET:
            fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()

            def wake(v: T) -> None:
                if not fut.done():
                    fut.set_result(v)

            self.then(wake)
            return (yield from fut.__await__())
        return self._value


def deferred(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a plain handler that may return a Pending: the service counts it among the
    requests in flight (limits.inflight) as it does a coroutine handler."""
    fn.deferred = True  # type: ignore[attr-defined]
    return fn
