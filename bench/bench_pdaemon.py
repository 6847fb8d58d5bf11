#!/usr/bin/env python3
"""Page daemon: swap throughput, scan rate and the slowdown of a working set larger than RAM.

    .venv/bin/python bench/bench_pdaemon.py [--quick] [--json PATH]

On a real machine (`uvm-machine up --ram 16M --swap 128M`, tcp; --quick: 4M / 32M):
 1. one client stores W MiB into anonymous memory, one full 4 KiB page per store, then loads
    it all back and checks every byte. pageout MB/s = Δpgswapout * 4 KiB / write time, pagein
    MB/s = Δpgswapin * 4 KiB / read time; against a plain file of W MiB in the same state dir
    (os.write 4 KiB at a time + fsync, then os.pread 4 KiB at a time);
 2. pdaemon rates during the write phase: pages scanned/s (Δpdscans; Δpdrevs counts the
    passes) and pages acted on/s (Δ(pdreact + pddeact + pdfreed + pdpageouts));
 3. time per page of a full pass of 4 KiB stores over a working set of 0.5x and 2x RAM, after
    a first pass that faults everything in; the ratio is the slowdown of thrashing.
The JSON's top-level `pageout_mb_s` and `thrash_slowdown` are parts 1 and 3 in one number each.

Markdown on stdout, progress on stderr, JSON in bench/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_uvm import booted  # bench/ is on sys.path when run as a script

from machine.client import Machine
from machine.params import PAGE_SIZE

BENCH_DIR = Path(__file__).resolve().parent
UP = str(Path(sys.executable).parent / "uvm-machine")
MiB = 1 << 20
PD_WORK = ("pdreact", "pddeact", "pdfreed", "pdpageouts")
T0 = time.monotonic()


@dataclass
class Plan:
    ram_mib: int
    swap_mib: int
    write_mib: int  # part 1: bytes written then read back
    ws_factors: tuple[float, ...] = (0.5, 2.0)  # part 3: working sets, x RAM


QUICK = Plan(ram_mib=4, swap_mib=32, write_mib=10)
DEFAULT = Plan(ram_mib=16, swap_mib=128, write_mib=48)


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:5.1f}s] {msg}", file=sys.stderr, flush=True)


def page_data(i: int, salt: int = 0) -> bytes:
    """4 KiB that differ from page to page (and pass to pass, by salt)."""
    return ((i * 2654435761 + salt) & 0xFFFFFFFF).to_bytes(4, "little") * (PAGE_SIZE // 4)


async def snap(m: Machine) -> dict[str, int]:
    """uvm and pdaemon counters in one dict, plus free frames."""
    st = await m.stats()
    out = {**st["roles"]["uvm"]["counters"], **st["roles"]["pdaemon"]["counters"]}
    out["frames_free"] = int(st["frames"]["free"])
    return out


def delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:  # changed keys only
    return {k: v - a.get(k, 0) for k, v in b.items() if v != a.get(k, 0)}


# -- 1 + 2. swap throughput and scan rate ----------------------------------------------------


async def swap_phase(m: Machine, npages: int) -> dict[str, Any]:
    p = await m.spawn()
    va = await p.mmap(npages * PAGE_SIZE, "rw")
    c0, t0 = await snap(m), time.perf_counter()
    for i in range(npages):
        await p.store(va + i * PAGE_SIZE, page_data(i))
    t_write = time.perf_counter() - t0
    c1 = await snap(m)
    log(f"   write {npages} pages: {t_write:.1f} s")
    bad, t0 = 0, time.perf_counter()
    for i in range(npages):
        bad += await p.load(va + i * PAGE_SIZE, PAGE_SIZE) != page_data(i)
    t_read = time.perf_counter() - t0
    c2 = await snap(m)
    log(f"   read back: {t_read:.1f} s, {bad} bad pages")
    await p.exit()
    dw, dr = delta(c0, c1), delta(c1, c2)
    return {
        "pages": npages, "write_s": t_write, "read_s": t_read, "bad_pages": bad,
        "delta_write": dw, "delta_read": dr,
        "pageout_MBps": dw.get("pgswapout", 0) * PAGE_SIZE / MiB / t_write,
        "pagein_MBps": dr.get("pgswapin", 0) * PAGE_SIZE / MiB / t_read,
        "pdscans_per_s": dw.get("pdscans", 0) / t_write,  # pages examined
        "pdrevs_per_s": dw.get("pdrevs", 0) / t_write,  # passes
        "pdwork_per_s": sum(dw.get(k, 0) for k in PD_WORK) / t_write,
    }  # fmt: skip


def plain_file(path: Path, npages: int) -> dict[str, Any]:
    """Sequential 4 KiB writes + fsync, then 4 KiB preads (from the page cache, warm)."""
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o600)
    try:
        t0 = time.perf_counter()
        for i in range(npages):
            os.write(fd, page_data(i))
        os.fsync(fd)
        t_write = time.perf_counter() - t0
        bad, t0 = 0, time.perf_counter()
        for i in range(npages):
            bad += os.pread(fd, PAGE_SIZE, i * PAGE_SIZE) != page_data(i)
        t_read = time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    mb = npages * PAGE_SIZE / MiB
    return {"write_s": t_write, "read_s": t_read, "bad_pages": bad,
            "write_MBps": mb / t_write, "read_MBps": mb / t_read}  # fmt: skip


# -- 3. working set vs RAM -------------------------------------------------------------------


async def working_set(m: Machine, npages: int) -> dict[str, Any]:
    p = await m.spawn()
    va = await p.mmap(npages * PAGE_SIZE, "rw")
    for i in range(npages):  # first pass: fault everything in
        await p.store(va + i * PAGE_SIZE, page_data(i, 1))
    c0, t0 = await snap(m), time.perf_counter()
    for i in range(npages):
        await p.store(va + i * PAGE_SIZE, page_data(i, 2))
    dt = time.perf_counter() - t0
    d = delta(c0, await snap(m))
    bad = 0
    for i in range(0, npages, max(1, npages // 256)):  # spot-check the second pass
        bad += await p.load(va + i * PAGE_SIZE, PAGE_SIZE) != page_data(i, 2)
    await p.exit()
    return {"pages": npages, "pass_s": dt, "us_per_page": dt * 1e6 / npages, "delta": d,
            "bad_pages": bad}  # fmt: skip


def measure(pl: Plan) -> dict[str, Any]:
    ram_pages = pl.ram_mib * MiB // PAGE_SIZE
    with booted(f"{pl.ram_mib}M", "--swap", f"{pl.swap_mib}M") as mach:

        async def main() -> dict[str, Any]:
            async with Machine.attach(mach["endpoint"]) as m:
                out: dict[str, Any] = {"frames": (await m.stats())["frames"]}
                log(f"1. {pl.write_mib} MiB through anonymous memory, --ram {pl.ram_mib}M")
                out["swap"] = await swap_phase(m, pl.write_mib * MiB // PAGE_SIZE)
                log("1. plain file in the state dir")
                pages = pl.write_mib * MiB // PAGE_SIZE
                out["plain"] = plain_file(Path(mach["state"]) / "bench-plain.dat", pages)
                out["ws"] = {}
                for f in pl.ws_factors:
                    log(f"3. working set {f}x RAM")
                    out["ws"][str(f)] = r = await working_set(m, int(f * ram_pages))
                    log(f"   {r['us_per_page']:.0f} µs/page, {r['bad_pages']} bad")
                return out

        return asyncio.run(main())


# -- report ----------------------------------------------------------------------------------


def table(head: str, rows: Sequence[Sequence[Any]]) -> str:
    cols = head.split("|")
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def checks(res: dict[str, Any]) -> list[str]:
    s, fails = res["real"]["swap"], []
    if s["bad_pages"] or any(w["bad_pages"] for w in res["real"]["ws"].values()):
        fails.append("loaded bytes differ from stored bytes")
    for k, d in (("pgswapout", s["delta_write"]), ("pdscans", s["delta_write"]),
                 ("pgswapin", s["delta_read"])):  # fmt: skip
        if d.get(k, 0) <= 0:
            fails.append(f"counter {k} did not rise")
    return fails


def report(res: dict[str, Any]) -> str:
    pl, r = res["plan"], res["real"]
    s, f, dw, dr = r["swap"], r["plain"], r["swap"]["delta_write"], r["swap"]["delta_read"]
    lo, hi = (r["ws"][str(x)] for x in pl["ws_factors"])
    rows = [
        ["pageout (write phase)", f"{s['pageout_MBps']:.2f} MB/s",
         f"{f['write_MBps']:.0f} MB/s", f"{s['pageout_MBps'] / f['write_MBps']:.4f}",
         f"pgswapout +{dw.get('pgswapout', 0)} in {s['write_s']:.1f} s"],
        ["pagein (read phase)", f"{s['pagein_MBps']:.2f} MB/s",
         f"{f['read_MBps']:.0f} MB/s", f"{s['pagein_MBps'] / f['read_MBps']:.4f}",
         f"pgswapin +{dr.get('pgswapin', 0)} in {s['read_s']:.1f} s"],
        ["pdaemon pages scanned", f"{s['pdscans_per_s']:,.1f} /s", "", "",
         f"pdscans +{dw.get('pdscans', 0)}, pdrevs (passes) +{dw.get('pdrevs', 0)}, "
         f"pdwoke +{dw.get('pdwoke', 0)}"],
        ["pdaemon pages acted on", f"{s['pdwork_per_s']:,.0f} /s", "", "",
         ", ".join(f"{k} +{dw.get(k, 0)}" for k in PD_WORK)],
        [f"store pass, ws {pl['ws_factors'][0]}x RAM", f"{lo['us_per_page']:,.0f} µs/page",
         "", "", f"{lo['pages']} pages, pgswapin +{lo['delta'].get('pgswapin', 0)}"],
        [f"store pass, ws {pl['ws_factors'][1]}x RAM", f"{hi['us_per_page']:,.0f} µs/page",
         "", f"{hi['us_per_page'] / lo['us_per_page']:.1f}x slower",
         f"{hi['pages']} pages, pgswapin +{hi['delta'].get('pgswapin', 0)}, "
         f"pgswapout +{hi['delta'].get('pgswapout', 0)}"],
    ]  # fmt: skip
    fails = checks(res)
    return "\n".join(
        [
            f"# bench_pdaemon ({res['mode']}), {res['started']}; `--ram {pl['ram_mib']}M "
            f"--swap {pl['swap_mib']}M`, {pl['write_mib']} MiB written; load average "
            f"{res['loadavg_before']} -> {res['loadavg_after']}\n",
            table("measure|machine|plain file|machine ÷ plain|counters", rows),
            "\nintegrity and counters: " + ("ok" if not fails else "**" + "; ".join(fails) + "**"),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (< 30 s): smoke test")
    ap.add_argument("--json", type=Path, help="write results here (default bench/results/...)")
    a = ap.parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through every finally: the machine stops

    signal.signal(signal.SIGTERM, on_term)
    pl = QUICK if a.quick else DEFAULT
    res: dict[str, Any] = {
        "mode": "quick" if a.quick else "default", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()), "plan": asdict(pl),
        "cpus": os.cpu_count(), "python": sys.version.split()[0],
    }  # fmt: skip
    res["real"] = measure(pl)
    lo, hi = (res["real"]["ws"][str(x)]["us_per_page"] for x in pl.ws_factors)
    res["pageout_mb_s"] = res["real"]["swap"]["pageout_MBps"]  # issue 11's summary keys
    res["thrash_slowdown"] = hi / lo  # per-page store time, 2x RAM / 0.5x RAM
    res["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    res["elapsed_s"] = round(time.monotonic() - T0, 1)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = a.json or BENCH_DIR / "results" / f"bench_pdaemon-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(report(res))
    log(f"JSON: {out} ({res['elapsed_s']} s)")
    return 1 if checks(res) else 0


if __name__ == "__main__":
    sys.exit(main())
