"""The supervisor's death is the machine's: SIGKILL of `uvm-machine up` alone loses nothing.

Roles notice within seconds (machine.orphan), write every dirty file page back as a
clean shutdown does, remove the RAM segment, run/ and machine.json, and exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from machine.client import Machine
from machine.orphan import EXIT_ORPHANED
from machine.params import PAGE_SIZE
from machine.ram import SHM_DIR
from machine.roles import ROLE_NAMES
from tests.conftest import PY, boot_real, pid_alive
from tests.integration.test_external_roles import _spawn, _wait_file, env  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

DEADLINE_S = 15.0


def _wait_gone(pids: dict[str, int], since: float, deadline_s: float = DEADLINE_S) -> float:
    """=> seconds from `since` (time.monotonic) until every pid had exited.

    => AssertionError naming the survivors after deadline_s.
    """
    while any(pid_alive(p) for p in pids.values()):
        if time.monotonic() - since > deadline_s:
            alive = {r: p for r, p in pids.items() if pid_alive(p)}
            raise AssertionError(
                f"roles still up {deadline_s} s after the supervisor died: {alive}"
            )
        time.sleep(0.02)
    return time.monotonic() - since


async def test_sigkill_of_the_supervisor_stops_the_roles_and_keeps_shared_file_bytes(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    rm = boot_real(state, "--ram", "16M")
    pids = rm.role_pids()
    ram = SHM_DIR / rm.info["ram"]["name"]
    payload = bytes((i * 7 + 3) & 0xFF for i in range(5 * PAGE_SIZE))
    try:
        async with Machine.attach(rm.endpoint, timeout_s=20.0) as m:
            f = await m.open("orphan.bin", create=True, size=5 * PAGE_SIZE)
            p = await m.spawn()
            va = await p.mmap(5 * PAGE_SIZE, file=f, shared=True)
            await p.store(va, payload)  # dirty in RAM only: no msync, no munmap, no exit
            assert await p.load(va + 4 * PAGE_SIZE, 8) == payload[4 * PAGE_SIZE :][:8]
            t0 = time.monotonic()
            os.kill(rm.proc.pid, signal.SIGKILL)  # the supervisor alone
            rm.proc.wait(10)  # its parent reaps it (the roles need not wait for that)
            took = _wait_gone(pids, t0)
        print(f"SIGKILL of the supervisor -> every role gone: {took:.2f} s")
        assert not ram.exists()
        assert not (state / "run").exists()
        assert not (state / "machine.json").exists()
        assert (state / "disk" / "orphan.bin").read_bytes() == payload
        _, err = rm.proc.communicate(timeout=10)  # the roles' stderr is the supervisor's
        assert err.count("is gone: shutting down") == 4, err
        assert f"supervisor {rm.proc.pid} is gone" in err
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if rm.proc.poll() is None:
            rm.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
            rm.proc.communicate(timeout=10)
        ram.unlink(missing_ok=True)


def test_orphaned_roles_remove_the_temporary_state_directory(tmp_path: Path) -> None:
    """`up` without --state: the orphans remove the temporary state directory, as `up` would."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    environ = {**os.environ, "TMPDIR": str(tmp)}
    cmd = [PY, "-m", "machine", "up", "--ram", "8M", "--endpoint", "tcp://127.0.0.1:0"]
    proc = subprocess.Popen(
        cmd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    pids: dict[str, int] = {}
    info: dict[str, Any] = {}
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("attach: "), line + proc.communicate(timeout=10)[1]
        (state,) = tmp.glob("uvm-machine-*")
        info = json.loads((state / "machine.json").read_text())
        pids = {r: int(v["pid"]) for r, v in info["roles"].items()}
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        _wait_gone(pids, t0)
        assert not (SHM_DIR / info["ram"]["name"]).exists()
        assert not (SHM_DIR / (info["ram"]["name"] + ".kpt")).exists()  # the orphans' cleanup
        assert not state.exists()
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
        if info:
            (SHM_DIR / info["ram"]["name"]).unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)


async def test_roles_run_apart_notice_the_supervisor_s_silence(
    env: dict[str, str],  # noqa: F811 (the compose test's fixture)
) -> None:
    """`supervise` + `role NAME` (compose): no shared pids, so the roles watch the heartbeat."""
    sup = _spawn(env, "supervise")
    roles: dict[str, subprocess.Popen[str]] = {}
    state = Path(env["UVM_MACHINE_STATE"])
    payload = bytes((i * 5 + 1) & 0xFF for i in range(3 * PAGE_SIZE))
    try:
        _wait_file(SHM_DIR / env["UVM_MACHINE_RAM_NAME"], 20)
        for role in ROLE_NAMES:
            roles[role] = _spawn(env, "role", role)
            assert roles[role].stdout is not None
            assert json.loads(roles[role].stdout.readline())["role"] == role
        assert sup.stdout is not None
        endpoint = sup.stdout.readline().split(" ", 1)[1].strip()
        async with Machine.attach(endpoint, timeout_s=20.0) as m:
            f = await m.open("apart.bin", create=True, size=3 * PAGE_SIZE)
            p = await m.spawn()
            va = await p.mmap(3 * PAGE_SIZE, file=f, shared=True)
            await p.store(va, payload)
            t0 = time.monotonic()
            sup.kill()
            sup.wait(10)
            took = _wait_gone({r: q.pid for r, q in roles.items()}, t0)
        print(f"SIGKILL of `supervise` -> every role gone: {took:.2f} s")
        assert {r: q.wait(1) for r, q in roles.items()} == dict.fromkeys(ROLE_NAMES, EXIT_ORPHANED)
        errs = {r: q.communicate(timeout=10)[1] for r, q in roles.items()}
        assert all("is gone" in e and ": shutting down" in e for e in errs.values()), errs
        assert "supervisor is gone (no heartbeat for" in errs["uvm"]  # the mmu may hear from uvm
        assert not (SHM_DIR / env["UVM_MACHINE_RAM_NAME"]).exists()
        assert not (state / "machine.json").exists()
        assert (state / "disk" / "apart.bin").read_bytes() == payload
    finally:
        for q in (sup, *roles.values()):
            if q.poll() is None:
                q.kill()
            with contextlib.suppress(ValueError):
                q.communicate(timeout=10)
