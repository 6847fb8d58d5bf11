"""Many seeded runs: seeds per run, worker processes or a Dask cluster, failures grouped and shrunk.

    report = explore("bug1999", runs=400, jobs=2, seed=0, strategy="pct")
    report["failures"][0]["replay"]   # uvm-machine replay --profile bug1999 --seed 0 --run 17 ...

Run k of seed S is a pure function of (S, k, profile, strategy, depth):
run_seed(S, k) (blake2b of "S:k") gives the run's seed; the workload is
drawn from Random(f"w:{seed}") and the schedule from the same seed inside
run.run_workload (its own "s:" stream). No run reads the wall clock, a
set's iteration order of str or a previous run's state, so where it runs
(this process, a worker of a `multiprocess` pool, a Dask worker) cannot
change its outcome, message or trace hash. Workers are spawned (not forked)
with PYTHONHASHSEED=0 in their environment anyway.

Invariants of a report:
  - results are in run order whatever the completion order; `--until-first`
    stops at the first failing run *in run order* (every run before it
    done, the rest cancelled), so it finds the same run with 1 or J jobs;
  - a failure's `replay` is a command line that reproduces it exactly
    (same outcome, message, trace hash); its `shrunk_workload` replayed under
    the same run seed (`replay --workload FILE`) fails the same way;
  - failures are grouped by failure_kind: outcome, signature(message) (the
    message with numbers and addresses blanked, its first 60 characters) and
    the revoker of a revoked kernel mapping; the same kind is what a shrunk
    candidate must keep ("still fails"). Only the first failure of each
    group is shrunk (the others repeat it; shrinking costs up to
    shrink.MAX_RUNS re-runs); every failure carries its group's index;
  - `runs_per_min` counts the runs phase only (not shrinking).

A pool worker imports the run's modules and freezes what they made (`gc.freeze`, in
_worker_init) before its first run: the collector then never walks the modules' own
objects again, only what runs allocate (a full collection was ~5 % of a run).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import shlex
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from random import Random
from typing import Any

from machine.explore.shrink import MAX_RUNS, shrink, signature

OK = "ok"
#: the runs a worker takes at once (a pool's imap chunk); small, so --until-first wastes little
CHUNK_MAX = 8

DrawFn = Callable[[Random], Any]
RunFn = Callable[..., Any]


def run_seed(seed: int, run: int) -> int:
    """=> run `run`'s seed under exploration seed `seed` (64 bits, the same in every process)."""
    digest = hashlib.blake2b(f"{seed}:{run}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def workload_rng(rs: int) -> Random:
    """=> the stream the workload of the run with seed `rs` is drawn from."""
    return Random(f"w:{rs}")


@dataclass(frozen=True)
class Spec:
    """One run, as sent to a worker: everything that decides it (and the stand-ins of tests)."""

    profile: str
    seed: int
    run: int
    strategy: str
    depth: int
    draw_fn: DrawFn | None = None
    run_fn: RunFn | None = None


def _machine(spec: Spec) -> tuple[DrawFn, RunFn]:
    """=> the workload drawer and the run function: the real ones unless a test gave stand-ins."""
    draw_fn, run_fn = spec.draw_fn, spec.run_fn
    if draw_fn is None:
        from machine.explore.workload import draw

        draw_fn = draw
    if run_fn is None:
        from machine.explore.run import run_workload

        run_fn = run_workload
    return draw_fn, run_fn


#: one run at a time per process: a Dask worker runs tasks on a thread pool, and a run's
#: module-level state (ids, caches) must not interleave with another's
_ONE_RUN = threading.Lock()


def result_row(run: int, r: Any) -> dict[str, Any]:
    """=> a RunResult as a plain dict (what crosses process boundaries)."""
    return {
        "run": run,
        "outcome": r.outcome,
        "message": r.message,
        "trace_hash": r.trace_hash,
        "revoker": getattr(r, "revoker", ""),
        "deliveries": getattr(r, "deliveries", 0),
        "virtual_s": getattr(r, "virtual_s", 0.0),
    }


def run_one(spec: Spec) -> dict[str, Any]:
    """Run one seeded run. => its row: run, outcome, message, trace_hash, revoker, ...

    Module-level, so a pool (dill) and Dask (cloudpickle) send it by reference.
    A run function that raises is a harness bug, reported as an `error` row."""
    draw_fn, run_fn = _machine(spec)
    rs = run_seed(spec.seed, spec.run)
    return play(run_fn, draw_fn(workload_rng(rs)), spec, rs)


def play(run_fn: RunFn, w: Any, spec: Spec, rs: int) -> dict[str, Any]:
    """Run workload `w` under run seed `rs` (one run at a time in this process). => its row."""
    with _ONE_RUN:
        try:
            r = run_fn(w, spec.profile, rs, spec.strategy, spec.depth)
        except Exception as e:
            return {
                "run": spec.run,
                "outcome": "error",
                "message": f"explore: the run raised {type(e).__name__}: {e}",
                "trace_hash": "",
                "revoker": "",
                "deliveries": 0,
                "virtual_s": 0.0,
            }
    return result_row(spec.run, r)


@contextlib.contextmanager
def _hashseed_zero() -> Iterator[None]:
    """PYTHONHASHSEED=0 in the environment the pool's workers are spawned with."""
    old = os.environ.get("PYTHONHASHSEED")
    os.environ["PYTHONHASHSEED"] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["PYTHONHASHSEED"]
        else:
            os.environ["PYTHONHASHSEED"] = old


def _stop_at_first(rows: Iterator[dict[str, Any]], until_first: bool) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        out.append(row)
        if until_first and row["outcome"] != OK:
            break
    return out


def _run_local(specs: list[Spec], until_first: bool) -> list[dict[str, Any]]:
    return _stop_at_first((run_one(s) for s in specs), until_first)


def _worker_init() -> None:
    """A pool worker, before its first run: import the machine (the roles' services too, which
    a boot would import), freeze what exists."""
    import importlib

    import machine.explore.run
    import machine.explore.workload  # noqa: F401

    for role in ("mmu", "uvm", "pdaemon", "net"):
        importlib.import_module(f"machine.{role}.service")
    gc.collect()
    gc.freeze()


def _run_pool(specs: list[Spec], jobs: int, until_first: bool) -> list[dict[str, Any]]:
    """J spawned workers; imap keeps run order, so the first failure seen is the lowest run."""
    import multiprocess

    chunk = max(1, min(CHUNK_MAX, len(specs) // (jobs * 8)))
    with _hashseed_zero():
        pool = multiprocess.get_context("spawn").Pool(processes=jobs, initializer=_worker_init)
    try:
        rows = _stop_at_first(pool.imap(run_one, specs, chunksize=chunk), until_first)
        if len(rows) < len(specs):
            pool.terminate()  # --until-first: cancel the rest
        else:
            pool.close()
        pool.join()
        return rows
    finally:
        pool.terminate()


def _run_dask(specs: list[Spec], address: str, until_first: bool) -> list[dict[str, Any]]:
    """The same run function on a Dask cluster; results read in run order."""
    import distributed

    connect: Any = distributed.Client  # untyped
    with connect(address) as client:
        futures = client.map(run_one, specs, pure=False)
        rows: list[dict[str, Any]] = []
        for i, fut in enumerate(futures):
            rows.append(fut.result())
            if until_first and rows[-1]["outcome"] != OK:
                client.cancel(futures[i + 1 :])
                break
        return rows


def failure_kind(row: dict[str, Any]) -> tuple[str, str, str]:
    """=> what makes two failures the same: outcome, signature(message), revoker."""
    return (row["outcome"], signature(row["message"]), row["revoker"])


def digest_of(rows: list[dict[str, Any]]) -> str:
    """=> one hash of every run's trace hash, in run order (equal reports <=> equal runs)."""
    h = hashlib.blake2b(digest_size=16)
    for row in rows:
        h.update(f"{row['run']}:{row['outcome']}:{row['trace_hash']};".encode())
    return h.hexdigest()


def replay_command(profile: str, seed: int, run: int, strategy: str, depth: int) -> str:
    """=> the command line that replays run `run` of seed `seed` exactly."""
    args = ["uvm-machine", "replay", "--profile", profile, "--seed", str(seed), "--run", str(run)]
    args += ["--strategy", strategy, "--depth", str(depth)]
    return shlex.join(args)


def _failure(
    row: dict[str, Any], spec: Spec, group: int, shrink_it: bool, draw_fn: DrawFn, run_fn: RunFn
) -> dict[str, Any]:
    rs = run_seed(spec.seed, row["run"])
    w = draw_fn(workload_rng(rs))
    f: dict[str, Any] = {
        "run": row["run"],
        "seeds": {"run": rs, "workload": f"w:{rs}", "schedule": f"s:{rs}"},
        "outcome": row["outcome"],
        "message": row["message"],
        "replay": replay_command(spec.profile, spec.seed, row["run"], spec.strategy, spec.depth),
        "steps": w.steps(),
        "shrunk_steps": None,
        "shrunk_workload": None,
        "shrink_runs": 0,
        "trace_hash": row["trace_hash"],
        "revoker": row["revoker"],
        "group": group,
    }
    if shrink_it:
        want = failure_kind(row)
        count = 0

        def still_fails(cand: Any) -> bool:
            nonlocal count
            count += 1
            return failure_kind(play(run_fn, cand, spec, rs)) == want

        small = shrink(w, still_fails, max_runs=MAX_RUNS)
        f["shrunk_steps"] = small.steps()
        f["shrunk_workload"] = small.to_json()
        f["shrink_runs"] = count
    return f


def explore(
    profile: str,
    runs: int,
    jobs: int = 1,
    seed: int = 0,
    strategy: str = "random",
    depth: int = 3,
    until_first: bool = False,
    dask: str | None = None,
    shrink: bool = True,
    draw_fn: DrawFn | None = None,
    run_fn: RunFn | None = None,
) -> dict[str, Any]:
    """Runs 0..runs-1 of `seed`: J local workers (1: this process) or the Dask cluster at `dask`.

    `draw_fn`/`run_fn` replace workload.draw/run.run_workload (tests' stand-ins; module-level
    functions, so workers can import them). => the report (module docstring; JSON-ready)."""
    specs = [Spec(profile, seed, k, strategy, depth, draw_fn, run_fn) for k in range(runs)]
    t0 = time.monotonic()
    if dask:
        rows = _run_dask(specs, dask, until_first)
    elif jobs > 1:
        rows = _run_pool(specs, jobs, until_first)
    else:
        rows = _run_local(specs, until_first)
    elapsed = time.monotonic() - t0
    real_draw, real_run = _machine(Spec(profile, seed, 0, strategy, depth, draw_fn, run_fn))
    failures: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    index: dict[tuple[str, str, str], int] = {}
    for row in rows:
        if row["outcome"] == OK:
            continue
        key = failure_kind(row)
        first = key not in index
        if first:
            index[key] = len(groups)
            groups.append({"outcome": key[0], "signature": key[1], "revoker": key[2], "runs": []})
        g = index[key]
        groups[g]["runs"].append(row["run"])
        failures.append(_failure(row, specs[row["run"]], g, shrink and first, real_draw, real_run))
    return {
        "profile": profile,
        "seed": seed,
        "strategy": strategy,
        "depth": depth,
        "runs": len(rows),
        "jobs": jobs,
        "dask": dask,
        "elapsed_s": round(elapsed, 3),
        "runs_per_min": round(len(rows) * 60.0 / elapsed, 1) if elapsed > 0 else 0.0,
        "failures": failures,
        "groups": groups,
        "outcomes": dict(sorted(Counter(row["outcome"] for row in rows).items())),
        "digest": digest_of(rows),
    }
