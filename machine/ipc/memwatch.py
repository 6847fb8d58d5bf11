"""A role's memory bound: RLIMIT_DATA as the wall, a watchdog on the loop before it.

What it defends against: a client (no session needed) that sends parts of a
multipart message on a user endpoint and never the last part. libzmq's
high-water mark counts whole messages and ZMQ_MAXMSGSIZE bounds one frame,
so libzmq keeps every part it reads (about 1 GB/s on one core) until the
connection closes; nothing in ZeroMQ bounds it (machine.ipc.zmqtransport).
A flood of empty parts costs the role about 64 bytes each (one zmq_msg_t).

Three lines, from Limits.role_memory (L, bytes; `up --limit role_memory=`):

  soft   L/2   private resident memory (RssAnon) at or past it: the role
               resets its user endpoint (unbind and bind again: every client
               connection is closed, every part it held is freed), trims the
               allocator (malloc_trim) on the next tick, counts it
               (`mem_resets`), traces it and notes it in the flight recorder.
  panic  3L/4  still at or past it on the tick after a reset (the memory is
               the role's own, not the endpoint's): a clean panic
               (Service.panic: the supervisor halts, dumps, stops the machine).
  wall   L     RLIMIT_DATA (private writable mappings: VmData; the MAP_SHARED
               RAM segment is not counted). Reached only if memory grows by
               L/4 faster than one tick: malloc fails, libzmq aborts or Python
               raises MemoryError; the supervisor sees the role exit and
               panics the machine with a dump of the others.

Invariants:
  W1  One sample per tick (TICK_S): reading /proc/self/statm, ~10 µs; nothing
      per request.
  W2  At most one reset per tick; after a reset the next tick trims and
      resamples before anything else, and a further reset needs the memory to
      grow again by L/8 over what the trim left (a role whose own state sits
      past the soft line is not reset every tick).
  W3  The watchdog runs only where a process is the role's own (rolemain,
      `up`'s supervisor); a simulation has none (its runs are a function of
      their seeds).

What a client in flight sees at a reset: its connection closes; a request
not yet read, or a reply not yet sent, is lost, so that call ends with its
timeout (MachineTimeout); its DEALER reconnects by itself (ZeroMQ's
reconnect interval, 100 ms) and its next call is served.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

TICK_S = 0.05
_PAGE = os.sysconf("SC_PAGE_SIZE")
_MiB = 1 << 20


def sample() -> tuple[int, int]:
    """=> (private resident bytes, VmData-ish bytes) of this process (/proc/self/statm:
    resident - shared = RssAnon; data = VmData + VmStk)."""
    with open("/proc/self/statm", "rb") as f:
        fields = f.read().split()
    resident, shared, data = int(fields[1]), int(fields[2]), int(fields[5])
    return (resident - shared) * _PAGE, data * _PAGE


def _libc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        fn: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to trim
        return None
    return fn


_trim = _libc_trim()


def malloc_trim() -> None:
    """Give the allocator's free memory back to the system (glibc; elsewhere nothing)."""
    if _trim is not None:
        _trim(0)


def set_data_limit(limit: int) -> None:
    """RLIMIT_DATA of this process (soft and hard) to `limit` bytes, never above the
    hard limit it already has."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


@dataclass
class MemWatch:
    """The watchdog's state; tick() once per TICK_S (Service.watch_memory runs it).

    => tick() returns None, "reset" (reset the user endpoint now) or "panic" (the
       role's own memory is past the panic line after a reset and a trim).
    """

    limit: int
    panics: bool = True  # the supervisor resets only (its panic is the machine's)
    anon: int = 0
    data: int = 0
    peak: int = 0
    resets: int = 0
    _floor: int = 0  # what the last trim left (W2); 0: under the soft line again
    _trim_due: bool = False

    @property
    def soft(self) -> int:
        return self.limit // 2

    @property
    def panic_line(self) -> int:
        return self.limit * 3 // 4

    def tick(self, read: Callable[[], tuple[int, int]] = sample) -> str | None:
        if self._trim_due:
            self._trim_due = False
            malloc_trim()
            self.anon, self.data = read()
            self._floor = self.anon if self.anon >= self.soft else 0
            if self.panics and self.anon >= self.panic_line:
                return "panic"
            return None
        self.anon, self.data = read()
        self.peak = max(self.peak, self.anon)
        if self.anon < self.soft:
            self._floor = 0
            return None
        if self.anon >= max(self.soft, self._floor + self.limit // 8):
            self.resets += 1
            self._trim_due = True
            return "reset"
        return None

    def counters(self) -> dict[str, int]:
        """For ctl.stats (and so `status`): KiB, and the resets so far."""
        return {
            "mem_kb": self.anon >> 10,
            "mem_data_kb": self.data >> 10,
            "mem_peak_kb": self.peak >> 10,
            "mem_resets": self.resets,
        }

    def describe(self) -> str:
        return (
            f"{self.anon // _MiB} MiB private (limit {self.limit // _MiB} MiB: soft "
            f"{self.soft // _MiB}, panic {self.panic_line // _MiB})"
        )


async def watch(
    w: MemWatch,
    reset: Callable[[], Awaitable[None]],
    panic: Callable[[str], None],
    note: Callable[[str], None],
    sleep: Callable[[float], Awaitable[None]],
) -> None:
    """The watchdog loop (a role's background task): sample, and reset or panic."""
    while True:
        act = w.tick()
        if act == "reset":
            note(f"memory: {w.describe()}: user endpoint reset #{w.resets}")
            await reset()
        elif act == "panic":
            panic(f"memory: {w.describe()} after a reset and a trim: the role's own")
            return
        await sleep(TICK_S)
