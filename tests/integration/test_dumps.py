"""The dumps over real processes, three of the four ways (the fourth, a stress report's, is
tests/stress/test_stress_evidence.py): a crash dump on a panic, `uvm-machine dump` of a
live machine, `up --record DIR` at a clean stop; and `uvm-machine explain` reading them.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from machine.client import Machine
from machine.dumpfile import read_dump
from machine.explore.flight import merge
from machine.params import PAGE_SIZE
from tests.conftest import boot_real, status_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
PY = sys.executable
ROLES = {"mmu", "uvm", "pdaemon", "net", "supervisor"}


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "machine", *args], capture_output=True, text=True, timeout=timeout
    )


async def _use(endpoint: str) -> int:
    async with Machine.attach(endpoint) as m:
        p = await m.spawn()
        va = await p.mmap(4 * PAGE_SIZE, "rw")
        await p.store(va, b"recorded" * 100)
        await p.exit()
        return m.session


def _has_session(dump: dict[str, Any], session: int) -> bool:
    """Some user request of `session` is in the mmu's or uvm's recorder."""
    h = merge(dump)
    return any(
        d.endpoint.endswith("/user") and hd is not None and hd.incarnation == session
        for d, hd in zip(h.deliveries, h.headers, strict=True)
    )


def test_a_panic_writes_a_crash_dump_with_every_flight_recorder(tmp_path: Path) -> None:
    rm = boot_real(tmp_path / "state", "--ram", "8M")
    try:
        session = asyncio.run(_use(rm.endpoint))
        r = cli("panic", "uvm", "a test panic", "--state", str(rm.state))
        assert r.returncode == 0, r.stderr
    finally:
        assert rm.stop() == 3  # a panic
    (path,) = (rm.state / "dump").glob("crash-*.json")
    dump = read_dump(path)
    assert dump["kind"] == "crash"
    assert dump["panic"]["role"] == "uvm"
    assert set(dump["flight"]) == ROLES
    assert _has_session(dump, session)
    r = cli("explain", str(path), "--json", "--html", str(tmp_path / "why.html"))
    assert r.returncode == 0, r.stderr
    ex = json.loads(r.stdout.strip().splitlines()[-1])
    assert ex["outcome"] == "panic"
    assert "a test panic" in ex["message"]
    assert set(ex) >= {"outcome", "message", "revoker", "chain", "frames"}
    # the kernel debugger's ctl.kpanic is the request uvm was handling: the chain says so
    assert any("ctl.kpanic" in step for step in ex["chain"]), ex["chain"]
    assert "<svg" in (tmp_path / "why.html").read_text()


def test_uvm_machine_dump_writes_a_live_dump_and_the_machine_runs_on(tmp_path: Path) -> None:
    rm = boot_real(tmp_path / "state", "--ram", "8M")
    try:
        session = asyncio.run(_use(rm.endpoint))
        out = tmp_path / "copy.json"
        r = cli("dump", "--state", str(rm.state), "--reason", "a look", "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert Path(r.stdout.strip()) == out
        dump = read_dump(out)
        assert (dump["kind"], dump["reason"]) == ("live", "a look")
        assert set(dump["flight"]) == ROLES
        assert _has_session(dump, session)
        (own,) = (rm.state / "dump").glob("live-*.json")  # the supervisor's own copy
        # every session's recorded bytes: readable by the machine's owner only
        assert stat.S_IMODE(own.stat().st_mode) == 0o600
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        assert stat.S_IMODE((rm.state / "dump").stat().st_mode) == 0o700
        st = status_json(rm.endpoint)
        assert st["state"] == "running"
        assert all(s["alive"] for s in st["roles"].values())
        assert asyncio.run(_use(rm.endpoint))  # and still serves
    finally:
        assert rm.stop() == 0


def test_uvm_machine_dump_without_a_machine_says_so(tmp_path: Path) -> None:
    r = cli("dump", "--state", str(tmp_path))
    assert r.returncode == 1
    assert "no machine to dump" in r.stderr


def test_up_record_writes_a_dump_when_the_machine_stops(tmp_path: Path) -> None:
    record = tmp_path / "record"
    rm = boot_real(tmp_path / "state", "--ram", "8M", "--record", str(record))
    try:
        session = asyncio.run(_use(rm.endpoint))
    finally:
        assert rm.stop() == 0
    (path,) = record.glob("stop-*.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(record.stat().st_mode) == 0o700
    dump = read_dump(path)
    assert dump["kind"] == "stop"
    assert set(dump["flight"]) == ROLES
    assert _has_session(dump, session)
    r = cli("explain", str(path), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["outcome"] == "ok"


def test_explain_refuses_what_is_not_a_dump(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    for text in ("not json", "[1, 2]", '{"roles": {}, "flight": {"uvm": {"entries": [[1]]}}}'):
        bad.write_text(text)
        r = cli("explain", str(bad))
        assert r.returncode == 2, (text, r.stdout, r.stderr)
        assert "uvm-machine explain:" in r.stderr
        assert "Traceback" not in r.stderr
    r = cli("explain", str(tmp_path / "missing.json"))
    assert r.returncode == 2


def test_up_record_keeps_the_crash_dump_after_a_panic(tmp_path: Path) -> None:
    record = tmp_path / "record"
    rm = boot_real(tmp_path / "state", "--ram", "8M", "--record", str(record))
    try:
        asyncio.run(_use(rm.endpoint))
        r = cli("panic", "net", "a recorded panic", "--state", str(rm.state))
        assert r.returncode == 0, r.stderr
    finally:
        assert rm.stop() == 3
    (crash,) = (rm.state / "dump").glob("crash-*.json")
    (kept,) = record.glob("*.json")
    assert kept.name == crash.name  # the crash dump itself, not a second dump
    assert kept.read_bytes() == crash.read_bytes()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert read_dump(kept)["panic"]["role"] == "net"
