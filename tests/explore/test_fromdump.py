"""`replay --from-dump`: a dump's requests as a workload (round trip, extraction with ids
and places), the recorded order followed exactly for a simulated recording, and the
CLI's report and exit codes (a reproduction that replays, a miss, a bad dump)."""

from __future__ import annotations

import json
import random
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from machine.dumpfile import read_dump
from machine.explore.explore import failure_kind, run_seed
from machine.explore.fromdump import extract, profile_for, target_of
from machine.explore.run import run_workload
from machine.explore.workload import BUS_US, Workload, draw
from machine.ipc.inmemory import run_simulation
from machine.ipc.peer import Identity, Peer
from machine.profile import load_profile
from machine.proto import NO_HEADER, CtlDumpsys, CtlDumpsysReply, NetLink, PdWakeup
from machine.testing import SimMachine, poll_for

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]
_H = NO_HEADER
PAGE = 4096


def tool(role: str) -> Peer:
    """A kernel-side tool (as the stress nemesis is: a sender that is no role)."""
    return Peer(Identity("kdebug", 4242), f"inproc://{role}/kernel")


async def _crash(state: Path) -> None:
    """bug1999's anon-free chain, recorded: a loaned send held on the wire, the sender
    exits, the link is released, the driver's read faults (the sim writes a crash dump)."""
    async with SimMachine.boot(
        seed=5, ram_bytes=1 << 20, swap_bytes=4 << 20, profile="bug1999", state_dir=str(state)
    ) as sim:
        net = await tool("net").open(sim.transport)
        async with sim.attach() as m:
            p = await m.spawn()
            s = await p.socket()
            va = await p.mmap(16 * PAGE)
            await p.store(va, bytes(range(256)) * 256)
            await net.call(NetLink(h=_H, hold=True))
            await p.send(s, va, 16 * PAGE)
            await p.exit()
            await net.call(NetLink(h=_H, hold=False))
            await poll_for(lambda: m.panic is not None, 5.0, 0.01, "the panic")
        await net.close()


@pytest.fixture(scope="module")
def crash_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("sim-crash")
    run_simulation(_crash(state))
    (dump,) = (state / "dump").glob("crash-*.json")
    return dump


async def _live(state: Path, made: dict[str, Any]) -> None:
    """Two sessions and two tool requests, then ctl.dumpsys (a live dump)."""
    async with SimMachine.boot(
        seed=9, ram_bytes=2 << 20, swap_bytes=4 << 20, profile="modern", state_dir=str(state)
    ) as sim:
        net, pd = await tool("net").open(sim.transport), await tool("pdaemon").open(sim.transport)
        async with sim.attach() as a, sim.attach() as b:
            made["sessions"] = [str(a.session), str(b.session)]
            p = await a.spawn()
            s = await p.socket()
            va = await p.mmap(2 * PAGE)
            await p.store(va, b"x" * 5000)
            await net.call(NetLink(h=_H, bandwidth_bps=10_000_000, latency_us=100))
            await p.send(s, va, 5000)
            q = await b.spawn()
            c = await q.fork()
            f = await b.open("live.bin", create=True, size=PAGE)
            await q.mmap(PAGE, file=f, shared=True)
            await pd.call(PdWakeup(h=_H))
            await c.exit()
            made.update(asid=p.asid, sock=s.id, q=q.asid, child=c.asid, handle=f.handle)
            rep = await sim.kcall("supervisor", CtlDumpsys(h=_H, reason="test"))
            assert isinstance(rep, CtlDumpsysReply)
            made["path"] = rep.path
        await net.close()
        await pd.close()


