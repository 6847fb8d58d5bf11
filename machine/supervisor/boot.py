"""Booting a whole machine: `uvm-machine up` (local processes) and `supervise` (compose).

run_up() owns everything it creates and removes it on the way out, whatever
happens: the RAM segment (unlinked), the role processes (stopped in reverse
order, killed if they do not stop), the ipc sockets and run directory. What
stays in the state directory is what a user wants to keep: disk/ (files),
dump/ (crash dumps) and, for a state directory of its own choosing, that
directory itself. If this process dies without its way out (SIGKILL), the
roles notice and do the same themselves (machine.orphan).

<state>/machine.json describes the running machine for kernel tools (the
kernel endpoints, pids, RAM segment); it is removed at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import stat
from collections.abc import Callable
from pathlib import Path

from machine.config import (
    CLIENT_LEASE_S,
    HEARTBEAT_INTERVAL_S,
    PANIC_GRACE_S,
    RoleConfig,
)
from machine.ipc import ids
from machine.ipc.auth import new_machine_key, write_key_file
from machine.ipc.peer import Identity
from machine.ipc.tasks import TaskSet
from machine.ipc.zmqtransport import ZmqTransport
from machine.limits import Limits
from machine.params import PAGE_SIZE
from machine.ram import Ram
from machine.roles import ROLE_NAMES, fixed_layout
from machine.supervisor.arbiter import Supervisor
from machine.supervisor.launcher import ExternalLauncher, Launcher, ProcessLauncher


class StateDirError(OSError):
    """The state directory is not safely ours: the machine refuses to boot on it."""


def _ours(path: Path, what: str, fix_mode: bool = False) -> None:
    """=> path is a real directory (no symbolic link), owned by this user, and writable
    by nobody else (fix_mode: made so); else StateDirError. Someone else's directory
    (pre-created in /tmp, a planted disk/ link) would let them read or redirect what the
    machine's files hold."""
    st = os.lstat(path)
    if fix_mode and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
        os.chmod(path, 0o700)
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise StateDirError(f"{what} {path} is a symbolic link: refusing to use it")
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"{what} {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise StateDirError(
            f"{what} {path} belongs to uid {st.st_uid}, not to this user ({os.geteuid()})"
        )
    if st.st_mode & 0o022:
        raise StateDirError(
            f"{what} {path} is writable by group or others (mode {st.st_mode & 0o777:o}): "
            "chmod go-w it, or choose another"
        )


def prepare_state(state_dir: Path) -> None:
    """The state directory and its disk/, dump/ and run/, each checked to be ours alone
    to write (a missing one is made 0700); run/ (kernel sockets, the machine key) and
    dump/ (dumps: every session's recorded bytes) are mode 0700 whatever the umask or an
    earlier run left. => StateDirError otherwise."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _ours(state_dir, "state directory")
    for sub in ("disk", "dump", "run"):
        with contextlib.suppress(FileExistsError):
            (state_dir / sub).mkdir(mode=0o700)
        # run/ (sockets, the key) and dump/ (every session's recorded bytes): 0700, always
        _ours(state_dir / sub, f"{sub}/ of the state directory", fix_mode=sub in ("run", "dump"))
    for entry in (state_dir / "run").iterdir():  # left by an earlier run: ours, or refused
        if entry.lstat().st_uid != os.geteuid():
            raise StateDirError(f"{entry} belongs to someone else: remove it first")


def private_dir(path: Path) -> None:
    """Make `path` (a kernel socket directory) mode 0700, whatever the umask or its old mode."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def local_binds(endpoint: str, run_dir: Path) -> Callable[[str], dict[str, str]]:
    """Where each role binds for `up`: kernel on ipc in the run dir, user/pub like `endpoint`."""
    if endpoint.startswith("tcp://"):
        host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
        user = pub = f"tcp://{host}:*"
    elif endpoint.startswith("ipc://"):
        user = pub = ""
    else:
        raise ValueError(f"endpoint {endpoint!r}: use tcp://HOST:PORT or ipc://PATH")

    def binds(role: str) -> dict[str, str]:
        return {
            "kernel": f"ipc://{run_dir}/{role}.kernel",
            "user": user or f"ipc://{run_dir}/{role}.user",
            "pub": pub or f"ipc://{run_dir}/{role}.pub",
        }

    return binds


def early_signals() -> list[int]:
    """Catch SIGINT/SIGTERM from the very start, before the RAM segment exists, so a
    signal during set-up ends the boot cleanly (status 130) instead of killing the
    process with the segment left behind. _serve takes over the handlers."""
    got: list[int] = []
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, got.append, sig)
    return got


