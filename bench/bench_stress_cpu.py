#!/usr/bin/env python3
"""The stress harness's CPU per operation against the machine's, over one window of a run.

    .venv/bin/python bench/bench_stress_cpu.py [--users 32] [--workers 2] [--seconds 10]
        [--mix pattern=3,...] [--rounds 1] [--python PY] [--json]

Runs `uvm-machine stress` headless (`--users N --spawn-rate N --workers W --run-time T`,
every user spawned within a second; the default mix unless --mix) with `--state DIR`, and
samples, from this process, the CPU (schedstat of every thread, bench_machine.cpu_ns) of
  - the machine: the supervisor and every role named in DIR/machine.json;
  - the harness: every other descendant of the stress process (the Locust master and
    workers; stress itself only waits);
at two instants of the steady part of the run. The run's start is found from the
machine: its roles' CPU is polled every 0.1 s until it passes 20 % of a core (users
attached and working); Locust's --run-time counts from the same spawn, so the window is
[start + SETTLE_S, start + T - TAIL_S]: Locust's start-up (imports, connecting) and the
teardown (detaches, frames awaited back) are outside it. Both are taken over the same
window, so the operations cancel: `ratio` = harness CPU ÷ machine CPU = the harness's
CPU per operation ÷ the machine's. The per-operation figures (µs/op) divide by the
run's whole ops/s x the window (Locust's own count; approximate). The run must hold
(exit 0: every byte verified, no failure): otherwise this raises. `--python` runs another
checkout's stress (its venv's interpreter), for before/after in one sitting.
Progress on stderr; with --json one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_machine import cpu_ns

SETTLE_S = 2.0  # after the machine gets busy: every user spawned and running
TAIL_S = 1.0  # before Locust's run-time ends
BUSY = 0.2  # cores of machine CPU that say the users are working
START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class Plan:
    users: int
    workers: int
    window_s: float  # the run-time is SETTLE_S + window_s + TAIL_S (+ 1 s slack)
    mix: str = ""
    ram: str = "64M"
    ipc: bool = False  # boot the machine here on ipc:// and attach stress to it (--endpoint)


SMOKE = Plan(users=4, workers=0, window_s=1.5)
QUICK = Plan(users=32, workers=2, window_s=8.0)
FULL = Plan(users=32, workers=2, window_s=16.0)


def children(pid: int) -> list[int]:
    """Every descendant of pid (from /proc/*/stat's ppid)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def _machine_pids(state: Path) -> dict[str, int]:
    try:
        info = json.loads((state / "machine.json").read_text())
        pids = {r: int(v["pid"]) for r, v in info["roles"].items()}
        return pids | {"supervisor": int(info["supervisor_pid"])}
    except (OSError, ValueError, KeyError):
        return {}


Sample = tuple[float, dict[str, int], dict[int, int], int]


def _sample(stress_pid: int, machine: dict[str, int]) -> Sample:
    """(time, {machine process: CPU ns}, {harness pid: CPU ns}: every other descendant,
    CPU ns of the harness's zmq I/O threads)."""
    t = time.monotonic()
    m = {r: cpu_ns(p) for r, p in machine.items()}
    mset = set(machine.values())
    harness = [p for p in children(stress_pid) if p not in mset and not _under(p, mset)]
    return t, m, {p: cpu_ns(p) for p in harness}, sum(cpu_ns(p, only_zmq=True) for p in harness)


def _label(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    kind = "worker" if b"--worker" in argv else "master" if b"locust" in argv else "other"
    return f"{kind} {pid}"


def _under(pid: int, parents: set[int]) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return int(stat.rsplit(")", 1)[1].split()[1]) in parents


def measure(pl: Plan, python: str = sys.executable, log: Any = None) -> dict[str, Any]:
    """One stress run; => ratio, the CPU of both sides over the window, the run's summary."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    run_s = SETTLE_S + pl.window_s + TAIL_S + 1.0
    tmp = Path(tempfile.mkdtemp(prefix="uvm-bench-stresscpu-"))
    state, report = tmp / "state", tmp / "report"
    cmd = [python, "-m", "machine", "stress", "--ram", pl.ram, "--state", str(state),
           "--users", str(pl.users), "--spawn-rate", str(pl.users), "--workers",
           str(pl.workers), "--run-time", f"{run_s:.0f}s", "--report", str(report),
           "--json"]  # fmt: skip
    if pl.mix:
        cmd += ["--mix", pl.mix]
    repo = Path(python).parent.parent.parent  # <repo>/.venv/bin/python: run in its checkout
    cwd = repo if (repo / "machine").is_dir() else None
    up = None
    if pl.ipc:
        up = subprocess.Popen([python, "-m", "machine", "up", "--ram", pl.ram, "--state",
                               str(state), "--endpoint", f"ipc://{tmp}/attach"],
                              stdout=subprocess.PIPE, text=True, cwd=cwd)  # fmt: skip
        assert up.stdout is not None
        line = up.stdout.readline().split()
        if line[:1] != ["attach:"]:
            up.kill()
            raise RuntimeError(f"the machine did not boot: {line}")
        cmd += ["--endpoint", line[1]]
    pr = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (machine := _machine_pids(state)) and pr.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the machine did not boot")
            time.sleep(0.1)
        last = (time.monotonic(), sum(cpu_ns(p) for p in machine.values()))
        while True:  # the users' start: the machine gets busy
            time.sleep(0.1)
            if pr.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the stress run did not start")
            now = (time.monotonic(), sum(cpu_ns(p) for p in machine.values()))
            if (now[1] - last[1]) / 1e9 / (now[0] - last[0]) > BUSY:
                break
            last = now
        start = now[0]
        time.sleep(max(0.0, start + SETTLE_S - time.monotonic()))
        t0, m0, h0, z0 = _sample(pr.pid, machine)
        time.sleep(max(0.0, start + SETTLE_S + pl.window_s - time.monotonic()))
        t1, m1, h1, z1 = _sample(pr.pid, machine)
        labels = {p: _label(p) for p in h1}
        if pr.poll() is not None:
            raise RuntimeError("the stress run ended inside the window")
        out, err = pr.communicate(timeout=run_s + 180)
    finally:
        if pr.poll() is None:
            pr.send_signal(signal.SIGTERM)  # stress stops Locust and the machine
            try:
                pr.wait(120)
            except subprocess.TimeoutExpired:
                pr.kill()
                pr.wait(5)
        if up is not None:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)
    lines = out.strip().splitlines()
    summary = json.loads(lines[-1]) if lines else {}
    if pr.returncode != 0 or summary.get("exit_status") != 0:
        raise RuntimeError(f"stress exited {pr.returncode}: {err.strip()[-800:]}")
    machine_s = sum(m1[r] - m0[r] for r in machine) / 1e9
    harness_s = sum(h1[p] - h0.get(p, 0) for p in h1) / 1e9
    per_proc = {labels[p]: (h1[p] - h0.get(p, 0)) / 1e9 for p in h1}
    ops = summary["ops_per_s"] * (t1 - t0)  # approximate: the run's mean rate
    res = {
        "ratio": harness_s / machine_s if machine_s else None,
        "window_s": t1 - t0, "harness_cpu_s": harness_s, "machine_cpu_s": machine_s,
        "roles_cpu_s": {r: (m1[r] - m0[r]) / 1e9 for r in machine},
        "harness_procs_cpu_s": per_proc,
        "harness_zmq_io_cpu_s": (z1 - z0) / 1e9,  # of harness_cpu_s: libzmq's I/O threads
        "harness_us_per_op": harness_s / ops * 1e6 if ops else None,
        "machine_us_per_op": machine_s / ops * 1e6 if ops else None,
        "ops": summary["ops"], "ops_per_s": summary["ops_per_s"],
        "corruption": summary["corruption"], "failures": summary["failures"],
        "users": pl.users, "workers": pl.workers, "mix": pl.mix or "default",
        "command": " ".join(cmd[1:]),
    }  # fmt: skip
    say(f"   stress x{pl.users} w{pl.workers}: harness {harness_s:.2f} s ÷ machine "
        f"{machine_s:.2f} s CPU over {t1 - t0:.1f} s = {res['ratio']:.3f}; "
        f"{summary['ops']} ops verified, {summary['ops_per_s']} ops/s")  # fmt: skip
    return res


def why(res: dict[str, Any]) -> str:
    """The raw figures behind a ratio, for a table."""
    return (f"{res['harness_cpu_s']:.3g} ÷ {res['machine_cpu_s']:.3g} s CPU over "
            f"{res['window_s']:.3g} s, {res['ops']} ops verified")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--users", type=int, default=QUICK.users)
    ap.add_argument("--workers", type=int, default=QUICK.workers)
    ap.add_argument("--seconds", type=float, default=QUICK.window_s, help="the window")
    ap.add_argument("--mix", default="")
    ap.add_argument("--ram", default="64M")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--python", default=sys.executable, help="whose `machine stress` to run")
    ap.add_argument("--ipc", action="store_true", help="the machine on ipc://, not tcp://")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    pl = Plan(a.users, a.workers, a.seconds, a.mix, a.ram, a.ipc)
    runs = [measure(pl, a.python) for _ in range(a.rounds)]
    res = {"ratio": statistics.median(r["ratio"] for r in runs), "runs": runs,
           "loadavg": os.getloadavg()}  # fmt: skip
    print(json.dumps(res) if a.json else f"ratio {res['ratio']:.3f} (median of {a.rounds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
