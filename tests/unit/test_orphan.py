"""machine.orphan: noticing the supervisor's death (pid, heartbeat) and what an orphan stops."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from machine import orphan
from machine.config import RoleConfig
from machine.ipc.inmemory import InMemoryTransport
from machine.ipc.service import Service
from machine.proto import CtlPing, CtlShutdown, Header, Reply, Request, Scope, encode
from machine.ram import SHM_DIR, Ram


class Toy(Service):
    role: ClassVar[str] = "toy"
    serves: ClassVar[tuple[type[Request], ...]] = ()
    shutdowns = 0

    async def on_shutdown(self, msg: CtlShutdown) -> Reply:
        self.shutdowns += 1  # uvm writes back here: the orphan must come through it
        return await super().on_shutdown(msg)


def _toy() -> Toy:
    return Toy(InMemoryTransport(1), rng=random.Random(1))


def _cfg(**kw: Any) -> RoleConfig:
    base: dict[str, Any] = {"role": "toy", "ram_name": "", "ram_bytes": 0}
    return RoleConfig(**{**base, "kernel": "", "user": "", "pub": "", **kw})


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


@pytest.mark.parametrize("use_pidfd", [True, False])
async def test_pid_exit_returns_when_the_process_dies_and_not_before(use_pidfd: bool) -> None:
    proc = _sleeper()
    try:
        watch = asyncio.ensure_future(orphan.pid_exit(proc.pid, use_pidfd, poll_s=0.05))
        done, _ = await asyncio.wait({watch}, timeout=0.3)
        assert not done  # alive: never taken for dead
        proc.kill()  # not reaped yet: a zombie has exited too
        await asyncio.wait_for(watch, 5)
    finally:
        proc.kill()
        proc.wait()
    await asyncio.wait_for(orphan.pid_exit(proc.pid, use_pidfd, poll_s=0.05), 5)  # long gone


async def test_heartbeat_silence_needs_a_first_ping_then_the_limit() -> None:
    now = [100.0]
    seen: list[float | None] = [None]
    watch = asyncio.ensure_future(orphan.heartbeat_silence(lambda: seen[0], lambda: now[0], 0.2))
    now[0] += 1000.0  # no ping ever: a supervisor that has not found us is not dead
    done, _ = await asyncio.wait({watch}, timeout=0.2)
    assert not done
    seen[0] = now[0]
    now[0] += 0.15  # pings within the limit
    done, _ = await asyncio.wait({watch}, timeout=0.2)
    assert not done
    now[0] += 0.1
    await asyncio.wait_for(watch, 2)
    assert orphan.HEARTBEAT_SILENCE_S <= orphan.ORPHAN_NOTICE_S - 0.5


async def test_only_the_supervisor_s_ping_counts_as_its_heartbeat() -> None:
    svc = _toy()
    await svc.dispatch(
        encode(CtlPing(h=Header(msg_id=1, sender="kdebug", incarnation=1))), Scope.KERNEL
    )
    assert svc.supervisor_seen is None
    # A client may call itself "supervisor" on a user endpoint: that is no heartbeat.
    await svc.dispatch(
        encode(CtlPing(h=Header(msg_id=2, sender="supervisor", incarnation=0))), Scope.USER
    )
    assert svc.supervisor_seen is None
    await svc.dispatch(
        encode(CtlPing(h=Header(msg_id=3, sender="supervisor", incarnation=1))), Scope.KERNEL
    )
    assert svc.supervisor_seen is not None


async def test_an_orphan_runs_its_shutdown_handler_and_a_stop_is_not_an_orphan() -> None:
    svc = _toy()
    proc = _sleeper()
    try:
        served = asyncio.ensure_future(orphan.until_stopped(svc, _cfg(supervisor_pid=proc.pid)))
        await asyncio.sleep(0.1)
        assert not served.done()
        proc.kill()
        assert await asyncio.wait_for(served, 5) is True
        assert svc.shutdowns == 1
        assert svc.stopped.is_set()
    finally:
        proc.kill()
        proc.wait()
    svc = _toy()
    served = asyncio.ensure_future(orphan.until_stopped(svc, _cfg(supervisor_pid=0)))
    svc.stopped.set()  # SIGTERM
    assert await asyncio.wait_for(served, 5) is False
    assert svc.shutdowns == 0


@pytest.mark.parametrize(("sender", "orphaned"), [("supervisor", False), ("uvm", True)])
async def test_a_shutdown_from_an_orphaned_uvm_orphans_the_mmu(sender: str, orphaned: bool) -> None:
    svc = _toy()
    served = asyncio.ensure_future(orphan.until_stopped(svc, _cfg(role="mmu")))
    await asyncio.sleep(0)
    await svc.dispatch(
        encode(CtlShutdown(h=Header(msg_id=3, sender=sender, incarnation=1))), Scope.KERNEL
    )
    assert await asyncio.wait_for(served, 5) is orphaned


def test_leftovers_go_unless_another_machine_owns_the_state_dir(tmp_path: Path) -> None:
    name = f"uvm-test-orphan-{tmp_path.name}"
    for other in (False, True):
        state = tmp_path / f"s{other}"
        (state / "run").mkdir(parents=True)
        (state / "dump").mkdir()
        (state / "run" / "mmu.kernel").touch()
        ram_name = "someone-else" if other else name
        (state / "machine.json").write_text(f'{{"ram": {{"name": "{ram_name}"}}}}')
        ram = Ram.create(name, 4096)
        ram.owner = False  # a role's view: its close does not unlink
        ram.close()
        cfg = _cfg(role="uvm", ram_name=name, state_dir=str(state), temp_state=not other)
        orphan.remove_leftovers(cfg, ram)
        orphan.remove_leftovers(cfg, ram)  # twice (uvm and mmu both do it): harmless
        assert not (SHM_DIR / name).exists()
        assert (state / "run").exists() is other
        assert (state / "machine.json").exists() is other
        assert state.exists() is other  # a temporary state dir without dumps goes too
