"""A ZeroMQ socket read and written from the asyncio loop: the transport's one wrapper.

Plain (blocking-API) pyzmq sockets are driven from the event loop through
their ZMQ_FD, not through zmq.asyncio: measured here (bench/), zmq.asyncio's
futures and extra wake-ups cost about a third of a round trip.
machine.ipc.zmqtransport builds its servers, connections, publishers and
subscriptions on LoopSocket.

The ZMQ_FD contract, which LoopSocket follows: the fd is
edge-triggered, says only "the socket's events may have changed", and is armed
again when libzmq processes the socket's commands: in a ZMQ_EVENTS read, a read
that ends in EAGAIN, and (throttled, about once a millisecond) a send. So a
reader drains until nothing is left, and after a send ZMQ_EVENTS is read again
(the send may have consumed the edge). Each such look costs a getpid and a poll
of the socket's mailbox, so it is made once per turn, not per message: after
the first message one ZMQ_EVENTS read (POLLIN: a burst, read with NOBLOCK until
zmq.Again, which costs ~2 µs more in Python); sends on other sockets during a
drain have each of them looked at once, when it ends. A PUB's recv fails without
processing commands: ZMQ_EVENTS does it. (bench/bench_syscalls.py counts them.)

Fairness: a reader takes at most DRAIN_BATCH messages or DRAIN_BUDGET_S of
handler time per turn of the loop, then comes back with loop.call_soon (the
edge is spent, so a drain cut short is always rescheduled, never dropped).
Every socket of the process, the kernel endpoint's among them, is so read
in turn: one client's burst delays the supervisor's heartbeat by one batch,
never by the whole burst. No socket is served first: a turn is short enough.
A turn reads every ready message up to that bound (one loop wake-up, many
messages) and sends each reply as its handler returns it.

Cost per message: the hot path passes plain-int flags and options and calls
pyzmq's compiled send/recv/get (`part_sender`): pyzmq's enum flags and its
Python-level send_multipart cost ~8 µs a request on each side, more than a
Service's own checks and dispatch of a ctl.ping (~6 µs).
Behaviour is send_multipart's: parts go out with SNDMORE, a ROUTER or PUB at
its high-water mark drops, a DEALER's zmq.Again queues the message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import zmq
import zmq.backend

#: One turn of a socket's reader: at most this many messages ...
DRAIN_BATCH = 32
#: ... or this much time in their handlers, whichever comes first.
DRAIN_BUDGET_S = 0.002
_clock = time.perf_counter  # the budget's clock (tests replace it)

# The per-message calls, made cheap (bench/README.md, "CPU per message"): pyzmq's
# constants are enum members whose `&` and `|` run in Python (~1 µs each), and
# pyzmq's Socket.send/send_multipart wrap the compiled send in Python (~5 µs per
# two-part reply); the hot paths use plain ints and the compiled methods.
_POLLIN, _POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)
_NOBLOCK, _SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)
_EVENTS, _RCVMORE = int(zmq.EVENTS), int(zmq.RCVMORE)


class _Turn(threading.local):
    """Per thread (a loop's): while a drain runs, the sockets sent on, checked at its end."""

    unchecked: list[LoopSocket] | None = None


_turn = _Turn()


def part_sender(sock: Any) -> Callable[[bytes, int], Any]:
    """sock's compiled send(part, flags) (a test's stand-in socket: its own send)."""
    if isinstance(sock, zmq.backend.Socket):
        return types.MethodType(zmq.backend.Socket.send, sock)
    send: Callable[[bytes, int], Any] = sock.send
    return send


class LoopSocket:
    """A zmq socket read and written from the asyncio loop (see the module docstring).

    => at most `max_parts` parts per message reach on_frames; longer messages
       are dropped (counted in `dropped`).
    => one drain() reads at most DRAIN_BATCH messages or DRAIN_BUDGET_S; when it
       stops early a drain is scheduled (call_soon), so input is never stranded
       behind a spent edge. At most one scheduled drain is pending at a time.
    """

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        on_frames: Callable[[list[bytes]], None] | None,
        drop_when_full: bool = False,
        max_parts: int = 2,
        views: bool = False,
    ) -> None:
        self.sock = sock
        self.views = views  # parts after the first read as views (no copy)
        self.on_frames = on_frames
        self.drop_when_full = drop_when_full
        self.max_parts = max_parts
        self.loop = asyncio.get_running_loop()
        self.fd = int(sock.getsockopt(zmq.FD))
        self._send_part = part_sender(sock)
        self._get: Callable[[int], int] = sock.get  # type: ignore[assignment]  # int options
        self.backlog: collections.deque[list[bytes]] = collections.deque()
        self.closed = False
        self.dropped = 0
        self.turns = 0  # drains cut short by the batch or the budget (tests)
        self._draining = False
        self._unchecked = False  # sent on; its mailbox is checked when the drain ends
        self._again: asyncio.Handle | None = None
        self.loop.add_reader(self.fd, self.drain)
        self._resume()

    def _resume(self) -> None:
        """Drain again on the loop's next turn (once, however often asked)."""
        if self._again is None and not self.closed:
            self._again = self.loop.call_soon(self._drain_again)

    def _drain_again(self) -> None:
        self._again = None
        self.drain()

    def drain(self) -> None:
        if self.closed or self._draining:
            return
        self._draining = True
        turn, sent = _turn, _turn.unchecked
        if outer := sent is None:
            turn.unchecked = sent = []
        try:
            if self._drain_batch():
                self.turns += 1
                self._resume()
        finally:
            self._draining = False
            if outer:
                turn.unchecked = None
                for ls in sent:
                    ls._check()

    def _drain_batch(self) -> bool:
        """Read one batch. => True if input may be left (the edge is spent: come back)."""
        if self.on_frames is None or self.backlog:
            # A PUB reads nothing (its recv fails at once, processing no commands):
            # ZMQ_EVENTS processes them, which also tells whether a queued send can go.
            self._flush_backlog()
            if self.on_frames is None:
                return False
        deadline = _clock() + DRAIN_BUDGET_S
        burst = False
        for _ in range(DRAIN_BATCH):
            if self.closed:
                return False
            try:
                frames = self._recv()
            except zmq.Again:
                # The read's command processing may have consumed a POLLOUT edge.
                return bool(self.backlog) and self._flush_backlog()
            except zmq.ZMQError:
                return False
            if frames is not None and self.on_frames is not None:
                try:
                    self.on_frames(frames)
                except Exception as e:  # a handler never raises; if one does, read on
                    self.loop.call_exception_handler(
                        {"message": "socket reader callback raised", "exception": e}
                    )
            if _clock() >= deadline:
                break
            if not burst:  # one message so far: ZMQ_EVENTS is cheaper than a zmq.Again
                try:
                    if not self._get(_EVENTS) & _POLLIN:
                        return bool(self.backlog) and self._flush_backlog()
                except zmq.ZMQError:
                    return False
                burst = True
        return True

    def _flush_backlog(self) -> bool:
        """Send what the backlog holds if the socket can take it. => True if input waits."""
        try:
            events = self._get(_EVENTS)
        except zmq.ZMQError:
            return False
        if events & _POLLOUT and self.backlog:
            self._flush()
            try:  # the sends may have processed commands too: look once more
                events = self._get(_EVENTS)
            except zmq.ZMQError:
                return False
        return bool(events & _POLLIN)

    def _recv(self) -> list[bytes] | None:
        """One whole message, or None when it has more parts than max_parts (dropped).

        ZeroMQ makes a message readable only once all its parts are in, so the
        parts after the first never block. Extra parts are read without a copy
        (copy=False: a zmq.Frame around libzmq's buffer) and let go at once.
        """
        sock, get = self.sock, self._get
        frames = [sock.recv(_NOBLOCK)]
        while get(_RCVMORE):
            if len(frames) < self.max_parts:
                if self.views:
                    frames.append(sock.recv(_NOBLOCK, copy=False).buffer)  # type: ignore[arg-type]
                else:
                    frames.append(sock.recv(_NOBLOCK))
                continue
            while get(_RCVMORE):
                sock.recv(_NOBLOCK, copy=False)
            self.dropped += 1
            return None
        return frames

    def _send(self, frames: list[bytes]) -> None:
        """send_multipart(frames, NOBLOCK), through the compiled send (zmq.Again as it)."""
        send, last = self._send_part, len(frames) - 1
        for i in range(last):
            send(frames[i], _NOBLOCK | _SNDMORE)
        send(frames[last], _NOBLOCK)

    def _flush(self) -> None:
        while self.backlog:
            try:
                self._send(self.backlog[0])
            except zmq.Again:
                return
            self.backlog.popleft()

    def send(self, frames: list[bytes]) -> None:
        if self.closed:
            return
        if not self.backlog:
            try:
                self._send(frames)
            except zmq.Again:
                if not self.drop_when_full:
                    self.backlog.append(frames)
            except zmq.ZMQError:
                return
        elif not self.drop_when_full:
            self.backlog.append(frames)
        if self._draining or self._unchecked:
            return  # the drain in progress ends with a mailbox check; or one is due
        # The send may have eaten the fd's edge: look again for input, once, when the
        # drain that sent it ends (a reply sent while another socket drains), else now.
        sent = _turn.unchecked
        if sent is not None:
            self._unchecked = True
            sent.append(self)
        else:
            self._check()

    def _check(self) -> None:
        """After sends: the mailbox checked once (ZMQ_EVENTS); input found is drained."""
        self._unchecked = False
        if self.closed:
            return
        try:
            if self._get(_EVENTS) & _POLLIN:
                self._resume()
        except zmq.ZMQError:
            pass

    def close(self, linger_ms: int) -> None:
        if self.closed:
            return
        self.closed = True
        if self._again is not None:
            self._again.cancel()
            self._again = None
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.fd)
        self.sock.close(linger=linger_ms)