async def _serve(
    sup: Supervisor,
    launcher: Launcher,
    binds: dict[str, str],
    state: Path,
    ram: Ram,
    on_ready: Callable[[str], None],
    early: list[int] | None = None,
) -> int:
    """Boot `sup` at `binds` (router, pub, kernel), write machine.json, serve until it
    stops. => its exit status."""
    loop = asyncio.get_running_loop()
    tasks = TaskSet()  # the boot, awaited below (its exception is ours), ended in `finally`
    booting = tasks.spawn(
        sup.boot(binds["router"], binds["pub"], binds.get("kernel")), "boot", report=False
    )
    if early:
        booting.cancel()  # a signal arrived while the machine was being set up

    def on_signal() -> None:
        if not booting.done():
            booting.cancel()  # a signal during boot ends the boot; `finally` stops what started
        else:
            sup.spawn(sup.shutdown("signal"), "shutdown")

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        try:
            eps = await booting
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
            return 130
        # Its attach endpoint is a ROUTER clients reach too: resets only, no rlimit (a
        # crash dump is written from here).
        sup.watch_memory(sup.limits.role_memory, panics=False)
        info = {
            "attach": eps["user"],
            "events": eps["pub"],
            "ram": {"name": ram.name, "bytes": ram.size},
            "roles": {r: {"pid": h.pid, **h.endpoints} for r, h in sup.roles.items()},
            "supervisor_pid": os.getpid(),
            "supervisor": {"kernel": sup.endpoints.get("kernel", "")},
        }
        (state / "machine.json").write_text(json.dumps(info, indent=1))
        on_ready(eps["user"])
        await sup.stopped.wait()
    finally:
        await tasks.close()
        if not sup.stopped.is_set():
            await sup.shutdown("boot failed" if sup.machine_state == "booting" else "exit")
        for role in ROLE_NAMES:
            await launcher.stop(role, timeout_s=2.0)
        await sup.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        (state / "machine.json").unlink(missing_ok=True)
    return sup.exit_status


async def run_up(
    *,
    ram_bytes: int,
    state_dir: Path,
    endpoint: str,
    profile: str,
    on_ready: Callable[[str], None],
    lease_s: float = CLIENT_LEASE_S,
    heartbeat_s: float = HEARTBEAT_INTERVAL_S,
    panic_grace_s: float = PANIC_GRACE_S,
    swap_bytes: int = 0,
    limits: Limits | None = None,
    temp_state: bool = False,
    record_dir: str = "",
) -> int:
    """Boot supervisor + four role processes; serve until a signal or a panic. => status.

    => `temp_state`: state_dir is a temporary one of the caller's (removed at exit
       unless it holds a dump); roles orphaned by this process's death remove it.
    => `record_dir`: when the machine stops, a dump with every flight recorder is
       written there (the crash dump is copied there after a panic).
    """
    early = early_signals()
    prepare_state(state_dir)
    run_dir = state_dir / "run"
    ram = Ram.create(f"uvm-machine-{os.getpid()}-{secrets.token_hex(4)}", ram_bytes)
    transport = ZmqTransport()
    try:
        key_file = run_dir / "machine.key"
        key = new_machine_key()
        write_key_file(key_file, key)
        template = RoleConfig(
            role="",
            ram_name=ram.name,
            ram_bytes=ram_bytes,
            kernel="",
            user="",
            pub="",
            profile=profile,
            state_dir=str(state_dir),
            lease_s=lease_s,
            swap_bytes=swap_bytes,
            key_file=str(key_file),
            limits=(limits or Limits()).to_dict(),
            supervisor_pid=os.getpid(),  # roles watch it (machine.orphan)
            temp_state=temp_state,
        )
        launcher = ProcessLauncher(template, local_binds(endpoint, run_dir))
        sup = Supervisor(
            transport,
            launcher,
            nframes=ram_bytes // PAGE_SIZE,
            profile=profile,
            state_dir=str(state_dir),
            lease_s=lease_s,
            heartbeat_s=heartbeat_s,
            panic_grace_s=panic_grace_s,
            record_dir=record_dir,
            limits=limits,
            rng=random.Random(),
            key=key,
        )
        own = local_binds(endpoint, run_dir)("sup")  # short: an ipc path has 107 bytes at most
        binds = {"router": endpoint, "pub": own["pub"], "kernel": own["kernel"]}
        return await _serve(sup, launcher, binds, state_dir, ram, on_ready, early)
    finally:
        await transport.close()
        ram.close()
        shutil.rmtree(run_dir, ignore_errors=True)


async def run_external(
    *,
    host: str,
    base_port: int,
    ram_name: str,
    ram_bytes: int,
    state_dir: Path,
    profile: str,
    on_ready: Callable[[str], None],
    lease_s: float = CLIENT_LEASE_S,
    key_file: Path | None = None,
    kernel_dir: str = "",
    limits: Limits | None = None,
) -> int:
    """Supervise roles that compose runs at the fixed port layout; own the RAM segment.

    => writes the machine key to `key_file` (default <state>/run/machine.key, mode
       0600) before anything serves: the roles read it at their start.
    => with `kernel_dir`, the roles' kernel endpoints are ipc sockets there
       (fixed_layout), and the directory is made mode 0700 before anything serves."""
    early = early_signals()
    prepare_state(state_dir)
    if kernel_dir:
        private_dir(Path(kernel_dir))
    key = new_machine_key()
    write_key_file(key_file or state_dir / "run" / "machine.key", key)
    layout = fixed_layout(host, base_port, kernel_dir)
    ram = Ram.create(ram_name, ram_bytes)
    transport = ZmqTransport()
    try:
        rng = random.Random()
        sup_ident = Identity("supervisor", ids.incarnation(rng))
        launcher = ExternalLauncher(transport, sup_ident, layout)
        sup = Supervisor(
            transport,
            launcher,
            nframes=ram_bytes // PAGE_SIZE,
            profile=profile,
            state_dir=str(state_dir),
            lease_s=lease_s,
            rng=rng,
            key=key,
            limits=limits,  # its own recorder's bounds
        )
        return await _serve(sup, launcher, layout["supervisor"], state_dir, ram, on_ready, early)
    finally:
        await transport.close()
        ram.close()
