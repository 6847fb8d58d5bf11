"""The nemesis: its pure schedule, and each fault's effect on a real machine.

The schedule (machine.stress.nemesis: plan, window_for, check_names, Nemesis'
refusals) is imported here directly: it imports no gevent. The faults run in a
subprocess (`python -m machine.stress.nemesis --selftest ...`, gevent's side),
against a real 4 MiB machine booted once for the module; the test looks at the
machine itself (kernel stats, status, a session of its own) during and after the
window. `--stdin-ends` lets a test end a window when it has looked.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from machine.client import Machine
from machine.config import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS
from machine.ipc.peer import Identity, Peer
from machine.ipc.zmqtransport import ZmqTransport
from machine.proto import (
    NO_HEADER,
    CtlDump,
    CtlDumpReply,
    CtlPing,
    CtlStats,
    CtlStatsReply,
    NetLink,
    Reply,
    Request,
    Status,
    UvmOwners,
    UvmOwnersReply,
)
from machine.stress.nemesis import (
    HOLD_MAX_S,
    KNOWN,
    ROLE_STOP_MAX_S,
    Nemesis,
    Slot,
    check_names,
    parse_names,
    plan,
    window_for,
)
from tests.conftest import PY, RealMachine, boot_real

ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 3.0
HEARTBEAT_LIMIT_S = HEARTBEAT_INTERVAL_S * (HEARTBEAT_LIVENESS + 1)  # then: role missing

# -- the schedule (pure) ----------------------------------------------------------------


def _first(names: list[str], n: int, period_s: float, window_s: float | None = None) -> list[Slot]:
    it = plan(names, period_s, window_s)
    return [next(it) for _ in range(n)]


@pytest.mark.timeout(10)
def test_the_schedule_rotates_over_the_faults_with_a_window_each_period() -> None:
    slots = _first(["squeeze", "client-kill", "pdaemon-kick"], 7, 10.0)
    assert [s.name for s in slots] == [
        "squeeze",
        "client-kill",
        "pdaemon-kick",
        "squeeze",
        "client-kill",
        "pdaemon-kick",
        "squeeze",
    ]
    assert [s.start_s for s in slots] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    assert all(s.end_s - s.start_s == pytest.approx(4.0) for s in slots)  # 40 % of the period
    assert [s.index for s in slots] == list(range(7))
    # a window given is used as is, but never beyond the period
    assert {s.end_s - s.start_s for s in _first(["squeeze"], 3, 10.0, 6.0)} == {6.0}
    assert {s.end_s - s.start_s for s in _first(["squeeze"], 3, 2.0, 6.0)} == {2.0}


@pytest.mark.timeout(10)
def test_a_hold_and_a_role_stop_are_short_whatever_the_period() -> None:
    assert ROLE_STOP_MAX_S <= 1.5  # half of HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS
    assert window_for("role-stop", 60.0) == ROLE_STOP_MAX_S
    assert window_for("role-stop", 60.0, 30.0) == ROLE_STOP_MAX_S
    assert window_for("link-hold", 60.0) == HOLD_MAX_S
    assert window_for("link-slow", 60.0) == pytest.approx(24.0)
    assert window_for("role-stop", 1.0, 0.5) == 0.5
    with pytest.raises(ValueError, match="period"):
        window_for("squeeze", 0.0)


@pytest.mark.timeout(10)
def test_unknown_names_are_refused_with_the_known_ones_listed() -> None:
    with pytest.raises(ValueError, match="unknown nemesis fault") as e:
        check_names(["squeeze", "chaos-monkey"], None)
    assert "chaos-monkey" in str(e.value)
    assert all(k in str(e.value) for k in KNOWN)
    with pytest.raises(ValueError, match="no nemesis fault"):
        check_names([], "/tmp")
    assert parse_names("link-slow, squeeze,,role-stop") == ["link-slow", "squeeze", "role-stop"]
    assert parse_names(["a,b", "c"]) == ["a", "b", "c"]


@pytest.mark.timeout(10)
def test_kernel_side_faults_need_the_state_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--state") as e:
        Nemesis(
            ["squeeze", "link-slow", "role-stop", "client-kill"],
            endpoint="tcp://127.0.0.1:1",
            state_dir=None,
            series=None,
        )
    msg = str(e.value)
    assert "link-slow" in msg
    assert "role-stop" in msg
    assert "squeeze" not in msg
    assert "client-kill" not in msg
    # client-side faults need no state dir
    n = Nemesis(["squeeze", "client-kill"], endpoint="tcp://x:1", state_dir=None, series=None)
    assert n.windows == []
    n.stop()  # nothing in effect: a no-op, and again
    n.stop()
    # a state dir without a running machine's machine.json is refused too
    with pytest.raises(ValueError, match=r"machine\.json"):
        Nemesis(["link-hold"], endpoint="tcp://x:1", state_dir=str(tmp_path), series=None)


@pytest.mark.timeout(30)
def test_importing_the_schedule_imports_no_gevent() -> None:
    code = "import sys, machine.stress.nemesis; print('gevent' in sys.modules)"
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=25)
    assert out.stdout.strip() == "False", out.stderr


# -- each fault on a real machine ---------------------------------------------------


@pytest.fixture(scope="module")
def rm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealMachine]:
    m = boot_real(tmp_path_factory.mktemp("nemesis"), "--ram", "4M", "--lease", str(LEASE_S))
    yield m
    assert m.stop() == 0, m.stderr  # a clean stop: no fault left the machine panicked


class Selftest:
    """`python -m machine.stress.nemesis --selftest ...` against the machine."""

    def __init__(self, rm: RealMachine, faults: str, *args: str) -> None:
        cmd = [PY, "-m", "machine.stress.nemesis", "--selftest", faults]
        cmd += ["--endpoint", rm.endpoint, "--state", str(rm.state), *args]
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def line(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """The next JSON line, within the deadline."""
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            self.proc.kill()
            raise AssertionError(f"no line from the nemesis in {timeout_s} s")
        text = self.proc.stdout.readline()
        assert text, f"the nemesis ended: {self.proc.communicate(timeout=5)[1]}"
        return json.loads(text)  # type: ignore[no-any-return]

    def end_window(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def result(self, timeout_s: float = 60.0) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout_s)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def selftest(rm: RealMachine, faults: str, *args: str, timeout_s: float = 60.0) -> dict[str, Any]:
    return Selftest(rm, faults, *args).result(timeout_s)


async def kcall(rm: RealMachine, role: str, req: Request) -> Reply:
    t = ZmqTransport()
    peer = await Peer(Identity("test", os.getpid()), rm.info["roles"][role]["kernel"]).open(t)
    try:
        return await peer.call(req, 10.0)
    finally:
        await peer.close()
        await t.close()


async def counters(rm: RealMachine, role: str) -> dict[str, int]:
    rep = await kcall(rm, role, CtlStats(h=NO_HEADER))
    assert isinstance(rep, CtlStatsReply)
    return dict(rep.counters)


async def link(rm: RealMachine) -> dict[str, Any]:
    rep = await kcall(rm, "net", CtlDump(h=NO_HEADER))
    assert isinstance(rep, CtlDumpReply)
    return {**rep.state["link"], "held": rep.state["counters"]["held"]}


async def frames(rm: RealMachine) -> dict[str, int]:
    async with Machine.attach(rm.endpoint) as m:
        return dict((await m.status()).frames)


async def until(what: str, probe: Any, deadline_s: float = 20.0) -> Any:
    """Poll `probe()` (async) until it is truthy or the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        v = await probe()
        if v:
            return v
        assert time.monotonic() < end, f"{what}: not within {deadline_s} s"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(60)
