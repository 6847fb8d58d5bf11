"""The summary's report: the host it ran on, and its table (bench/summary.py runs the measures)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bench_stress_cpu as bs
import zmq


def host(root: Path) -> dict[str, Any]:
    """=> where and what the run measures: commit, edits since, CPUs, versions, load."""

    def git(*a: str) -> str:
        r = subprocess.run(["git", "--no-optional-locks", *a], cwd=root, capture_output=True,
                           text=True, check=False, timeout=30)  # fmt: skip
        return r.stdout.strip() if r.returncode == 0 else ""

    changed = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": git("rev-parse", "--short=12", "HEAD") or "unknown",
        "changed_files": len(changed.splitlines()),  # tracked files edited since the commit
        "cpus": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "loadavg_before": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def report(res: dict[str, Any], keys: Sequence[str]) -> str:
    """=> the summary as a Markdown table: each key's ratio and the raw numbers behind it."""

    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.3g}"

    raw = res["raw"]
    lat, agg, w, st = raw["latency"] or {}, raw["aggregate"] or {}, raw["wire_4M"], raw["stress"]
    why = {
        "fault_over_rtt": f"{f(lat.get('fault_p50_us'))} ÷ {f(lat.get('raw_p50_us'))} µs",
        "store_over_rtt": f"{f(lat.get('store_p50_us'))} ÷ {f(lat.get('raw_p50_us'))} µs",
        "agg_fault_ratio": f"{f(agg.get('faults_per_s'))} faults/s ÷ "
        f"{f(agg.get('echo_rt_per_s'))} rt/s, {agg.get('clients')} processes",
        "loan_over_wire_4M": f"÷ raw wire {f(w['mb_s'])} MB/s",
        "copy_over_wire_4M": f"÷ raw wire {f(w['mb_s'])} MB/s",
        "pageout_mb_s": "",
        "thrash_slowdown": "µs/page 2x RAM ÷ 0.5x RAM",
        "stress_client_over_machine_cpu": bs.why(st) if st else "",
        "explore_runs_per_min": f"{(raw.get('explore') or {}).get('runs')} runs, --jobs 2",
    }
    rows = [f"| {k} | {f(res[k])} | {why[k]} |" for k in keys]
    net = raw["net"]
    for n, v in res["loan_over_copy"].items():
        mb = f"{f(net['loan'][n]['mb_s'])} ÷ {f(net['copy'][n]['mb_s'])} MB/s" if net else ""
        rows.append(f"| loan_over_copy {n} | {f(v)} | {mb} |")
    h = res["host"]
    head = (
        f"# bench summary ({res['mode']}), {h['started']}, commit {res['commit']} "
        f"(+{h['changed_files']} files changed), {h['cpus']} CPUs, {res['elapsed_s']} s\n"
    )
    fails = [f"\nFAILED: {x}" for x in res["failures"]]
    return "\n".join([head, "| measure | ratio | raw |", "|---|---|---|", *rows, *fails])
