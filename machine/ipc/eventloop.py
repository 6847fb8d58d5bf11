"""The event loop a machine process runs on: uvloop when it is installed, else asyncio's.

Every role's process (machine.rolemain) and the commands that run the machine
(`uvm-machine up`, `role`, `supervise`) enter their main coroutine through
run(); clients and the in-memory bus do not (a client library runs in its
caller's loop; simulation runs on its own virtual-time loop).

Why uvloop: a role spends most of a request in the loop and the transport's
reader (machine.ipc.zmqsocket), not in its own code; measured on the fault
path (bench/README.md, "Event loop"), uvloop takes about a tenth off the
mmu's and uvm's CPU per fault. The system calls per message are the same on
both loops (libzmq's mailbox checks, one epoll wait per wake-up).

Choice, in order:
  * UVM_MACHINE_LOOP=asyncio: asyncio's own loop (a comparison, or a platform
    where uvloop misbehaves);
  * UVM_MACHINE_LOOP=uvloop: uvloop, and an error if it is not installed;
  * unset (or empty): uvloop if it can be imported, else asyncio's, silently.
Any other value is an error (ValueError), so a typo never measures the wrong loop.

Invariant: whatever the loop, the code that runs on it uses only asyncio's
public loop API (add_reader, call_soon, call_at, signal handlers, executors);
machine.ipc.transport.running_loop() caches the running loop for either.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

ENV_VAR = "UVM_MACHINE_LOOP"
T = TypeVar("T")


def loop_factory() -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """=> (the loop's name, its factory; None: asyncio's default) as ENV_VAR says.

    => ValueError for an unknown ENV_VAR value, or "uvloop" when uvloop is missing."""
    want = os.environ.get(ENV_VAR, "")
    if want not in ("", "asyncio", "uvloop"):
        raise ValueError(f"{ENV_VAR}={want!r}: expected 'uvloop' or 'asyncio'")
    if want == "asyncio":
        return "asyncio", None
    try:
        import uvloop
    except ImportError:
        if want == "uvloop":
            raise ValueError(f"{ENV_VAR}=uvloop but uvloop is not installed") from None
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main) on the loop loop_factory() picks."""
    try:
        _, factory = loop_factory()
    except ValueError:
        main.close()  # never started: no "never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