async def test_link_slow_changes_the_link_and_restores_what_it_was(rm: RealMachine) -> None:
    # a link that is not the default, so "restored" means restored, not reset
    await kcall(rm, "net", NetLink(h=NO_HEADER, bandwidth_bps=50_000_000, latency_us=100))
    try:
        st = Selftest(rm, "link-slow", "--stdin-ends", "--window", "30")
        begun = await asyncio.to_thread(st.line)
        assert begun["begun"]["name"] == "link-slow"
        during = await link(rm)
        assert (during["bandwidth_bps"], during["latency_us"]) == (8_000_000, 2_000)
        st.end_window()
        r = await asyncio.to_thread(st.result)
        after = await link(rm)
        assert (after["bandwidth_bps"], after["latency_us"], after["held"]) == (50_000_000, 100, 0)
        (w,) = r["windows"]
        assert w["detail"]["restored"] == "50000000 bps, 100 us, hold=False"
        assert r["marks"][0]["end"] is None  # marked open while in effect,
        assert r["marks"][-1]["end"] == w["end"]  # then closed
    finally:
        await kcall(rm, "net", NetLink(h=NO_HEADER))


@pytest.mark.timeout(60)
async def test_link_hold_keeps_a_sends_loans_outstanding_until_released(
    rm: RealMachine,
) -> None:
    async with Machine.attach(rm.endpoint) as m:
        p = await m.spawn()
        n = 16 * 4096
        va = await p.mmap(n)
        await p.store(va, b"\x5a" * n)
        sock = await p.socket()
        st = Selftest(rm, "link-hold", "--stdin-ends", "--window", "30")
        await asyncio.to_thread(st.line)
        sent = await p.send(sock, va, n)
        assert sent.loaned_pages > 0  # 64 KiB: at the loan threshold and above
        held = await counters(rm, "net")
        assert held["held"] == 1
        assert held["socurkva"] > 0, held
        assert (await m.status()).frames["loaned"] > 0
        st.end_window()
        r = await asyncio.to_thread(st.result)
        assert r["windows"][0]["detail"]["socurkva_held"] > 0

        async def returned() -> bool:
            c = await counters(rm, "net")
            f = (await m.status()).frames
            return c["held"] == 0 and c["socurkva"] == 0 and f["loaned"] == 0

        await until("the loans returned after the hold", returned)
        await p.exit()


