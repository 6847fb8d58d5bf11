"""The exploration driver: seeds, determinism across processes and Dask, --until-first,
replay of a found failure, shrinking through explore(), the CLI's JSON and exit codes.

Most tests use the real machine (machine.explore.run) on `bug1999`, whose swarm finds
kernel-loan panics within a few runs; `fake_run` is a stand-in machine (module-level, so
spawned workers import it) for the driver's own semantics, independent of the machine's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from machine.explore.explore import explore, run_seed, workload_rng
from machine.explore.run import RunResult, run_workload
from machine.explore.shrink import signature
from machine.explore.workload import Workload, draw

ROOT = Path(__file__).resolve().parents[2]
PROFILE = "bug1999"


def fake_run(
    w: Workload, profile: str, sched_seed: int | str, strategy: str = "random", depth: int = 3
) -> RunResult:
    """A stand-in machine: panics iff the workload has a hog and a send followed by exit."""
    ops = [op for c in w.clients for op in c]
    key = json.dumps([w.to_json(), profile, str(sched_seed), strategy, depth], sort_keys=True)
    h = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    bad = any(op.kind == "hog" for op in ops) and any(
        op.kind == "send" and op.args.get("then") == "exit" for op in ops
    )
    if not bad:
        return RunResult("ok", "fine", h, len(ops), 0.0)
    msg = f"uvm: page {int(sched_seed) % 997} was revoked by pdaemon: pmap_page_protect"
    return RunResult("panic", msg, h, len(ops), 0.0, revoker="pdaemon")


def raising_run(w: Workload, profile: str, sched_seed: int | str, *rest: Any) -> RunResult:
    raise RuntimeError("boom")


def _fails(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(f["run"], f["outcome"], f["message"], f["trace_hash"]) for f in report["failures"]]


@pytest.fixture(scope="module")
def baseline() -> dict[str, Any]:
    """bug1999, seed 0, in this process, not shrunk, up to and with its first failing run
    (found with --until-first; the machine's code decides which run): what every other way
    of running the same runs must equal."""
    r = explore(PROFILE, 200, jobs=1, seed=0, until_first=True, shrink=False)
    assert r["failures"], "bug1999's swarm should fail within 200 runs"
    assert r["runs"] == r["failures"][0]["run"] + 1
    return r


def test_run_seed_is_blake2b_of_seed_and_run() -> None:
    want = hashlib.blake2b(b"7:3", digest_size=8).digest()
    assert run_seed(7, 3) == int.from_bytes(want, "big")
    assert len({run_seed(s, k) for s in range(5) for k in range(50)}) == 250
    assert draw(workload_rng(run_seed(0, 1))) == draw(workload_rng(run_seed(0, 1)))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", ["random", "pct"])
def test_same_seed_twice_same_failures_and_trace_hashes(strategy: str) -> None:
    a = explore(PROFILE, 6, seed=5, strategy=strategy, shrink=False)
    b = explore(PROFILE, 6, seed=5, strategy=strategy, shrink=False)
    assert a["digest"] == b["digest"]
    assert _fails(a) == _fails(b)
    assert a["runs"] == 6
    assert explore(PROFILE, 6, seed=6, strategy=strategy, shrink=False)["digest"] != a["digest"]


@pytest.mark.timeout(60)
def test_two_jobs_return_the_same_runs_as_one(baseline: dict[str, Any]) -> None:
    r = explore(PROFILE, baseline["runs"], jobs=2, seed=0, shrink=False)
    assert r["digest"] == baseline["digest"]
    assert _fails(r) == _fails(baseline)
    assert r["outcomes"] == baseline["outcomes"]


@pytest.mark.timeout(90)
@pytest.mark.filterwarnings("ignore")  # Dask's own shutdown warnings
def test_a_local_dask_cluster_returns_the_same_runs_as_one_job(
    baseline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import LocalCluster

    monkeypatch.setenv("PYTHONHASHSEED", "0")
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        r = explore(PROFILE, baseline["runs"], seed=0, dask=cluster.scheduler_address, shrink=False)
    assert r["digest"] == baseline["digest"]
    assert _fails(r) == _fails(baseline)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("jobs", [1, 2])
def test_until_first_stops_at_the_first_failing_run(jobs: int) -> None:
    full = explore(PROFILE, 200, seed=3, run_fn=fake_run, shrink=False)
    first = full["failures"][0]["run"]
    assert first < 100, "the stand-in fails often"
    r = explore(PROFILE, 200, jobs=jobs, seed=3, until_first=True, run_fn=fake_run, shrink=False)
    assert r["runs"] == first + 1
    assert _fails(r) == _fails(full)[:1]


@pytest.mark.timeout(30)
def test_explore_shrinks_the_first_failure_of_each_group() -> None:
    r = explore(PROFILE, 60, seed=3, run_fn=fake_run)
    assert len(r["groups"]) == 1  # one message kind, numbers blanked
    first, *rest = r["failures"]
    assert len(first["shrunk_steps"]) == 3  # boot, the hog, the send then exit
    assert "hog" in first["shrunk_steps"][1] + first["shrunk_steps"][2]
    assert len(first["shrunk_steps"]) <= len(first["steps"])
    small = Workload.from_json(first["shrunk_workload"])
    again = fake_run(small, PROFILE, first["seeds"]["run"])
    assert (again.outcome, signature(again.message)) == ("panic", r["groups"][0]["signature"])
    assert all(f["shrunk_steps"] is None and f["group"] == 0 for f in rest)


@pytest.mark.timeout(30)
def test_a_raising_run_is_an_error_row_not_a_crash() -> None:
    r = explore(PROFILE, 3, run_fn=raising_run)
    assert [f["outcome"] for f in r["failures"]] == ["error"] * 3
    assert r["failures"][0]["message"] == "explore: the run raised RuntimeError: boom"


def _machine(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": "123"}  # a replay must not depend on it
    cmd = [sys.executable, "-m", "machine", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


@pytest.mark.timeout(90)
def test_replay_of_a_found_failure_is_exact(baseline: dict[str, Any], tmp_path: Path) -> None:
    f = baseline["failures"][0]
    argv = shlex.split(f["replay"])
    assert argv[:2] == ["uvm-machine", "replay"]
    p = _machine(*argv[1:], "--json", "--html", str(tmp_path / "run.html"))
    assert p.returncode == 1, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got == {k: f[k] for k in ("outcome", "message", "trace_hash")}
    assert "<svg" in (tmp_path / "run.html").read_text()
    # --workload plays a given workload under run K's schedule seed: the drawn one, exactly
    w = draw(workload_rng(f["seeds"]["run"]))
    (tmp_path / "w.json").write_text(json.dumps(w.to_json()))
    p = _machine(*argv[1:], "--json", "--workload", str(tmp_path / "w.json"))
    assert json.loads(p.stdout.strip().splitlines()[-1])["trace_hash"] == f["trace_hash"]


@pytest.mark.timeout(90)
def test_cli_json_shape_and_exit_codes(baseline: dict[str, Any]) -> None:
    first = baseline["failures"][0]["run"]
    p = _machine("explore", "--profile", PROFILE, "--runs", str(first + 1), "--json")
    assert p.returncode == 1, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert {"profile", "seed", "strategy", "runs", "runs_per_min", "failures"} <= set(r)
    assert (r["profile"], r["seed"], r["runs"]) == (PROFILE, 0, first + 1)
    f = r["failures"][-1]
    want = {"run", "seeds", "outcome", "message", "replay", "steps", "shrunk_steps"}
    assert want | {"trace_hash", "revoker"} <= set(f)
    assert (f["run"], f["trace_hash"]) == (first, baseline["failures"][0]["trace_hash"])
    assert f["shrunk_steps"]
    assert len(f["shrunk_steps"]) <= len(f["steps"])
    small = run_workload(Workload.from_json(f["shrunk_workload"]), PROFILE, f["seeds"]["run"])
    assert (small.outcome, signature(small.message)) == (f["outcome"], signature(f["message"]))

    if first > 0:  # the runs before the first failure: none fails, exit 0, a table
        p = _machine("explore", "--profile", PROFILE, "--runs", str(first))
        assert p.returncode == 0, p.stderr
        assert "0 failures" in p.stdout
    for bad in (["--runs", "0"], ["--strategy", "dfs"], ["--jobs", "x"], ["--profile", "nope"]):
        assert _machine("explore", *bad).returncode == 2, bad
    assert _machine("replay", "--seed", "0").returncode == 2  # --run is required
