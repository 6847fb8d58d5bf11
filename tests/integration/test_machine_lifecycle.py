"""The real machine's life cycle: boot, status, clean shutdown, panics, dead clients and roles."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from machine.client import Machine, MachinePanic
from machine.params import PAGE_SIZE
from machine.ram import SHM_DIR
from tests.conftest import PY, RealMachine, boot_real, pid_alive, wait_until

pytestmark = pytest.mark.integration


def _cli(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "machine", *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


def test_up_serves_until_sigint_then_leaves_nothing_behind(tmp_path: Path) -> None:
    rm = boot_real(tmp_path / "state", "--ram", "16M")
    pids = rm.role_pids()
    ram = SHM_DIR / rm.info["ram"]["name"]
    assert ram.exists()
    assert ram.stat().st_size == 16 << 20
    kpt = ram.with_name(ram.name + ".kpt")  # the kernel's page table, beside RAM
    assert kpt.exists()
    assert all(pid_alive(p) for p in pids.values())
    assert len(set(pids.values()) | {rm.proc.pid}) == 5  # four roles, each its own process
    st = _cli("status", "--endpoint", rm.endpoint, "--json")
    assert st.returncode == 0, st.stderr
    assert {r: v["pid"] for r, v in json.loads(st.stdout)["roles"].items()} == pids
    assert rm.stop(signal.SIGINT) == 0
    assert not any(pid_alive(p) for p in pids.values())
    assert not ram.exists()
    assert not kpt.exists()
    assert not (tmp_path / "state" / "run").exists()
    assert not (tmp_path / "state" / "machine.json").exists()


def test_sigterm_stops_the_machine_too(tmp_path: Path) -> None:
    rm = boot_real(tmp_path / "state", "--ram", "16M")
    pids = rm.role_pids()
    assert rm.stop(signal.SIGTERM) == 0
    assert not any(pid_alive(p) for p in pids.values())


def test_status_cli_text_and_json(real_machine: RealMachine) -> None:
    r = _cli("status", "--endpoint", real_machine.endpoint, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    for role in ("mmu", "uvm", "pdaemon", "net"):
        assert st["roles"][role]["alive"] is True
        assert st["roles"][role]["pid"] == real_machine.role_pids()[role]
    assert st["frames"]["total"] == 4096
    assert {"free", "active", "inactive", "wired"} <= set(st["frames"])
    t = _cli("status", "--endpoint", real_machine.endpoint)
    assert t.returncode == 0
    assert "frames: total 4096" in t.stdout
    assert "swap: swpages 8192" in t.stdout  # twice the RAM by default
    assert "pdaemon" in t.stdout


def test_status_of_no_machine_is_a_clear_error() -> None:
    r = _cli("status", "--endpoint", "tcp://127.0.0.1:9", "--timeout", "1")
    assert r.returncode == 1
    assert "uvm-machine status:" in r.stderr


def test_bad_options_are_refused_before_anything_starts(tmp_path: Path) -> None:
    for args, msg in (
        (["--ram", "12Q"], "not a size"),
        (["--profile", "nosuch"], "no profile"),
        (["--endpoint", "udp://x"], "endpoint"),
    ):
        r = _cli("up", "--state", str(tmp_path / "s"), *args)
        assert r.returncode != 0
        assert msg in r.stderr, r.stderr


async def test_panic_dumps_stops_the_machine_and_fails_every_client_call(
    tmp_path: Path,
) -> None:
    rm = boot_real(tmp_path / "state", "--ram", "16M")
    pids = rm.role_pids()
    try:
        async with Machine.attach(rm.endpoint, timeout_s=20.0) as m:
            p = await m.spawn()
            va = await p.mmap(64 * PAGE_SIZE)
            await p.touch(va, 4)

            async def hammer() -> None:
                i = 0
                while True:
                    await p.store(va + (i % 64) * PAGE_SIZE, b"x")
                    i += 1

            busy = asyncio.ensure_future(hammer())
            r = await asyncio.to_thread(
                _cli, "panic", "uvm", "test: kernel debugger panic", "--state", str(rm.state)
            )
            assert r.returncode == 0, r.stderr
            with pytest.raises(MachinePanic) as ei:
                await asyncio.wait_for(busy, 15)
            assert "test: kernel debugger panic" in ei.value.message
            with pytest.raises(MachinePanic):
                await p.load(va, 1)  # a later call fails at once
            with pytest.raises(MachinePanic):
                await m.spawn()
        status = await asyncio.to_thread(rm.stop, signal.SIGTERM, 20.0)
    finally:
        if rm.proc.poll() is None:
            rm.stop(signal.SIGKILL)
    assert status == 3
    dumps = list((tmp_path / "state" / "dump").glob("crash-*.json"))
    assert len(dumps) == 1
    dump = json.loads(dumps[0].read_text())
    assert dump["panic"]["role"] == "uvm"
    assert dump["panic"]["message"] == "test: kernel debugger panic"
    assert set(dump["roles"]) == {"mmu", "uvm", "pdaemon", "net"}
    assert dump["roles"]["uvm"]["state"] == "panicked"
    assert any("uvm.fault" in t or "mmu" in t for t in dump["roles"]["uvm"]["trace"])
    assert dump["roles"]["mmu"]["pmaps"]  # the mmu's page tables are in the dump
    assert "machine panicked; crash dump:" in rm.stderr[-1]
    assert not any(pid_alive(p) for p in pids.values())
    assert not (SHM_DIR / rm.info["ram"]["name"]).exists()


def test_a_role_that_dies_is_a_panic_with_a_dump(tmp_path: Path) -> None:
    rm = boot_real(tmp_path / "state", "--ram", "16M")
    pids = rm.role_pids()
    os.kill(pids["pdaemon"], signal.SIGKILL)
    try:
        status = rm.proc.wait(30)
    finally:
        rm.stop()
    assert status == 3
    dump = json.loads(next((tmp_path / "state" / "dump").glob("crash-*.json")).read_text())
    assert dump["panic"]["role"] == "pdaemon"
    assert "exited unexpectedly" in dump["panic"]["message"]
    assert not any(pid_alive(p) for p in pids.values())


_DYING_CLIENT = """
import asyncio, os, signal, sys
from machine.client import Machine
async def main():
    m_cm = Machine.attach(sys.argv[1])
    m = await m_cm.__aenter__()
    p = await m.spawn()
    va = await p.mmap(32 * 4096)
    await p.touch(va, 32)
    print("touched", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
asyncio.run(main())
"""


async def test_a_client_that_dies_has_its_frames_freed(tmp_path: Path) -> None:
    rm = boot_real(tmp_path / "state", "--ram", "16M", "--lease", "1")
    try:
        r = await asyncio.to_thread(
            subprocess.run,
            [PY, "-c", _DYING_CLIENT, rm.endpoint],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "touched" in r.stdout, r.stderr
        assert r.returncode == -signal.SIGKILL
        async with Machine.attach(rm.endpoint) as m:

            async def all_free() -> bool:
                s = await m.stats()
                return bool(
                    s["frames"]["free"] + s["frames"]["kernel_owned"] == s["frames"]["total"]
                )

            await wait_until(all_free, 10.0, "the dead client's frames to be freed")
            st = await m.stats()
            assert st["roles"]["uvm"]["counters"]["reaped"] == 1
            assert st["roles"]["uvm"]["counters"]["processes"] == 0
    finally:
        assert rm.stop() == 0


def test_python_dash_m_machine_and_console_script_agree() -> None:
    a = _cli("profile", "show", "thorpe")
    b = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "uvm-machine"), "profile", "show", "thorpe"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout
    assert 'PD_WIRED_CHECK = "skip_wired"' in a.stdout


def test_a_role_that_stops_answering_heartbeats_is_a_panic(tmp_path: Path) -> None:
    rm = boot_real(tmp_path / "state", "--ram", "16M")
    pids = rm.role_pids()
    os.kill(pids["net"], signal.SIGSTOP)  # alive, but silent
    try:
        status = rm.proc.wait(30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids["net"], signal.SIGCONT)
        rm.stop()
    assert status == 3
    dump = json.loads(next((tmp_path / "state" / "dump").glob("crash-*.json")).read_text())
    assert dump["panic"]["role"] == "net"
    assert "missed" in dump["panic"]["message"]
    assert "heartbeats" in dump["panic"]["message"]
    assert not any(pid_alive(p) for p in pids.values())


def test_the_ready_made_clients_pass_against_a_real_machine(real_machine: RealMachine) -> None:
    for args in (
        ["pattern", "--pages", "64", "--procs", "3"],
        ["forker", "--depth", "2", "--width", "3", "--pages", "8"],
    ):
        r = subprocess.run(
            [PY, "-m", "clients", *args, "--endpoint", real_machine.endpoint],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert ": ok" in r.stdout