@pytest.mark.timeout(60)
async def test_pdaemon_kick_forces_passes(rm: RealMachine) -> None:
    before = await counters(rm, "pdaemon")
    r = await asyncio.to_thread(selftest, rm, "pdaemon-kick", "--window", "1")
    after = await counters(rm, "pdaemon")
    d = r["windows"][0]["detail"]
    assert d["kicks"] >= 2
    assert after["pdwoke"] - before["pdwoke"] >= d["kicks"]
    assert after["pdrevs"] > before["pdrevs"]  # the daemon's pass counter rose
    assert d["passes"] > 0


@pytest.mark.timeout(60)
async def test_squeeze_wires_a_quarter_of_ram_for_the_window_then_frees_it(
    rm: RealMachine,
) -> None:
    before = await frames(rm)
    st = Selftest(rm, "squeeze", "--stdin-ends", "--window", "30")
    begun = await asyncio.to_thread(st.line)
    pages = begun["begun"]["detail"]["pages"]
    assert pages == before["total"] // 4
    during = await frames(rm)
    assert during["wired"] >= before["wired"] + pages
    st.end_window()
    r = await asyncio.to_thread(st.result)
    assert r["windows"][0]["detail"]["wired"] == pages

    async def back() -> bool:
        f = await frames(rm)
        return f["wired"] == before["wired"] and f["free"] >= before["free"]

    await until("the balloon's frames came back", back)


