#!/usr/bin/env python3
"""Seeded exploration's throughput: `uvm-machine explore` runs a minute, as it reports them.

    .venv/bin/python bench/bench_explore.py [--runs N] [--jobs J] [--seed S]

Runs `uvm-machine explore --profile modern --runs N --jobs J --seed S --no-shrink --json`
(the default workload, random strategy) in a child process and reads its report:
`runs_per_min` is the explorer's own (runs over the runs phase's wall time, the worker
pool's start included, shrinking not run), `digest` names the runs (the same seeds give the
same digest on any tree that keeps runs replayable). `bench summary` reports it as
`explore_runs_per_min` (issue 22's aim: at least 4,000 with --jobs 2), RUNS[mode] runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROFILE = "modern"
JOBS = 2
RUNS = {"smoke": 24, "quick": 600, "full": 2000}  # runs per bench summary mode
TIMEOUT_S = 1800


def command(runs: int, jobs: int = JOBS, seed: int = 0) -> list[str]:
    return [sys.executable, "-m", "machine", "explore", "--profile", PROFILE, "--runs",
            str(runs), "--jobs", str(jobs), "--seed", str(seed), "--no-shrink",
            "--json"]  # fmt: skip


def measure(runs: int, jobs: int = JOBS, seed: int = 0) -> dict[str, Any]:
    """One explore run of `runs` seeded runs. => runs_per_min and what stands behind it.
    Raises if the command printed no report (a failing run is a report, exit status 1)."""
    cmd = command(runs, jobs, seed)
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S,
                       check=False)  # fmt: skip
    wall = time.monotonic() - t0
    lines = r.stdout.strip().splitlines()
    if r.returncode not in (0, 1) or not lines:
        raise RuntimeError(f"explore exited {r.returncode}: {r.stderr[-2000:]}")
    rep = json.loads(lines[-1])
    return {
        "runs_per_min": float(rep["runs_per_min"]),
        "runs": rep["runs"],
        "jobs": jobs,
        "elapsed_s": rep["elapsed_s"],  # the runs phase, as explore measures it
        "command_wall_s": round(wall, 2),  # with the interpreter's start and the report
        "outcomes": rep["outcomes"],
        "digest": rep["digest"],
        "command": " ".join(["uvm-machine", *cmd[3:]]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--runs", type=int, default=RUNS["quick"])
    ap.add_argument("--jobs", type=int, default=JOBS)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(json.dumps(measure(a.runs, a.jobs, a.seed)))


if __name__ == "__main__":
    main()
