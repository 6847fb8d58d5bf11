"""An orphaned role: noticing that the supervisor died, and stopping as a clean shutdown would.

With the supervisor gone nobody else will stop a role, write its dirty file pages
back or remove the RAM segment, so every role watches the supervisor and, when it
dies, stops the machine itself (SIGKILL of `uvm-machine up` alone loses nothing).

Noticing (within ORPHAN_NOTICE_S):
  * by pid, when the role shares the supervisor's pid namespace (`up`; the role is
    a child of the forkserver, not of the supervisor, so PR_SET_PDEATHSIG cannot
    help): a pidfd is readable the moment the process exits (before it is reaped);
    without pidfd_open, os.kill(pid, 0) and /proc's zombie state every PID_POLL_S.
    Exact: a slow supervisor is never taken for a dead one.
  * by heartbeat otherwise (compose: `role` containers cannot see the supervisor's
    pid): once a ctl.ping from the supervisor has arrived, silence for
    HEARTBEAT_LIVENESS + 1 intervals (the count after which the supervisor calls a
    role missing) means it is gone. The supervisor pings until the machine is
    stopped (through a panic and a shutdown too), so a machine that is stopping
    slowly is not taken for an orphaned one.
  Only serve_role (machine.rolemain, real processes) starts the watch: the in-memory simulation,
  whose clock is virtual, never runs it.

Stopping, in the clean shutdown's order (net, pdaemon, uvm, mmu):
  1. every role runs its own ctl.shutdown handler, the one code path of a clean
     stop (uvm's writes every dirty vnode page back to its file and fsyncs);
  2. the mmu waits for uvm first: uvm's write-back reads modified bits at the mmu.
     It stops when uvm sends it ctl.shutdown after writing back (a ctl.shutdown from
     uvm also tells an mmu that has not noticed yet: it is orphaned), when uvm's process
     is gone (its pid from <state>/machine.json), or after SHUTDOWN_GRACE_S (the time
     the supervisor would give uvm; uvm's own write-back is bounded by it too);
  3. uvm and the mmu, once closed, remove what the supervisor would have removed
     (remove_leftovers): the RAM segment (unlinking is harmless while others still
     map it, and twice is harmless too), <state>/run/ and <state>/machine.json —
     unless machine.json names another RAM segment (a new machine owns the state
     directory now); uvm also removes a temporary state directory that holds no
     crash dump, as `up` does on a clean exit;
  4. the role exits with EXIT_ORPHANED, after the log line
     "supervisor <pid> is gone: shutting down".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from machine.config import (
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_LIVENESS,
    RoleConfig,
    discard_temp_state,
)
from machine.ipc.service import Service
from machine.ipc.tasks import race
from machine.proto import NO_HEADER, CtlShutdown
from machine.ram import Ram

EXIT_ORPHANED = 4
ORPHAN_NOTICE_S = 5.0
PID_POLL_S = 0.5
HEARTBEAT_SILENCE_S = (HEARTBEAT_LIVENESS + 1) * HEARTBEAT_INTERVAL_S
SHUTDOWN_GRACE_S = 120.0  # what the supervisor gives uvm to write back


def log(role: str, text: str) -> None:
    with contextlib.suppress(OSError):  # stderr may be a pipe nobody reads any more
        print(f"uvm-machine {role}: {text}", file=sys.stderr, flush=True)


# -- noticing ----------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """=> False once process `pid` has exited (a zombie, not yet reaped, has exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
    except OSError:
        return True


async def pid_exit(pid: int, use_pidfd: bool = True, poll_s: float = PID_POLL_S) -> None:
    """=> returns once process `pid` has exited (at once if it never existed)."""
    fd = -1
    if use_pidfd and hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        except OSError:
            fd = -1  # kernel before 5.3, or a seccomp filter: poll instead
    if fd >= 0:
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await exited
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        return
    while pid_alive(pid):  # noqa: ASYNC110 (another process: no event to wait on)
        await asyncio.sleep(poll_s)


async def heartbeat_silence(
    last_seen: Callable[[], float | None],
    now: Callable[[], float],
    limit_s: float = HEARTBEAT_SILENCE_S,
) -> None:
    """=> returns once a heartbeat has been seen and none for more than limit_s.

    => never returns while no heartbeat has arrived (a supervisor that has not
       found this role yet is not a dead one).
    """
    while True:
        seen = last_seen()
        if seen is not None and now() - seen > limit_s:
            return
        await asyncio.sleep(min(0.25, limit_s / 4))


async def supervisor_gone(svc: Service, cfg: RoleConfig) -> str:
    """=> why the supervisor is taken for gone, once it is (never returns otherwise)."""
    if cfg.supervisor_pid:
        await pid_exit(cfg.supervisor_pid)
        return f"supervisor {cfg.supervisor_pid} is gone"
    await heartbeat_silence(lambda: svc.supervisor_seen, svc.clock.now_s)
    return f"supervisor is gone (no heartbeat for {HEARTBEAT_SILENCE_S:g} s)"


# -- stopping ------------------------------------------------------------------------


async def until_stopped(svc: Service, cfg: RoleConfig) -> bool:
    """Serve until stopped (ctl.shutdown, a signal) or orphaned. => True if orphaned.

    => when orphaned: the role has run its ctl.shutdown handler (the mmu after uvm
       wrote back) and svc.stopped is set; the caller closes and then calls
       remove_leftovers.
    """
    # The first to end of the watch and the stop; race() ends the other before it returns.
    first = await race(supervisor_gone(svc, cfg), svc.stopped.wait())
    if svc.stopped_by == "uvm":  # the mmu, stopped by an orphaned uvm before it noticed
        log(cfg.role, "uvm stopped me: the supervisor is gone: shutting down")
        return True
    if svc.stopped.is_set() or first is None or first.cancelled():
        return False
    watch = first  # supervisor_gone ended first
    if watch.exception() is not None:  # cannot watch: serve on, as before this watch existed
        log(cfg.role, f"cannot watch the supervisor: {watch.exception()!r}")
        await svc.stopped.wait()
        return False
    log(cfg.role, f"{watch.result()}: shutting down")
    if cfg.role == "mmu":
        await _uvm_done(svc, cfg)
    try:
        await asyncio.wait_for(svc.on_shutdown(CtlShutdown(h=svc.ident.header())), SHUTDOWN_GRACE_S)
    except Exception as e:  # a write-back that cannot finish (the mmu died too): go anyway
        log(cfg.role, f"shutdown failed: {type(e).__name__}: {e}")
        svc.stopped.set()
    mmu = svc.peers.get("mmu")
    if cfg.role == "uvm" and mmu is not None:
        # Written back: the mmu may go now (the supervisor's next ctl.shutdown).
        with contextlib.suppress(Exception):
            await mmu.call(CtlShutdown(h=NO_HEADER), timeout_s=5.0)
    await svc.stopped.wait()
    return True


async def _uvm_done(svc: Service, cfg: RoleConfig) -> None:
    """The mmu's wait: uvm's ctl.shutdown (svc.stopped), uvm's exit, or SHUTDOWN_GRACE_S."""
    waits: list[Coroutine[Any, Any, Any]] = [svc.stopped.wait()]
    uvm_pid = _machine_json(cfg).get("roles", {}).get("uvm", {}).get("pid")
    if isinstance(uvm_pid, int) and uvm_pid > 0:
        waits.append(pid_exit(uvm_pid))
    await race(*waits, timeout_s=SHUTDOWN_GRACE_S)


def _machine_json(cfg: RoleConfig) -> dict[str, Any]:
    if not cfg.state_dir:
        return {}
    try:
        info = json.loads((Path(cfg.state_dir) / "machine.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def remove_leftovers(cfg: RoleConfig, ram: Ram) -> None:
    """What the supervisor removes on its way out, done by an orphaned uvm or mmu.

    => idempotent (both do it); never raises for files already gone. Removes the
       state directory's run/ and machine.json only while the state directory is
       still this machine's (machine.json absent or naming this RAM segment).
    """
    if cfg.role not in ("uvm", "mmu"):
        return
    ram.unlink()
    if not cfg.state_dir:
        return
    state = Path(cfg.state_dir)
    ram_info = _machine_json(cfg).get("ram")
    if isinstance(ram_info, dict) and ram_info.get("name") not in (None, cfg.ram_name):
        return  # another machine booted on this state directory meanwhile
    shutil.rmtree(state / "run", ignore_errors=True)
    (state / "machine.json").unlink(missing_ok=True)
    if cfg.role == "uvm" and cfg.temp_state:
        discard_temp_state(state)