@pytest.mark.timeout(60)
def test_a_recorded_workload_round_trips_through_json_and_reads_as_steps(
    crash_dump: Path,
) -> None:
    w = extract(read_dump(crash_dump)).workload
    slow = Workload(w.ram, w.swap, w.features, 0, 0, w.clients, bus_us=(100, 1000))
    for x in (w, slow):
        assert Workload.from_json(json.loads(json.dumps(x.to_json()))) == x
    assert slow.to_json()["bus_us"] == [100, 1000]
    assert "bus_us" not in w.to_json()  # the default is not written:
    assert "bus_us" not in draw(random.Random(3)).to_json()  # drawn JSON as before
    assert w.bus_us == BUS_US
    assert w.recorded()
    assert not draw(random.Random(3)).recorded()
    steps = "\n".join(w.steps())
    assert "p1: uvm.spawn() -> recorded id 1 @0.000 ms" in steps
    assert "p1: uvm.mmap(asid=1, length=65536, prot=3" in steps
    assert "mmu.store(asid=1, va=4096, data=<65536 B>)" in steps
    assert "p2: kernel: net.link(bandwidth_bps=0, latency_us=0, hold=True" in steps
    assert w.features == ("recorded", "paced")
    assert w.ram == 1 << 20
    assert w.swap == 4 << 20


@pytest.mark.timeout(60)
def test_extraction_takes_each_sessions_requests_in_order_with_the_ids_they_made(
    tmp_path: Path,
) -> None:
    made: dict[str, Any] = {}
    run_simulation(_live(tmp_path, made))
    dump = read_dump(made["path"])
    assert dump["kind"] == "live"
    assert target_of(dump) == ("ok", "test", "")
    for reason, outcome in [
        ("frames not back: at the start {...}, at the end {...}", "leak"),  # the stress harness
        ("leak: 1 frame", "leak"),
        ("corruption: socket 3 send 1", "corruption"),
    ]:
        assert target_of({**dump, "reason": reason}) == (outcome, reason, "")
    ex = extract(dump)
    assert ex.sessions == made["sessions"]
    a, b, tools = ex.workload.clients
    assert [op.args["t"] for op in a] == [
        "uvm.spawn", "net.socket", "uvm.mmap", "mmu.store", "net.send",
    ]  # fmt: skip
    assert [op.args["t"] for op in b] == [
        "uvm.spawn",
        "uvm.fork",
        "uvm.open",
        "uvm.mmap",
        "uvm.exit",
    ]
    assert a[0].args["makes"] == made["asid"]
    assert a[1].args["makes"] == made["sock"]
    assert b[0].args["makes"] == made["q"]
    assert b[1].args["makes"] == made["child"]
    assert b[2].args["makes"] == made["handle"]
    assert {op.args["session"] for op in a} == {made["sessions"][0]}
    assert [op.args["t"] for op in tools] == ["net.link", "pd.wakeup"]
    assert all(op.kind == "kcall" for op in tools)
    # at their place: the link after a's store and before its send, the wake-up after b's mmap
    seq = {op.args["t"]: int(op.args["seq"]) for op in (*a, *b)}
    assert seq["mmu.store"] < int(tools[0].args["after"]) < seq["net.send"]
    assert seq["uvm.mmap"] < int(tools[1].args["after"]) < seq["uvm.exit"]
    ats = [int(op.args["at_us"]) for op in a]
    assert ats == sorted(ats)
    assert ats[0] >= 0
    # the live dump replays clean (its target is ok), every send checked against RAM
    r = run_workload(ex.workload, "modern", run_seed(0, 0), follow=ex.follow())
    assert r.outcome == "ok", r.message
    assert r.calls is not None
    assert r.calls.failed_calls == 0
    assert r.calls.va_mismatch == 0
    assert r.calls.checked_bytes == 5000


@pytest.mark.timeout(60)
def test_the_follow_gate_follows_a_simulated_recording_exactly_and_reproduces_it(
    crash_dump: Path,
) -> None:
    dump = read_dump(crash_dump)
    ex = extract(dump)
    want = failure_kind(dict(zip(("outcome", "message", "revoker"), target_of(dump), strict=True)))
    r = run_workload(
        ex.workload, profile_for(dump, crash_dump.parent), run_seed(0, 0), follow=ex.follow()
    )
    assert failure_kind({"outcome": r.outcome, "message": r.message, "revoker": r.revoker}) == want
    assert r.revoker == "uvm"
    f = r.follow
    assert f is not None
    assert f["exact"] is True, f["first_divergence"]
    assert f["followed"] == f["expected"] > 10
    again = run_workload(ex.workload, "bug1999", run_seed(0, 0), follow=ex.follow())
    assert (again.trace_hash, again.message) == (r.trace_hash, r.message)


def cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "machine", *args], capture_output=True, text=True, timeout=timeout_s, cwd=ROOT
    )


def replayed(command: str) -> subprocess.CompletedProcess[str]:
    """Run a printed `uvm-machine replay ...` command (with --json)."""
    argv = shlex.split(command)
    assert argv[:2] == ["uvm-machine", "replay"]
    return cli(*argv[1:], "--json")


@pytest.mark.timeout(120)
def test_the_cli_reproduces_shrinks_and_prints_a_replay_that_replays(
    crash_dump: Path, tmp_path: Path
) -> None:
    p = cli("replay", "--from-dump", str(crash_dump), "--out", str(tmp_path), "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert {"reproduced", "outcome", "message", "runs_tried", "mode", "replay", "workload"} <= set(
        r
    )
    assert r["reproduced"] is True
    assert r["mode"] == "recorded"
    assert r["runs_tried"] == 1
    assert r["outcome"] == "panic"
    assert "--follow" in r["replay"]
    assert Path(r["workload"]).parent == tmp_path
    assert Workload.from_json(json.loads(Path(r["workload"]).read_text())).recorded()
    # the boot line and a few requests; the link's hold stays: the driver reads the kernel
    # page table (machine.kpt) with no round trip, so the exit's revocation must land while
    # the link holds the mbuf
    assert 1 < len(r["shrunk_steps"]) <= 9
    again = replayed(r["replay"])
    assert again.returncode == 1  # a failure replayed
    got = json.loads(again.stdout.strip().splitlines()[-1])
    assert (got["message"], got["trace_hash"]) == (r["message"], r["trace_hash"])
    small = replayed(r["shrunk_replay"])
    assert json.loads(small.stdout.strip().splitlines()[-1])["outcome"] == "panic"


@pytest.mark.timeout(120)
def test_a_failure_the_simulator_does_not_give_is_not_reproduced_exit_1(
    crash_dump: Path, tmp_path: Path
) -> None:
    doc = json.loads(crash_dump.read_text())
    doc["panic"]["message"] = "pdaemon_scan: a panic that this workload never makes"
    doc["panic"]["role"] = "pdaemon"
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps(doc))
    p = cli("replay", "--from-dump", str(bad), "--runs", "3", "--json")
    assert p.returncode == 1, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["reproduced"] is False
    assert r["runs_tried"] == 3
    assert r["replay"] is None
    assert r["mode"] is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("content", ["", "not json {", '{"kind": "crash"}', '{"roles": {}}'])
def test_a_bad_dump_is_exit_2_with_a_clear_error_not_a_traceback(
    tmp_path: Path, content: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    p = cli("replay", "--from-dump", str(bad), "--json")
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert str(bad) in p.stderr
    assert p.stdout.strip() == ""


@pytest.mark.timeout(60)
def test_a_missing_dump_and_replay_without_run_are_exit_2(tmp_path: Path) -> None:
    p = cli("replay", "--from-dump", str(tmp_path / "nope.json"))
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert "nope.json" in p.stderr
    q = cli("replay", "--profile", "modern")
    assert q.returncode == 2
    assert "--run" in q.stderr


@pytest.mark.timeout(30)
def test_the_profile_is_the_dumps_name_while_its_knobs_match_else_a_toml_of_them(
    tmp_path: Path,
) -> None:
    knobs = load_profile("bug1999").knobs
    assert profile_for({"profile": "bug1999", "knobs": knobs}, tmp_path) == "bug1999"
    assert profile_for({"profile": "bug1999"}, tmp_path) == "bug1999"  # a dump without knobs
    for name in ("bug1999", str(tmp_path / "gone" / "mine.toml")):
        changed = {**knobs, "DIAGNOSTIC": True}
        path = profile_for({"profile": name, "knobs": changed}, tmp_path / "out")
        assert Path(path).parent == tmp_path / "out"
        assert load_profile(path).knobs == changed
