"""First-touch faults on the in-process machine: the handlers' and the event loop's cost.

    .venv/bin/python bench/bench_sim_faults.py [--faults N] [--profile]

Boots a SimMachine (64 MiB, zero transport latency), maps N pages, warms up on 200, and
times one 1-byte store per new page (each a first-touch fault: mmu.store trap, uvm.fault
with its pmap.enter, the retried store) in wall-clock time. --profile prints the 25
functions with the most own time under cProfile instead. Compare trees by alternating
runs in one session (PYTHONPATH=<other tree>): single runs vary by 15 % here.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from machine.ipc.inmemory import run_simulation
from machine.testing import SimMachine

WARMUP = 200


async def faults(n: int, profile: bool) -> float:
    async with (
        SimMachine.boot(seed=1, ram_bytes=64 << 20, latency_s=(0, 0)) as sim,
        sim.attach() as m,
    ):
        p = await m.spawn()
        va = await p.mmap((n + WARMUP) * 4096, "rw")
        for i in range(WARMUP):
            await p.store(va + i * 4096, b"x")
        pr = cProfile.Profile() if profile else None
        t0 = time.perf_counter()
        if pr is not None:
            pr.enable()
        for i in range(WARMUP, WARMUP + n):
            await p.store(va + i * 4096, b"x")
        if pr is not None:
            pr.disable()
            pstats.Stats(pr).sort_stats("tottime").print_stats(25)
        return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faults", type=int, default=2800)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    per = run_simulation(faults(a.faults, a.profile))
    print(f"{a.faults} first-touch faults in memory: {per * 1e6:.1f} µs each")


if __name__ == "__main__":
    main()
