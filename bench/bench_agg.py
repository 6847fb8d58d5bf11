#!/usr/bin/env python3
"""Many clients at once: aggregate first-touch faults/s and stores/s, against an echo.

    .venv/bin/python bench/bench_agg.py [--clients 16] [--seconds 2] [--rounds 3]

Boots a real machine (`uvm-machine up`, as bench_machine.py does) and an echo server on
the roles' own transport (ZmqTransport.bind with a plain handler), then starts N client
processes. Each client attaches, spawns one emulated process, maps fresh pages and keeps
one operation in flight. In rounds, all N clients run each phase together for S seconds
(they start at the same CLOCK_MONOTONIC instant):
  * echo: round trips to the echo server (16 clients to a trivial echo: the transport's
    own aggregate);
  * fault: a 1-byte store to a never-touched page (a first-touch fault each);
  * store: a 1-byte store to one of 64 mapped pages.
Printed per phase: aggregate ops/s (the sum of each client's ops / its elapsed time; the
median over rounds) and CPU µs per operation of the mmu and uvm processes (all threads,
schedstat) and of the clients together. `agg_fault_ratio` = faults/s ÷ echo round trips/s.
The last stdout line is one JSON object. The host is shared: compare trees in one session,
alternating (PYTHONPATH=<other tree>).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_machine import EchoClient, booted_machine, cpu_ns, echo_server

from machine.client import Machine
from machine.params import PAGE_SIZE

PHASES = ("echo", "fault", "store")
MAPPED = 64


async def client(machine_ep: str, echo_ep: str, fault_pages: int) -> None:
    """A client process: reads `PHASE START_AT SECONDS` lines, answers `{"n":, "s":}`."""
    echo = await EchoClient().open(echo_ep)
    async with Machine.attach(machine_ep) as m:
        p = await m.spawn()
        mapped = await p.mmap(MAPPED * PAGE_SIZE)
        await p.touch(mapped, MAPPED)
        fresh, used = await p.mmap(fault_pages * PAGE_SIZE), 0
        loop = asyncio.get_running_loop()
        print("ready", flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            phase, at, secs = line.split()
            await asyncio.sleep(max(0.0, float(at) - time.monotonic()))
            t0 = time.monotonic()
            end, n = t0 + float(secs), 0
            while time.monotonic() < end:
                if phase == "echo":
                    await echo.one(n)
                elif phase == "store":
                    await p.store(mapped + (n % MAPPED) * PAGE_SIZE + 8, b"y")
                else:
                    if used == fault_pages:
                        break
                    await p.store(fresh + used * PAGE_SIZE, b"x")
                    used += 1
                n += 1
            print(json.dumps({"n": n, "s": time.monotonic() - t0}), flush=True)
        await p.exit()
    await echo.close()


def phase(procs: list[subprocess.Popen[str]], ph: str, seconds: float) -> list[Any]:
    """Run one phase on every client process at once (they start at one CLOCK_MONOTONIC
    instant, 0.3 s from now). => each client's {"n": ops, "s": seconds}."""
    at = time.monotonic() + 0.3
    for pr in procs:
        assert pr.stdin is not None
        pr.stdin.write(f"{ph} {at} {seconds}\n")
        pr.stdin.flush()
    outs = []
    for pr in procs:
        assert pr.stdout is not None
        outs.append(json.loads(pr.stdout.readline()))
    return outs


def run(clients: int, seconds: float, rounds: int, phases: tuple[str, ...]) -> dict[str, Any]:
    fault_pages = 3000  # x 16 clients: 187 MiB of a 256 MiB machine, no paging
    res: dict[str, Any] = {"clients": clients, "seconds": seconds, "rounds": rounds}
    with echo_server("transport") as (echo_ep, echo_pid), booted_machine() as (ep, info):
        roles = {r: int(v["pid"]) for r, v in info["roles"].items() if r in ("mmu", "uvm")}
        roles["echo"] = echo_pid
        cmd = [sys.executable, str(Path(__file__).resolve()), "--client", ep, echo_ep,
               str(fault_pages)]  # fmt: skip
        procs = [
            subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(clients)
        ]
        try:
            for pr in procs:
                assert pr.stdout is not None
                if pr.stdout.readline().strip() != "ready":
                    raise RuntimeError("a client did not start")
            rates: dict[str, list[float]] = {ph: [] for ph in phases}
            cpu: dict[str, list[dict[str, float]]] = {ph: [] for ph in phases}
            for r in range(rounds):
                for ph in phases:
                    pids = {**roles, "clients": 0}
                    c0 = {k: cpu_ns(v) for k, v in roles.items()}
                    k0 = sum(cpu_ns(pr.pid) for pr in procs)
                    outs = phase(procs, ph, seconds)
                    c1 = {k: cpu_ns(v) for k, v in roles.items()}
                    k1 = sum(cpu_ns(pr.pid) for pr in procs)
                    n = sum(o["n"] for o in outs)
                    rates[ph].append(sum(o["n"] / o["s"] for o in outs))
                    per = {k: (c1[k] - c0[k]) / n / 1e3 for k in pids if k != "clients"}
                    per["clients"] = (k1 - k0) / n / 1e3
                    cpu[ph].append(per)
                    print(f"round {r + 1} {ph}: {rates[ph][-1]:.0f}/s "
                          f"cpu µs/op {json.dumps({k: round(v) for k, v in per.items()})}",
                          file=sys.stderr)  # fmt: skip
        finally:
            for pr in procs:
                if pr.stdin is not None:
                    pr.stdin.close()
            for pr in procs:
                try:
                    pr.wait(20)
                except subprocess.TimeoutExpired:
                    pr.kill()
                    pr.wait(5)
    for ph in phases:
        res[ph] = {
            "ops_s": statistics.median(rates[ph]),
            "cpu_us_per_op": {k: statistics.median(c[k] for c in cpu[ph]) for k in cpu[ph][0]},
        }
    if "echo" in res:
        for ph in ("fault", "store"):
            if ph in res:
                res[f"agg_{ph}_ratio"] = res[ph]["ops_s"] / res["echo"]["ops_s"]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--phases", default=",".join(PHASES), help="of echo,fault,store")
    ap.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.client:
        asyncio.run(client(a.client[0], a.client[1], int(a.client[2])))
        return 0
    phases = tuple(ph for ph in a.phases.split(",") if ph in PHASES)
    res = run(a.clients, a.seconds, a.rounds, phases)
    for ph in phases:
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in res[ph]["cpu_us_per_op"].items())
        print(f"{ph:6} {res[ph]['ops_s']:8.0f} ops/s   CPU µs/op: {cpu}")
    for k in ("agg_fault_ratio", "agg_store_ratio"):
        if k in res:
            print(f"{k} {res[k]:.3f}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
