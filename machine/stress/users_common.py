"""What every verifying user shares: one scenario task, steps, reset, unique names.

A user (users_memory.py, users_io.py) is a MachineUser whose one Locust task
(`step`) runs `scenario()`: a short sequence of steps, each a `self.op(name)` block
(base.py) that does one thing to the machine and checks every byte it read
against the user's models (model.py). The user's state (its processes, VAs,
models) lives across scenarios: a scenario continues where the last one left.

When an operation fails, op() reports it (a Locust failure; a Corruption is
also recorded as corruption) and raises RescheduleTask; `step` catches that (or
any other exception but StopUser: a bug of the user), calls `reset()` and lets
Locust go on. After a failure the user's state is
unknown (a store may have been applied half, a process may be dead), so
reset() forgets it all: the processes are exited (quietly: a call that fails
there is not an operation) and the next scenario starts afresh. A panic
stops the user (StopUser): no reset, nothing more is sent.

Invariants:
  - a model is changed only after the store it mirrors returned: a failed
    store leads to reset(), never to a model that guesses;
  - reset() leaves no process of this user alive that a later scenario could
    confuse with a fresh one (exited, or abandoned to the session's detach);
  - names of machine files are unique per user and per run (`unique_name`:
    the pid, the user's number and a random part), so users of concurrent
    runs on one machine never share a file by accident.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from locust import task
from locust.exception import StopUser

from machine.client.errors import MachineError
from machine.stress.base import MachineUser
from machine.stress.green import GreenProcess
from machine.stress.model import Mismatch

_serial = itertools.count(1)


class Lost(MachineError):
    """A send that never arrived whole: the wire dropped it (overload), not corruption."""


def unique_name(kind: str) -> str:
    """A machine file name no other user or run uses (a flat name inside disk/)."""
    return f"stress-{kind}-{os.getpid()}-{next(_serial)}-{uuid.uuid4().hex[:12]}"


def quietly(fn: Callable[..., Any], *args: Any) -> None:
    """Call fn, ignoring a MachineError (cleanup after a failure is not an operation)."""
    with contextlib.suppress(MachineError):
        fn(*args)


class VerifyingUser(MachineUser):
    """A MachineUser that runs `scenario()` as its one task and `reset()` after a failure."""

    abstract = True
    weight = 1
    kind = "user"  # the prefix of its operation names

    def on_start(self) -> None:
        super().on_start()
        self.seed = random.SystemRandom().getrandbits(48)
        self.rng = random.Random(self.seed)

    def on_stop(self) -> None:
        with contextlib.suppress(Exception):
            self.cleanup()
        super().on_stop()  # detach: every process of the session exits

    @task
    def step(self) -> None:
        try:
            self.scenario()
        except StopUser:
            raise  # a panic: nothing more is sent
        except Exception:  # RescheduleTask (a failed op) or a bug of the user: state unknown
            self.reset()
            raise

    def scenario(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget every state a failure may have made unknown (see the module docstring)."""

    def cleanup(self) -> None:
        """At the user's stop, before the detach: what the detach does not undo."""

    def unlink_files(self, names: list[str]) -> None:
        """Remove this user's files from the machine's disk/ (when it is on this host)."""
        disk = self.host_disk()
        if disk is not None:
            for name in names:
                (disk / name).unlink(missing_ok=True)

    def check(self, what: str, mm: Mismatch | None, **ctx: Any) -> None:
        """Raise the Corruption for a read that differs from its model (None: all equal)."""
        if mm is not None:
            raise mm.corruption(what, user=self.kind, seed=self.seed, **ctx)

    def exit_quietly(self, p: GreenProcess | None) -> None:
        if p is not None and not p.exited:
            quietly(p.exit)

    def host_disk(self) -> Path | None:
        """The machine's disk/ directory when it is on this host (for host-file checks)."""
        h = type(self).harness
        local = str(h.option("uvm_state", "") or "") if h is not None else ""
        for sd in (local, self.m.directory.state_dir):
            if sd and (Path(sd) / "disk").is_dir():
                return Path(sd) / "disk"
        return None


@contextlib.contextmanager
def renamed(
    t: Any, name: str, when: Callable[[BaseException], bool] = lambda e: True
) -> Iterator[None]:
    """Inside an op block: if the body raises an exception `when` accepts, the
    operation is reported as `name` (e.g. hog.touch -> hog.oom, sender.wire ->
    sender.lost). `t` is the block's OpTimer."""
    try:
        yield
    except BaseException as e:
        if when(e):
            t.name = name
        raise
