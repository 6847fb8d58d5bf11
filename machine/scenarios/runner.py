"""Running a scenario on a freshly booted machine and classifying what happened.

    outcome = await run_scenario("seed", "bug1999")                    # real processes
    outcome = await run_scenario("seed", "bug1999", inprocess=True, seed=3)

The wire is read through the operator's tap (net.tap_recv on net's kernel
endpoint: every session's packets), as an operator would check a machine.

Outcomes: `ok` (the workload finished, every payload on the wire matched what
its sender's memory held at send, the auditor is clean and every loan was
returned), `panic` (the machine panicked: the role and its message, which
names the page and who revoked its mapping; the crash dump's path),
`corruption` (a payload differed: offsets and both values), `error`
(anything else, including a broken rule the scenario checks). Each outcome
is compared with the scenario's prediction for the profile's knobs.

Real processes: `python -m machine up` in a subprocess with a fresh state
directory (removed afterwards unless it holds a crash dump). In process: the
deterministic in-memory transport under virtual time (machine.testing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machine.client import Machine, MachinePanic, Process, SendResult, Socket, Wire
from machine.ipc.peer import Identity, Peer
from machine.profile import Settings, load_profile, with_overrides
from machine.proto import (
    NO_HEADER,
    CtlStats,
    CtlStatsReply,
    NetLink,
    PdWakeup,
    Reply,
    Request,
    UvmAudit,
    UvmAuditReply,
)
from machine.scenarios.catalog import (
    CORRUPTION,
    ERROR,
    OK,
    PANIC,
    SCENARIOS,
    Scenario,
    ScenarioFailure,
)
from machine.testing import poll_for
from machine.wirecheck import WireCheck, WireCorruption

_H = NO_HEADER
SETTLE_S = 20.0


@dataclass
class Outcome:
    scenario: str
    profile: str
    outcome: str
    expected: str
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.outcome == self.expected

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "profile": self.profile,
            "outcome": self.outcome,
            "expected": self.expected,
            "pass": self.passed,
            "detail": self.detail,
        }


class Ctx:
    """What a scenario body works with: the client, the kernel, the wire and checks."""

    def __init__(
        self,
        m: Machine,
        kcall: Callable[[str, Request], Any],
        wire: Wire,
        knobs: dict[str, Any],
        ram: int,
    ) -> None:
        self.m = m
        self._kcall = kcall
        self.wire = wire
        self.knobs = knobs
        self.settings = Settings.of(knobs)  # typed; the cores' rules: self.settings.rules
        self.ram = ram
        self.check = WireCheck()
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)

    async def kcall(self, role: str, req: Request) -> Reply:
        rep: Reply = await self._kcall(role, req)
        return rep

    async def hold(self, somaxkva: int = 0) -> None:
        """Stop the driver, so loans stay outstanding until release()."""
        await self.kcall("net", NetLink(h=_H, hold=True, somaxkva=somaxkva))

    async def release(self) -> None:
        await self.kcall("net", NetLink(h=_H, hold=False))

    async def send(self, p: Process, s: Socket, va: int, data: bytes) -> SendResult:
        """Send len(data) bytes from va, which the caller knows hold `data`."""
        r = await p.send(s, va, len(data))
        self.check.expect(r, data)
        return r

    async def counters(self, role: str) -> dict[str, int]:
        rep: CtlStatsReply = await self.m.call_role(role, CtlStats(h=_H), CtlStatsReply)
        return dict(rep.counters)

    async def frames(self) -> dict[str, int]:
        rep: CtlStatsReply = await self.m.call_role("uvm", CtlStats(h=_H), CtlStatsReply)
        return dict(rep.frames)

    async def poll(
        self, pred: Callable[[dict[str, int]], bool], role: str, what: str, timeout_s: float = 10
    ) -> dict[str, int]:
        """Poll a role's counters until pred holds (machine.testing.poll_for's deadline)."""
        seen: dict[str, int] = {}

        async def holds() -> bool:
            if self.m.panic is not None:
                raise self.m.panic
            seen.update(await self.counters(role))
            return pred(seen)

        try:
            await poll_for(holds, timeout_s, 0.01, what)
        except TimeoutError:
            raise ScenarioFailure(f"timed out waiting for {what}: {role} {seen}") from None
        return seen

    async def pdaemon_pass(self) -> None:
        """Wake the page daemon and wait until it has finished its passes."""
        before = (await self.counters("pdaemon")).get("pdwoke", 0)
        await self.kcall("pdaemon", PdWakeup(h=_H))
        await self.poll(lambda c: c.get("pdwoke", 0) > before, "pdaemon", "the daemon to wake")
        await self.poll(lambda c: not c.get("scanning", 0), "pdaemon", "the daemon's passes")

    async def receive(self, timeout_s: float = 20.0) -> None:
        """Every expected send from the wire, each checked. => WireCorruption."""
        while self.check.expected:
            self.check.check(await self.wire.get(timeout_s))

    async def settle(self, timeout_s: float = SETTLE_S) -> None:
        """Wait until every loan is returned (sopendfree done), then audit."""
        await self.drain(timeout_s)
        left = await self.loans_left()
        if left:
            raise ScenarioFailure(f"{left} pages still loaned after every mbuf was freed")
        problems = await self.audit()
        if problems:
            raise ScenarioFailure(f"audit: {problems}")

    async def drain(self, timeout_s: float = SETTLE_S) -> None:
        """Wait until the transmit queue is empty and every loaned mbuf is freed."""
        await self.poll(
            lambda c: (
                c.get("txq", 0) == 0
                and c.get("pendfree_q", 0) == 0
                and c.get("pendfree", 0) == c.get("loaned_chunks", 0)
            ),
            "net",
            "every loaned mbuf to be freed",
            timeout_s,
        )

    async def loans_left(self) -> int:
        """Pages still loaned (modern's shared zero page, loaned once, not counted)."""
        loaned = (await self.frames()).get("loaned", 0)
        zero = 1 if self.settings.rules.zero_loans_share_one_page and loaned == 1 else 0
        return int(loaned - zero)

    async def audit(self) -> list[str]:
        """uvm.audit: the problems found (empty when every invariant holds)."""
        rep = await self.kcall("uvm", UvmAudit(h=_H))
        if not isinstance(rep, UvmAuditReply):
            return [f"uvm.audit failed: {rep}"]
        return list(rep.problems)


def _profile_label(name_or_path: str) -> str:
    return Path(name_or_path).stem if name_or_path.endswith(".toml") else name_or_path


async def run_scenario(
    name: str,
    profile: str = "modern",
    *,
    inprocess: bool = False,
    seed: int = 0,
    timeout_s: float = 120.0,
    keep_state: bool = False,
) -> Outcome:
    """Boot a fresh machine, run one scenario, classify (see module doc)."""
    sc = SCENARIOS[name]
    base = load_profile(profile)
    knobs = {**base.knobs, **sc.overrides}
    expected = sc.expect(knobs)
    state = Path(tempfile.mkdtemp(prefix=f"uvm-scenario-{name}-"))
    out = Outcome(name, _profile_label(profile), ERROR, expected)
    try:
        prof = with_overrides(base, sc.overrides, state)
        booter = (
            _boot_inprocess(sc, prof, seed, state) if inprocess else _boot_real(sc, prof, state)
        )
        async with booter as (m, kcall):
            ctx = Ctx(m, kcall, Wire.tap(kcall, m), knobs, sc.ram)  # the operator's tap
            await _classify(sc, ctx, out, timeout_s)
    except Exception as e:  # booting or tearing down failed
        if out.outcome == OK or not out.detail:
            out.outcome, out.detail = ERROR, f"{type(e).__name__}: {e}"
    finally:
        dumps = list((state / "dump").glob("*.json")) if (state / "dump").is_dir() else []
        if dumps:
            out.evidence.setdefault("dump", str(dumps[0]))
        if not keep_state and not dumps:
            shutil.rmtree(state, ignore_errors=True)
    return out


async def _classify(sc: Scenario, ctx: Ctx, out: Outcome, timeout_s: float) -> None:
    try:
        async with ctx.wire:
            await asyncio.wait_for(sc.body(ctx), timeout_s)
        out.outcome = OK
        out.detail = "; ".join(ctx.notes) or "data intact, audit clean, every loan returned"
    except MachinePanic as e:
        panic = await _panic_of(ctx.m, e)
        out.outcome = PANIC
        out.detail = f"{panic.role or '?'}: {panic.message}"
        out.evidence = {"role": panic.role, "message": panic.message, "dump": panic.dump}
    except WireCorruption as e:
        out.outcome = CORRUPTION
        out.detail = e.detail
        out.evidence = e.evidence
    except ScenarioFailure as e:
        out.outcome, out.detail = ERROR, f"scenario check failed: {e}"
    except TimeoutError:
        out.outcome, out.detail = ERROR, f"hang: the scenario did not finish in {timeout_s} s"
    except Exception as e:
        if ctx.m.panic is not None:
            panic = await _panic_of(ctx.m, ctx.m.panic)
            out.outcome, out.detail = PANIC, f"{panic.role or '?'}: {panic.message}"
            out.evidence = {"role": panic.role, "message": panic.message, "dump": panic.dump}
        else:
            out.outcome, out.detail = ERROR, f"{type(e).__name__}: {e}"


async def _panic_of(m: Machine, e: MachinePanic) -> MachinePanic:
    """The machine's own panic event (role, message, dump), which may trail the EPANIC reply
    (the supervisor's first event names the role, its next one the crash dump too)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while loop.time() < deadline:
        p = m.panic
        if p is not None and p.role and p.dump:
            return p
        await asyncio.sleep(0.02)
    return m.panic or e


@contextlib.asynccontextmanager
async def _boot_inprocess(
    sc: Scenario, profile: str, seed: int, state: Path
) -> AsyncIterator[tuple[Machine, Callable[[str, Request], Any]]]:
    from machine.testing import SimMachine

    (state / "sim").mkdir()
    async with (
        SimMachine.boot(
            seed=seed, ram_bytes=sc.ram, profile=profile, state_dir=str(state / "sim")
        ) as sim,
        sim.attach() as m,
    ):
        yield m, sim.kcall


@contextlib.asynccontextmanager
async def _boot_real(
    sc: Scenario, profile: str, state: Path
) -> AsyncIterator[tuple[Machine, Callable[[str, Request], Any]]]:
    from machine.ipc.zmqtransport import ZmqTransport

    cmd = [
        "-m",
        "machine",
        "up",
        "--ram",
        str(sc.ram),
        "--profile",
        profile,
        "--endpoint",
        "tcp://127.0.0.1:0",
        "--state",
        str(state),
    ]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    transport = ZmqTransport()
    peers: dict[str, Peer] = {}
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        if not line.startswith("attach: "):
            raise RuntimeError(f"machine did not boot: {line!r}")
        info = json.loads((state / "machine.json").read_text())

        async def kcall(role: str, req: Request) -> Reply:
            if role not in peers:
                ep = info["roles"][role]["kernel"]
                peers[role] = await Peer(Identity("scenario", 11), ep).open(transport)
            return await peers[role].call(req, 30.0)

        async with Machine.attach(line.split(" ", 1)[1].strip()) as m:
            yield m, kcall
    finally:
        for p in peers.values():
            await p.close()
        await transport.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        with contextlib.suppress(TimeoutError):
            await poll_for(lambda: not _group_alive(proc.pid), 5.0, what="the machine to exit")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def run_matrix(
    profiles: list[str],
    scenarios: list[str] | None = None,
    *,
    inprocess: bool = False,
    seed: int = 0,
    on_row: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Every scenario under every profile, one fresh machine each."""
    rows = []
    for name in scenarios or list(SCENARIOS):
        for prof in profiles:
            o = await run_scenario(name, prof, inprocess=inprocess, seed=seed)
            rows.append(o)
            if on_row is not None:
                on_row(o)
    return rows


def outcome_json(o: Outcome) -> dict[str, Any]:
    return {**o.row(), "evidence": o.evidence}