@pytest.mark.timeout(60)
async def test_client_kill_reaps_the_victims_session_and_its_frames_come_back(
    rm: RealMachine,
) -> None:
    before = await frames(rm)
    reaped0 = (await counters(rm, "uvm"))["reaped"]
    r = await asyncio.to_thread(selftest, rm, "client-kill", "--window", "1")
    d = r["windows"][0]["detail"]
    assert d["killed"] is True
    assert d["session"] > 0
    assert d["reaped"] is True, d
    assert d["reap_s"] <= LEASE_S + 5.0
    assert r["marks"][-1]["detail"].endswith(d_tail(d))  # the mark updated with the reap
    rep = await kcall(rm, "uvm", UvmOwners(h=NO_HEADER, sessions=[d["session"]]))
    assert isinstance(rep, UvmOwnersReply)
    assert rep.live == [False]
    assert (await counters(rm, "uvm"))["reaped"] > reaped0

    async def back() -> bool:
        f = await frames(rm)
        return f["free"] >= before["free"] and f["wired"] == before["wired"]

    await until("the victim's frames came back", back)


def d_tail(d: dict[str, Any]) -> str:
    return f"reaped={d['reaped']}, reap_s={d['reap_s']}, free_after={d['free_after']}"


@pytest.mark.timeout(60)
async def test_role_stop_stops_each_role_in_turn_and_the_machine_runs_on(
    rm: RealMachine,
) -> None:
    r = await asyncio.to_thread(selftest, rm, "role-stop", "--repeat", "4", "--window", "1.5")
    ws = r["windows"]
    assert [w["detail"]["role"] for w in ws] == ["mmu", "uvm", "pdaemon", "net"]
    for w in ws:
        assert w["detail"]["answered"] is True, w
        assert 1.0 <= w["detail"]["stopped_s"] <= ROLE_STOP_MAX_S + 0.5
    async with Machine.attach(rm.endpoint) as m:
        st = await m.status()
        assert st.state == "running"
        assert not st.panic
        assert all(rs.alive for rs in st.roles.values())
        p = await m.spawn()  # every role serves: a fault, a store, a load
        va = await p.mmap(4096)
        await p.store(va, b"after")
        assert await p.load(va, 5) == b"after"
        await p.exit()
    for role in ("mmu", "uvm", "pdaemon", "net"):
        assert (await kcall(rm, role, CtlPing(h=NO_HEADER))).status is Status.OK


@pytest.mark.timeout(60)
async def test_a_starved_hub_cannot_leave_a_role_stopped(rm: RealMachine) -> None:
    # the gevent hub blocked for 4 s right after the stop (a greenlet that never yields):
    # the window's greenlet wakes too late, the watchdog thread continues the role in time
    r = await asyncio.to_thread(
        selftest, rm, "role-stop", "--window", "1", "--block-hub", str(HEARTBEAT_LIMIT_S + 1)
    )
    d = r["windows"][0]["detail"]
    assert d["watchdog"] is True, d
    assert d["stopped_s"] <= ROLE_STOP_MAX_S + 0.5
    assert d["answered"] is True
    async with Machine.attach(rm.endpoint) as m:
        st = await m.status()
        assert st.state == "running"
        assert all(rs.alive for rs in st.roles.values())


def _state_of(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("State:"):
            return line.split()[1]
    return "?"


@pytest.mark.timeout(60)
async def test_the_schedule_runs_and_stop_undoes_the_fault_in_effect(rm: RealMachine) -> None:
    # period 1 s, windows of 0.9 s: --run 2.5 stops inside the third window (role-stop)
    r = await asyncio.to_thread(
        selftest,
        rm,
        "link-hold,pdaemon-kick,role-stop",
        "--run",
        "2.5",
        "--period",
        "1",
        "--window",
        "0.9",
    )
    names = [w["name"] for w in r["windows"]]
    assert names == ["link-hold", "pdaemon-kick", "role-stop"]
    starts = [w["start"] for w in r["windows"]]
    assert 0.8 <= starts[1] - starts[0] <= 1.5
    assert 0.8 <= starts[2] - starts[1] <= 1.5
    assert all(w["end"] > w["start"] for w in r["windows"])
    assert r["windows"][2]["detail"]["answered"] is True  # stop() continued it
    assert all(_state_of(pid) != "T" for pid in rm.role_pids().values())
    assert (await counters(rm, "net"))["held"] == 0
