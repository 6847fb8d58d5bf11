"""The asyncio bridge: the async client (machine.client) driven from gevent greenlets.

    bridge = AsyncBridge()                      # one per Locust process
    with bridge.attach(endpoint) as m:          # m: machine.client.Machine
        p = bridge.run(m.spawn())
        va = bridge.run(p.mmap(4096))
        bridge.run(p.store(va, b"hi"))          # blocks this greenlet only
    bridge.close()

The alternative to green.py, kept because it was measured against it
(bench/bench_stress_client.py; docs/stress.md "Which client" has the verdict).
asyncio's running loop is per OS thread, so greenlets cannot share one loop
by awaiting in turn. Here the loop runs in a real OS thread of its own,
started with the original `_thread.start_new_thread` (in a monkey-patched
process even `monkey.get_original("threading", "Thread")` starts a greenlet:
its start() calls threading's patched `_start_new_thread`, and the loop then
blocks the hub), on the original selector (the patched `selectors.DefaultSelector`
is gevent's, bound to the hub). A greenlet hands the loop a coroutine
(`loop.call_soon_threadsafe` + a Task: what `run_coroutine_threadsafe` does,
without its concurrent.futures.Future, whose lock monkey-patching makes a
gevent lock shared by two threads) and sleeps in a gevent Waiter. The wake-up
is one libev `async` watcher of the hub for the whole bridge: the loop thread
appends the finished call to a deque and sends the watcher (thread-safe);
the hub drains the deque and switches to each waiter. One wake-up serves
every call that finished since the last, so 64 greenlets cost less than 64
wake-ups. (The spike waited through gevent's threadpool: a pool thread
blocked in Future.result() per call; the bench keeps that as `threadpool`.)

Invariants:
  - the loop, every Task, the shared ZmqTransport and every Machine live in
    the loop thread; greenlets only create coroutine objects and hand them
    over; the waiters, `_pending` and the watcher's ref are touched only in
    the hub's thread; the loop thread only appends to `_done` and sends;
  - `_pending` counts calls from submission until the hub has drained them
    (each exactly once); a waiting greenlet that is killed (Locust stopping
    a user) cancels its Task, and its late result is dropped by its Waiter;
  - the watcher holds the hub's loop alive (ref) only while a call is pending,
    so an idle bridge does not keep gevent.wait() from returning;
  - after close() every pending call has been cancelled, the transport
    destroyed, the loop closed and its thread ended; run() raises.
  - one bridge per process, made and used in the hub's (main) thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Coroutine, Iterator
from typing import Any, Protocol, TypeVar, cast

import gevent
import gevent.monkey
from gevent.hub import Waiter

from machine.client import Machine
from machine.ipc.zmqtransport import ZmqTransport

T = TypeVar("T")

_CLOSE_S = 10.0  # close() waits this long for the loop thread


class _Wake(Protocol):
    """The hub's async watcher as used here (gevent's stubs omit its `ref`)."""

    ref: bool

    def start(self, callback: Any) -> None: ...
    def send(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


class _Call:
    """One coroutine handed to the loop: its Task (loop thread) and its waiter (hub)."""

    __slots__ = ("coro", "task", "waiter")

    def __init__(self, coro: Coroutine[Any, Any, Any], waiter: Waiter[Any]) -> None:
        self.coro = coro
        self.waiter = waiter
        self.task: asyncio.Task[Any] | None = None


class AsyncBridge:
    """One asyncio loop in an OS thread, serving every greenlet of this process."""

    def __init__(self) -> None:
        self._hub = gevent.get_hub()
        self._done: collections.deque[_Call] = collections.deque()
        self._pending = 0
        self._closed = False
        self._wake = cast(_Wake, self._hub.loop.async_())
        self._wake.ref = False
        self._wake.start(self._drain)
        # the original selector and thread: gevent's would be the hub's, in the wrong thread
        selector_cls = gevent.monkey.get_original("selectors", "DefaultSelector")
        self.loop = asyncio.SelectorEventLoop(selector_cls())
        self._transport: ZmqTransport | None = None
        # `_thread.start_new_thread` itself: even the original threading.Thread class
        # starts a greenlet once patched (it calls threading's patched _start_new_thread)
        self._ended = gevent.monkey.get_original("_thread", "allocate_lock")()
        self._ended.acquire()
        gevent.monkey.get_original("_thread", "start_new_thread")(self._serve, ())

    # -- the loop thread ---------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
            self._ended.release()

    def _start(self, call: _Call) -> None:
        """(loop thread) Start the call's Task; its end is reported to the hub."""
        call.task = self.loop.create_task(call.coro)
        call.task.add_done_callback(lambda _t: self._finished(call))

    def _finished(self, call: _Call) -> None:
        """(loop thread) Queue the call for the hub and wake it (thread-safe send)."""
        self._done.append(call)
        self._wake.send()

    async def _shared_transport(self) -> ZmqTransport:
        if self._transport is None:
            self._transport = ZmqTransport()
        return self._transport

    async def _shutdown(self) -> None:
        for t in asyncio.all_tasks():
            if t is not asyncio.current_task():
                t.cancel()
        if self._transport is not None:
            await self._transport.close()
            self._transport = None

    # -- the hub -----------------------------------------------------------------------

    def _drain(self) -> None:
        """(hub) Wake the greenlet of every finished call."""
        while self._done:
            call = self._done.popleft()
            self._pending -= 1
            if self._pending == 0:
                self._wake.ref = False
            call.waiter.switch(None)  # returns here when that greenlet blocks again

    # -- greenlets -----------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of the async client on the loop; block this greenlet only.
        => its value, or raises its exception. Killed while waiting => the Task is
        cancelled (and the kill goes on)."""
        if self._closed:
            coro.close()
            raise RuntimeError("AsyncBridge is closed")
        call = _Call(coro, Waiter(self._hub))
        self._pending += 1
        self._wake.ref = True
        self.loop.call_soon_threadsafe(self._start, call)
        try:
            call.waiter.get()
        except BaseException:
            self.loop.call_soon_threadsafe(self._cancel, call)
            raise
        assert call.task is not None
        assert call.task.done()
        return call.task.result()  # type: ignore[no-any-return]

    def _cancel(self, call: _Call) -> None:
        """(loop thread) Cancel an abandoned call (its Task may not have started yet)."""
        if call.task is None:
            call.coro.close()
        else:
            call.task.cancel()

    @contextlib.contextmanager
    def attach(self, endpoint: str, *, timeout_s: float = 30.0) -> Iterator[Machine]:
        """A session (machine.client.Machine) on the bridge's one zmq context;
        detaches on the way out. Call its coroutines through run()."""

        async def enter() -> tuple[contextlib.AbstractAsyncContextManager[Machine], Machine]:
            cm = Machine.attach(
                endpoint, transport=await self._shared_transport(), timeout_s=timeout_s
            )
            return cm, await cm.__aenter__()

        cm, m = self.run(enter())
        try:
            yield m
        finally:
            self.run(cm.__aexit__(None, None, None))

    def close(self) -> None:
        """Cancel what is pending, destroy the transport, stop the loop, join its thread."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            self.run(self._shutdown())
        self._closed = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._ended.acquire(True, _CLOSE_S):  # a real lock: blocks the hub, briefly
            self._ended.release()
        self._wake.stop()
        self._wake.close()

    def __enter__(self) -> AsyncBridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["AsyncBridge"]
