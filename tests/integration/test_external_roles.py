"""The compose deployment without docker: `supervise` plus one `role` process per role.

This is exactly what docker-compose.yml runs (fixed port layout, RAM owned by
the supervisor, roles attaching it, kernel endpoints as ipc sockets in a
private kernel directory with the machine key beside them), so the main suite
covers it on every run; .ci/compose-smoke.sh then runs the same commands in
containers.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from machine.ram import SHM_DIR
from machine.roles import ROLE_NAMES
from tests.conftest import PY
from tests.integration.kernel_knock import knock_ports

pytestmark = pytest.mark.integration


def _free_base() -> int:
    """A base port whose whole layout (B .. B+42) is free, below the ephemeral range.

    Ports at or above 32768 can be taken at any moment by outgoing connections.
    """
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(200, 320) * 100
        ok = True
        for off in (0, 1, 10, 11, 12, 20, 21, 22, 30, 31, 32, 40, 41, 42):
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", base + off))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range")


def _wait_file(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.02)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    e = dict(os.environ)
    e.update(
        UVM_MACHINE_BASE_PORT=str(_free_base()),
        UVM_MACHINE_RAM="16M",
        UVM_MACHINE_RAM_NAME=f"uvm-test-{os.getpid()}-{time.monotonic_ns() % 10**6}",
        UVM_MACHINE_STATE=str(tmp_path / "state"),
        # as docker-compose.yml: kernel sockets and the machine key on a private volume
        UVM_MACHINE_KERNEL_DIR=str(tmp_path / "kernel"),
        UVM_MACHINE_KEY_FILE=str(tmp_path / "kernel" / "machine.key"),
    )
    yield e
    (SHM_DIR / e["UVM_MACHINE_RAM_NAME"]).unlink(missing_ok=True)


def _spawn(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, "-m", "machine", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _assert_kernel_is_private(env: dict[str, str]) -> None:
    """No kernel TCP port; kernel sockets 0600 in a 0700 directory; TCP knocks obeyed by none."""
    base = int(env["UVM_MACHINE_BASE_PORT"])
    for off in (10, 20, 30, 40):  # the kernel ports of the TCP layout: nobody listens
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", base + off), timeout=5),
        ):
            pass
    kdir = Path(env["UVM_MACHINE_KERNEL_DIR"])
    assert kdir.stat().st_mode & 0o777 == 0o700
    assert Path(env["UVM_MACHINE_KEY_FILE"]).stat().st_mode & 0o777 == 0o600
    for role in ROLE_NAMES:
        sock = kdir / f"{role}.kernel"
        assert stat.S_ISSOCK(sock.stat().st_mode), sock
        assert sock.stat().st_mode & 0o777 == 0o600, sock
    report = asyncio.run(knock_ports("127.0.0.1", base))
    assert report["obeyed"] == [], report
    assert any("EPERM" in o for outs in report["replies"].values() for o in outs), report


def test_supervise_with_separately_started_roles(env: dict[str, str]) -> None:
    sup = _spawn(env, "supervise")
    roles: list[subprocess.Popen[str]] = []
    try:
        _wait_file(SHM_DIR / env["UVM_MACHINE_RAM_NAME"], 20)
        for role in ROLE_NAMES:
            roles.append(_spawn(env, "role", role))
            line = roles[-1].stdout.readline()  # type: ignore[union-attr]
            assert json.loads(line)["role"] == role
            kdir = env["UVM_MACHINE_KERNEL_DIR"]
            assert json.loads(line)["kernel"] == f"ipc://{kdir}/{role}.kernel"
        assert sup.stdout is not None
        assert sup.stdout.readline().startswith("attach: tcp://127.0.0.1:")
        ep = f"tcp://127.0.0.1:{env['UVM_MACHINE_BASE_PORT']}"
        r = subprocess.run(
            [PY, "-m", "clients", "pattern", "--endpoint", ep, "--pages", "64", "--procs", "2"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        assert ": ok" in r.stdout
        _assert_kernel_is_private(env)
        st = subprocess.run(
            [PY, "-m", "machine", "status", "--endpoint", ep, "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        status = json.loads(st.stdout)
        assert status["state"] == "running"  # the knocks above stopped nothing
        assert all(v["alive"] for v in status["roles"].values())
        assert status["frames"]["free"] == status["frames"]["total"] == 4096
        for role in (*ROLE_NAMES, "supervisor"):  # the compose healthchecks
            ping = subprocess.run(
                [PY, "-m", "machine", "ping", role],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert ping.returncode == 0, ping.stderr
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(30) == 0
        for p in roles:  # the supervisor stopped every role (ctl.shutdown)
            assert p.wait(30) == 0
        assert not (SHM_DIR / env["UVM_MACHINE_RAM_NAME"]).exists()
    finally:
        for p in (sup, *roles):
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=10)


def test_a_signal_during_boot_stops_the_supervisor_promptly(env: dict[str, str]) -> None:
    sup = _spawn(env, "supervise")  # no role will ever come
    try:
        _wait_file(SHM_DIR / env["UVM_MACHINE_RAM_NAME"], 20)
        t0 = time.monotonic()
        sup.send_signal(signal.SIGTERM)
        status = sup.wait(15)
        assert time.monotonic() - t0 < 10
        assert status == 130
        assert not (SHM_DIR / env["UVM_MACHINE_RAM_NAME"]).exists()
    finally:
        if sup.poll() is None:
            sup.kill()
        sup.communicate(timeout=10)


def test_ping_fails_cleanly_when_nothing_answers(env: dict[str, str]) -> None:
    r = subprocess.run(
        [PY, "-m", "machine", "ping", "mmu", "--timeout", "0.5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
