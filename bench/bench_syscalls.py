#!/usr/bin/env python3
"""System calls and CPU per first-touch fault, counted in the mmu (or another role).

    .venv/bin/python bench/bench_syscalls.py [--faults N] [--role mmu] [--thread-only | --no-strace]

Boots `uvm-machine up`, maps fresh pages, warms up, then attaches `strace -c -f -p PID`
(`--thread-only`: no -f, the role's main thread alone, without libzmq's I/O thread) for
a loop of N first-touch faults (1-byte stores to never-touched pages, one at a time), and
prints each system call's count per fault, the role's and uvm's CPU µs per fault
(schedstat, every thread; strace inflates them: --no-strace to compare CPU) and the
fault's p50 (under strace: slow). Counts are the figure to compare: they do not depend on the
host's load. Needs strace (apt). UVM_MACHINE_LOOP=asyncio|uvloop picks the roles' loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import bench_machine as bm  # bench/ is on sys.path (bench/__init__.py, or run as a script)

from machine.client import Machine
from machine.ipc import eventloop as el
from machine.params import PAGE_SIZE

WARM = 200


def parse(strace_c: str) -> dict[str, int]:
    """strace -c's table => {syscall: calls}."""
    out: dict[str, int] = {}
    for line in strace_c.splitlines():
        p = line.split()
        if len(p) >= 5 and p[-1].isidentifier() and p[-1] != "total" and p[0][0].isdigit():
            calls = p[3]
            if calls.isdigit():
                out[p[-1]] = int(calls)
    return out


async def faults(
    ep: str, info: dict[str, Any], n: int, role: str, threads: bool | None
) -> dict[str, Any]:
    """threads: strace every thread of role (True), its main thread (False), none (None)."""
    pids = {r: int(v["pid"]) for r, v in info["roles"].items() if r in (role, "uvm")}
    async with Machine.attach(ep) as m:
        p = await m.spawn()
        fresh = await p.mmap((n + WARM) * PAGE_SIZE)
        for i in range(WARM):
            await p.store(fresh + i * PAGE_SIZE, b"x")
        cmd = ["strace", "-c", *(["-f"] if threads else []), "-p", str(pids[role])]
        st = None
        if threads is not None:
            st = await asyncio.create_subprocess_exec(*cmd, stderr=subprocess.PIPE)
            assert st.stderr is not None
            banner = await st.stderr.readline()  # "strace: Process PID attached"
            if b"attached" not in banner:
                raise RuntimeError(f"strace did not attach: {banner!r}")
        c0 = {r: bm.cpu_ns(q) for r, q in pids.items()}
        lat = []
        for i in range(WARM, WARM + n):
            t = time.perf_counter_ns()
            await p.store(fresh + i * PAGE_SIZE, b"x")
            lat.append(time.perf_counter_ns() - t)
        c1 = {r: bm.cpu_ns(q) for r, q in pids.items()}
        err = b""
        if st is not None:
            st.send_signal(2)
            _, err = await asyncio.wait_for(st.communicate(), 30)
        await p.exit()
    calls = parse(err.decode())
    return {
        "role": role, "faults": n, "loop": el.loop_factory()[0],
        "strace": {True: "all threads", False: "main thread", None: "off"}[threads],
        "per_fault": {k: round(v / n, 2) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])
                      if v / n >= 0.05},
        "total_per_fault": round(sum(calls.values()) / n, 1),
        "cpu_us_per_fault": {r: round((c1[r] - c0[r]) / n / 1e3, 1) for r in pids},
        "fault_p50_us": round(statistics.median(lat) / 1e3, 1),
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--faults", type=int, default=2000)
    ap.add_argument("--role", default="mmu")
    ap.add_argument("--thread-only", action="store_true", help="the main thread alone")
    ap.add_argument("--no-strace", action="store_true", help="CPU and latency only")
    a = ap.parse_args(argv)
    threads = None if a.no_strace else not a.thread_only
    with bm.booted_machine() as (ep, info):
        res = asyncio.run(faults(ep, info, a.faults, a.role, threads))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
