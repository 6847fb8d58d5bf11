"""Shared fixtures: a real machine (processes over ZeroMQ), the in-memory machine, harnesses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from machine.client import Machine
from machine.ipc.peer import Identity, Peer
from machine.ipc.zmqtransport import ZmqTransport
from machine.proto import NO_HEADER, Reply, Request, UvmAudit, UvmAuditReply
from machine.testing import SimMachine

PY = sys.executable
_H = NO_HEADER

#: The order the suite runs in: fast, pointed tests first, so a broken rule is reported
#: in seconds by the test that names it, before a model test spends minutes finding and
#: shrinking the same defect (mutation testing measured ~1 s against 280-320 s).
RUN_ORDER = ("unit", "test_tooling.py", "scenarios", "model", "integration")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run unit tests, then tooling, scenarios, model tests, integration tests (RUN_ORDER);
    the order within each group is kept."""

    def rank(item: pytest.Item) -> int:
        parts = Path(str(item.fspath)).relative_to(Path(__file__).parent).parts
        return RUN_ORDER.index(parts[0]) if parts[0] in RUN_ORDER else len(RUN_ORDER)

    items.sort(key=rank)


@dataclass
class RealMachine:
    """A machine booted with `python -m machine up` in a subprocess."""

    proc: subprocess.Popen[str]
    endpoint: str
    state: Path
    info: dict[str, Any] = field(default_factory=dict)
    stderr: list[str] = field(default_factory=list)

    def role_pids(self) -> dict[str, int]:
        return {r: int(v["pid"]) for r, v in self.info["roles"].items()}

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=5)
            raise AssertionError("uvm-machine up did not stop within the deadline") from None
        self.stderr.append(err)
        return self.proc.returncode


def boot_real(state: Path, *args: str, timeout_s: float = 30.0) -> RealMachine:
    """Start `uvm-machine up` and wait (with a deadline) for its attach line."""
    cmd = [
        PY,
        "-m",
        "machine",
        "up",
        "--endpoint",
        "tcp://127.0.0.1:0",
        "--state",
        str(state),
        *args,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("attach: ") or not line:
            break
    if not line.startswith("attach: "):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"machine did not boot: {line!r} {err}")
    endpoint = line.split(" ", 1)[1].strip()
    info = json.loads((state / "machine.json").read_text())
    return RealMachine(proc, endpoint, state, info)


def status_json(endpoint: str) -> dict[str, Any]:
    """`uvm-machine status --json` of a running machine, as a user runs it."""
    r = subprocess.run(
        [PY, "-m", "machine", "status", "--endpoint", endpoint, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(r.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def real_machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealMachine]:
    """One real machine shared by the client-level tests (each detaches when done)."""
    m = boot_real(tmp_path_factory.mktemp("state"), "--ram", "16M", "--lease", "3")
    yield m
    assert m.stop() == 0


class Harness:
    """What a client-level test needs, whatever the transport."""

    kind: str
    disk: Path

    def attach(self, **kw: Any) -> contextlib.AbstractAsyncContextManager[Machine]:
        raise NotImplementedError

    async def kcall(self, role: str, req: Request) -> Reply:
        raise NotImplementedError

    async def audit(self) -> list[str]:
        rep = await self.kcall("uvm", UvmAudit(h=_H))
        assert isinstance(rep, UvmAuditReply), rep
        return rep.problems

    async def frames(self) -> dict[str, int]:
        async with self.attach(keepalive=False) as m:
            return dict((await m.stats())["frames"])


class SimHarness(Harness):
    kind = "inmemory"

    def __init__(self, sim: SimMachine) -> None:
        self.sim = sim
        self.disk = Path(sim.state_dir) / "disk"

    def attach(self, **kw: Any) -> contextlib.AbstractAsyncContextManager[Machine]:
        return self.sim.attach(**kw)

    async def kcall(self, role: str, req: Request) -> Reply:
        return await self.sim.kcall(role, req)


class ZmqHarness(Harness):
    kind = "zmq"

    def __init__(self, rm: RealMachine) -> None:
        self.rm = rm
        self.disk = rm.state / "disk"
        self.transport = ZmqTransport()
        self.peers: dict[str, Peer] = {}

    def attach(self, **kw: Any) -> contextlib.AbstractAsyncContextManager[Machine]:
        return Machine.attach(self.rm.endpoint, **kw)

    async def kcall(self, role: str, req: Request) -> Reply:
        if role not in self.peers:
            info = self.rm.info  # the supervisor's kernel endpoint serves ctl.dumpsys
            ep = (info["supervisor"] if role == "supervisor" else info["roles"][role])["kernel"]
            self.peers[role] = await Peer(Identity("test", 7), ep).open(self.transport)
        return await self.peers[role].call(req, 10.0)

    async def close(self) -> None:
        for p in self.peers.values():
            await p.close()
        await self.transport.close()


@pytest.fixture(params=["inmemory", "zmq"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """The same client-level test on the in-memory machine and on real processes."""
    if request.param == "inmemory":
        async with SimMachine.boot(
            seed=1234, ram_bytes=16 << 20, lease_s=3.0, latency_s=(0.0, 20e-6)
        ) as sim:
            yield SimHarness(sim)
            assert not sim.sup.panic_message, sim.sup.panic_message
    else:
        rm: RealMachine = request.getfixturevalue("real_machine")
        h = ZmqHarness(rm)
        try:
            yield h
        finally:
            await h.close()
        assert rm.proc.poll() is None, "the shared machine died during the test"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def wait_until(pred: Any, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        r = pred()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
