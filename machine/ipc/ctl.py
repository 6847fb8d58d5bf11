"""The ctl.* requests every role answers (hello, ping, stats, dump, halt, shutdown, kpanic).

A mixin of machine.ipc.service.Service: these handlers touch no role state
and take no lock, so they never queue behind work; ping answers EPANIC once
the role has panicked, while dump, stats, hello and shutdown still work (the
supervisor needs them). A role reports through three hooks it may override:
counters() (ctl.stats, status), frames() (the frame census, uvm's) and
dump_state() (what a crash dump holds of it); ctl.dump with `flight` adds the
role's flight recorder (machine.ipc.recorder). A process that runs the memory
watchdog (watch_memory, machine.ipc.memwatch) adds its mem_* counters to
ctl.stats and ctl.dump.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Coroutine
from typing import Any, ClassVar, TypeVar

from machine.ipc import memwatch
from machine.ipc.recorder import FlightRecorder
from machine.ipc.timing import Timing
from machine.ipc.transport import Clock, Server
from machine.kassert import KernelPanic
from machine.proto import (
    PROTOCOL_VERSION,
    CtlAck,
    CtlDump,
    CtlDumpReply,
    CtlHalt,
    CtlHello,
    CtlHelloReply,
    CtlKpanic,
    CtlPing,
    CtlPingReply,
    CtlShutdown,
    CtlStats,
    CtlStatsReply,
    Errno,
    ErrorReply,
    Reply,
    Request,
)
from machine.share import FairShare

R = TypeVar("R", bound=Reply)
T = TypeVar("T")


class CtlHandlers:
    """The ctl.* handlers and the reporting hooks (mixed into Service)."""

    role: ClassVar[str]
    timing: ClassVar[Timing | None]
    incarnation: int
    pid: int
    state: str
    panic_message: str
    stopped_by: str
    stopped: asyncio.Event
    trace: collections.deque[str]
    recorder: FlightRecorder
    clock: Clock
    _userver: Server | None
    inflight: FairShare
    #: The memory watchdog, when this process runs one (watch_memory).
    mem_watch: memwatch.MemWatch | None = None

    def reply(self, req: Request, cls: type[R], **fields: Any) -> R:
        raise NotImplementedError

    def spawn(self, coro: Coroutine[Any, Any, T], name: str = "") -> asyncio.Task[T]:
        raise NotImplementedError

    def panic(self, message: str) -> None:
        raise NotImplementedError

    def ack(self, req: Request) -> CtlAck:
        raise NotImplementedError

    def error(self, re: int, errno: Errno, detail: str) -> ErrorReply:
        raise NotImplementedError

    def on_hello(self, msg: CtlHello) -> Reply:
        return self.reply(
            msg,
            CtlHelloReply,
            role=self.role,
            incarnation=self.incarnation,
            pid=self.pid,
            proto=PROTOCOL_VERSION,
        )

    def on_ping(self, msg: CtlPing) -> Reply:
        if self.state == "panicked":
            return self.error(msg.h.msg_id, Errno.EPANIC, self.panic_message)
        return self.reply(
            msg, CtlPingReply, role=self.role, incarnation=self.incarnation, pid=self.pid
        )

    def on_stats(self, msg: CtlStats) -> Reply:
        return self.reply(
            msg,
            CtlStatsReply,
            role=self.role,
            pid=self.pid,
            incarnation=self.incarnation,
            counters=self.all_counters(),
            frames=self.frames(),
        )

    def on_dump(self, msg: CtlDump) -> Reply:
        state: dict[str, Any] = {
            "role": self.role,
            "pid": self.pid,
            "incarnation": self.incarnation,
            "state": self.state,
            "panic": self.panic_message,
            "counters": self.all_counters(),
            "trace": list(self.trace),
        }
        try:
            state.update(self.dump_state())
        except Exception as e:
            state["dump_error"] = repr(e)
        if self.timing is not None:
            state["timings"] = self.timing.drain()
        if msg.flight:
            state["flight"] = self.recorder.export(self.incarnation, self.pid)
        return self.reply(msg, CtlDumpReply, role=self.role, state=state)

    def on_halt(self, msg: CtlHalt) -> Reply:
        if self.state != "panicked":
            self.state = "panicked"
            self.panic_message = msg.reason
        return self.ack(msg)

    async def on_shutdown(self, msg: CtlShutdown) -> Reply:
        if self.state != "panicked":
            self.state = "stopping"
        self.stopped_by = msg.h.sender
        asyncio.get_running_loop().call_soon(self.stopped.set)
        return self.ack(msg)

    def on_kpanic(self, msg: CtlKpanic) -> Reply:
        raise KernelPanic(msg.message)

    # -- the memory watchdog ------------------------------------------------

    def watch_memory(self, limit: int, *, panics: bool = True) -> None:
        """Run the memory watchdog (machine.ipc.memwatch) for this process: `limit` is
        Limits.role_memory. A role's process and `up`'s supervisor call it after start();
        a simulation never does (W3). panics=False: resets only (the supervisor)."""
        w = self.mem_watch = memwatch.MemWatch(limit, panics)
        self.spawn(
            memwatch.watch(w, self._reset_user, self.panic, self._note, self.clock.sleep),
            "memwatch",
        )

    async def _reset_user(self) -> None:
        if self._userver is not None:
            await self._userver.reset()

    def _note(self, what: str) -> None:
        self.trace.append(what)
        self.recorder.note(what)

    # -- what a role reports ------------------------------------------------

    def all_counters(self) -> dict[str, int]:
        """counters(), and the watchdog's mem_* ones when it runs."""
        mem = self.mem_watch.counters() if self.mem_watch is not None else {}
        return {**self.counters(), **mem, "share_refused_inflight": self.inflight.refused}

    def counters(self) -> dict[str, int]:
        return {}

    def frames(self) -> dict[str, int]:
        return {}

    def dump_state(self) -> dict[str, Any]:
        return {}
