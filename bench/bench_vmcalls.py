#!/usr/bin/env python3
"""What the VM calls of NetBSD programs buy, over real processes (`uvm-machine up`).

    .venv/bin/python bench/bench_vmcalls.py [--quick] [--json]

Every figure is a ratio of two measures taken in the same run, rounds alternating:
 1. the fault-ahead window of madvise: a file of N pages is made resident by one
    process; then, per round and per advice (MADV_RANDOM, MADV_NORMAL,
    MADV_SEQUENTIAL, in rotating order), a fresh process maps it private read-only,
    gives the advice and loads all of it (one CPU access per MAX_ACCESS_BYTES, page by
    page): traps per page (the window's effect: RANDOM 1, NORMAL about 1/5, SEQUENTIAL
    about 1/8 of the pages) and µs per page, each ÷ RANDOM's;
 2. MADV_WILLNEED: a fresh file per round (never resident), mapped and loaded whole,
    with and without MADV_WILLNEED first (the advice's own time included): µs per page
    ÷ without;
 3. MAP_FIXED replacing a resident mapping of 16 pages in one call ÷ munmap then mmap
    (two calls), µs;
 4. mincore of 1024 resident pages: µs per call and per page.
JSON (--json) last on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench_uvm import booted  # bench/ is on sys.path when run as a script

from machine.client import (
    MADV_NORMAL,
    MADV_RANDOM,
    MADV_SEQUENTIAL,
    MADV_WILLNEED,
    Machine,
)
from machine.params import PAGE_SIZE

ADVICE = {"random": MADV_RANDOM, "normal": MADV_NORMAL, "sequential": MADV_SEQUENTIAL}
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:5.1f}s] {msg}", file=sys.stderr, flush=True)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


async def window(m: Machine, npages: int, rounds: int) -> dict[str, Any]:
    """Section 1: traps and µs per page of a whole load, per advice."""
    f = await m.open("bench-window.bin", create=True, size=npages * PAGE_SIZE)
    warm = await m.spawn()
    wva = await warm.mmap(npages * PAGE_SIZE, "r", file=f, shared=True)
    await warm.load(wva, npages * PAGE_SIZE)  # every page resident in the object
    traps: dict[str, list[float]] = {a: [] for a in ADVICE}
    us: dict[str, list[float]] = {a: [] for a in ADVICE}
    names = list(ADVICE)
    for r in range(rounds):
        for a in names[r % 3 :] + names[: r % 3]:
            p = await m.spawn()
            va = await p.mmap(npages * PAGE_SIZE, "r", file=f)
            await p.madvise(va, npages * PAGE_SIZE, ADVICE[a])
            t = time.perf_counter()
            await p.load(va, npages * PAGE_SIZE)
            us[a].append((time.perf_counter() - t) * 1e6 / npages)
            traps[a].append(p.faults / npages)
            await p.exit()
    await warm.exit()
    await f.close()
    out: dict[str, Any] = {}
    for a in ADVICE:
        out[a] = {
            "traps_per_page": med(traps[a]),
            "us_per_page": med(us[a]),
            "traps_vs_random": med(traps[a]) / med(traps["random"]),
            "time_vs_random": med(us[a]) / med(us["random"]),
        }
    return out


async def willneed(m: Machine, npages: int, rounds: int) -> dict[str, Any]:
    """Section 2: a cold file loaded whole, with and without MADV_WILLNEED first."""
    us: dict[str, list[float]] = {"plain": [], "willneed": []}
    for r in range(rounds):
        for mode in ("plain", "willneed") if r % 2 == 0 else ("willneed", "plain"):
            f = await m.open(f"bench-cold-{r}-{mode}.bin", create=True, size=npages * PAGE_SIZE)
            p = await m.spawn()
            va = await p.mmap(npages * PAGE_SIZE, "r", file=f)
            t = time.perf_counter()
            if mode == "willneed":
                await p.madvise(va, npages * PAGE_SIZE, MADV_WILLNEED)
            await p.load(va, npages * PAGE_SIZE)
            us[mode].append((time.perf_counter() - t) * 1e6 / npages)
            await p.exit()
            await f.close()
    return {
        "plain_us_per_page": med(us["plain"]),
        "willneed_us_per_page": med(us["willneed"]),
        "willneed_vs_plain": med(us["willneed"]) / med(us["plain"]),
    }


async def fixed(m: Machine, rounds: int) -> dict[str, Any]:
    """Section 3: MAP_FIXED over a resident mapping vs munmap + mmap."""
    n = 16 * PAGE_SIZE
    p = await m.spawn()
    va = await p.mmap(n, "rw")
    us: dict[str, list[float]] = {"fixed": [], "unmap_map": []}
    for r in range(rounds):
        for mode in ("fixed", "unmap_map") if r % 2 == 0 else ("unmap_map", "fixed"):
            await p.touch(va, 16)
            t = time.perf_counter()
            if mode == "fixed":
                await p.mmap(n, "rw", va=va, fixed=True)
            else:
                await p.munmap(va, n)
                await p.mmap(n, "rw", va=va, fixed=True)
            us[mode].append((time.perf_counter() - t) * 1e6)
    await p.exit()
    return {
        "fixed_us": med(us["fixed"]),
        "unmap_map_us": med(us["unmap_map"]),
        "fixed_vs_unmap_map": med(us["fixed"]) / med(us["unmap_map"]),
    }


async def mincore(m: Machine, rounds: int) -> dict[str, Any]:
    """Section 4: mincore of 1024 resident pages."""
    n = 1024
    p = await m.spawn()
    va = await p.mmap(n * PAGE_SIZE, "rw")
    await p.mlock(va, n * PAGE_SIZE)  # resident, and staying so
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        vec = await p.mincore(va, n * PAGE_SIZE)
        times.append((time.perf_counter() - t) * 1e6)
        assert vec == b"\x01" * n, "mincore: a wired page is not resident"
    await p.exit()
    return {"pages": n, "us_per_call": med(times), "us_per_page": med(times) / n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer pages and rounds")
    ap.add_argument("--json", action="store_true", help="one JSON object last on stdout")
    a = ap.parse_args(argv)
    npages, rounds = (256, 3) if a.quick else (2048, 9)
    with booted("256M") as mach:

        async def run() -> dict[str, Any]:
            async with Machine.attach(mach["endpoint"], timeout_s=120) as m:
                log(f"madvise window: {npages} pages x {rounds} rounds")
                w = await window(m, npages, rounds)
                log("MADV_WILLNEED")
                wn = await willneed(m, npages, rounds)
                log("MAP_FIXED")
                fx = await fixed(m, rounds * 20)
                log("mincore")
                mc = await mincore(m, rounds * 20)
                return {"window": w, "willneed": wn, "fixed": fx, "mincore": mc}

        res = asyncio.run(run())
    res |= {
        "pages": npages,
        "rounds": rounds,
        "command": " ".join(["bench_vmcalls.py", *sys.argv[1:]]),
    }
    for k, v in res["window"].items():
        log(
            f"{k:>10}: {v['traps_per_page']:.3f} traps/page "
            f"({v['traps_vs_random']:.2f} of random), {v['us_per_page']:.1f} µs/page "
            f"({v['time_vs_random']:.2f} of random)"
        )
    log(f"WILLNEED: {res['willneed']['willneed_vs_plain']:.2f} of the time without")
    log(f"MAP_FIXED: {res['fixed']['fixed_vs_unmap_map']:.2f} of munmap+mmap")
    log(f"mincore: {res['mincore']['us_per_call']:.0f} µs per 1024 pages")
    if a.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
