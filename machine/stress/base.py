"""MachineUser: the base of every stress user — a session, and operations reported to Locust.

    class PatternUser(MachineUser):
        @task
        def step(self) -> None:
            with self.op("pattern.load") as t:
                got = self.proc.load(va, n)
                t.nbytes = n
                Corruption.check("pattern.load", self.model[...], got, va=va)

Each `op(name)` block is one operation: Locust sees a request (type "vm", the
name, the time, the bytes) that succeeded or failed with its exception. How a
failure ends the block:
  - Corruption: a failure, and recorded as corruption (Harness.corrupted);
  - MachinePanic: a failure, recorded as the run's panic, and the user stops
    (the master stops the whole run at once);
  - any other MachineError (Segv, OutOfMemory, a timeout ...): a failure;
then `on_op_error(exc)` lets the user drop state the failure made unknown, and
the task ends (Locust's RescheduleTask: the user goes on with its next task).
An exception that is not a MachineError is a bug of the user: the request fails
and the exception goes on to Locust (a user error: the verdict counts it).

The open model (`--rate OPS`, per user): operation k of a user is due at
t0 + k/OPS; op() waits for that time, and the operation's time is measured from
it, not from when it could start. So a machine that stalls shows its stall in
every operation queued behind it (no coordinated omission), and a user that
falls behind does not wait before its next operation.

Invariants: every op() fires exactly one request event; `self.m` is attached
between on_start and on_stop, and on_stop detaches it whatever happened.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import gevent
from locust import User, constant
from locust.env import Environment
from locust.exception import RescheduleTask, StopUser

from machine.client.errors import MachineError, MachinePanic
from machine.stress.green import EventWatch, GreenMachine
from machine.stress.outcome import Corruption

REQUEST_TYPE = "vm"
MSG_CORRUPTION, MSG_PANIC = "uvm_corruption", "uvm_panic"  # worker -> master messages


class Harness:
    """What every user of one Locust process shares (the locustfile makes it). The
    options are read when used: a worker gets the master's only with its first spawn."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.watch: EventWatch | None = None

    def option(self, name: str, default: Any = None) -> Any:
        return getattr(self.env.parsed_options, name, default)

    @property
    def rate(self) -> float:
        """Operations per second per user (`--rate`); 0: the closed model."""
        return float(self.option("rate", 0.0) or 0.0)

    def watch_for(self, m: GreenMachine) -> EventWatch:
        """The process's EventWatch, started on first use (it needs the events endpoint)."""
        if self.watch is None:
            self.watch = EventWatch(m.directory.events).start()
        return self.watch

    def close(self) -> None:
        """End the process's EventWatch (Locust's quitting event: every user has left)."""
        if self.watch is not None:
            self.watch.close()
            self.watch = None

    def send(self, kind: str, data: dict[str, Any]) -> None:
        """To the master (a local run: to this process's own listeners)."""
        assert self.env.runner is not None
        self.env.runner.send_message(kind, data)

    def corrupted(self, detail: dict[str, Any]) -> None:
        self.send(MSG_CORRUPTION, detail)

    def panicked(self, e: MachinePanic) -> None:
        self.send(MSG_PANIC, {"role": e.role, "message": e.message, "dump": e.dump})


@dataclass
class OpTimer:
    """The operation being timed: a block sets `nbytes` (Locust's response length)."""

    name: str  # a block may rename its operation (e.g. hog.touch -> hog.oom); users helper
    nbytes: int = 0


class MachineUser(User):
    """A Locust user acting as one or a few emulated processes of its own session."""

    abstract = True
    wait_time = constant(0)
    harness: ClassVar[Harness | None] = None  # the locustfile sets it

    def on_start(self) -> None:
        h = self._harness()
        assert self.host, "no --host (the machine's attach endpoint, tcp://HOST:PORT)"
        self.m = GreenMachine.attach(self.host)
        self.m.watch = h.watch_for(self.m)
        self.page = self.m.directory.page_size
        self.nframes = self.m.directory.nframes
        self._due = 0.0  # the open model's next due time (0: not started)
        self._rate: float | None = None  # --rate, read at the first operation

    def on_stop(self) -> None:
        m = getattr(self, "m", None)
        if m is not None:
            m.close()

    def _harness(self) -> Harness:
        h = type(self).harness
        if h is None:
            raise RuntimeError("MachineUser.harness is not set: run through the locustfile")
        return h

    def on_op_error(self, exc: MachineError) -> None:
        """A failed operation left this user's state unknown: drop what must be rebuilt."""

    def _start_time(self) -> float:
        """When this operation is due: now (closed model), or its slot (open model)."""
        now = time.perf_counter()
        rate = self._rate
        if rate is None:  # read once: the options do not change during a run
            rate = self._rate = self._harness().rate
        if rate <= 0:
            return now
        if self._due == 0.0:
            self._due = now
        due = self._due
        self._due = due + 1.0 / rate
        if due > now:
            gevent.sleep(due - now)
        return due

    def op(self, name: str) -> _Op:
        """Time one operation and report it to Locust (see the module docstring)."""
        return _Op(self, OpTimer(name), self._start_time())

    def _end(self, t: OpTimer, start: float, e: BaseException | None) -> None:
        """The end of an op() block: one request event; then the failure's consequence."""
        exc: BaseException | None = None
        stop: type[BaseException] | None = None
        if e is None or isinstance(e, (RescheduleTask, StopUser)) or not isinstance(e, Exception):
            pass  # done, or Locust's flow control (or a kill): not a failure
        elif isinstance(e, Corruption):
            exc, stop = e, RescheduleTask
            self._harness().corrupted({"op": t.name, "session": self.m.session, **e.detail()})
        elif isinstance(e, MachinePanic):
            exc, stop = e, StopUser
            self._harness().panicked(e)
        elif isinstance(e, MachineError):
            exc, stop = e, RescheduleTask
        else:  # a bug of the user: a failed request too, and Locust's error
            exc = e
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=t.name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=t.nbytes,
            exception=exc,
            context={},
        )
        if stop is not None:
            if isinstance(exc, MachineError):
                self.on_op_error(exc)
            raise stop() from exc


class _Op:
    """An op() block (a class, not a generator context manager: it runs per operation)."""

    __slots__ = ("start", "t", "user")

    def __init__(self, user: MachineUser, t: OpTimer, start: float) -> None:
        self.user, self.t, self.start = user, t, start

    def __enter__(self) -> OpTimer:
        return self.t

    def __exit__(self, et: object, e: BaseException | None, tb: object) -> None:
        self.user._end(self.t, self.start, e)  # raises the failure's RescheduleTask/StopUser
