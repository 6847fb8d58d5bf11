#!/usr/bin/env python3
"""The message economy in one run: each measure as a ratio to its bound, taken together.

    .venv/bin/python -m bench summary [--quick | --smoke] [--json] [--out PATH]

Prints, last on stdout, one JSON object (with --json; otherwise a table), progress on
stderr; the JSON also goes to bench/results/summary-<time>.json (or --out). Keys:

  fault_over_rtt, store_over_rtt  p50 of a first-touch fault (1-byte store to a never-
                                  touched page) / of a 1-byte store to a mapped page, over
                                  the p50 raw RTT of the roles' own transport (ZmqTransport
                                  echo in another process); rounds of raw RTTs, faults and
                                  stores alternate, so every ratio is taken under one load;
  agg_fault_ratio                 N client processes (16) at once on one machine
                                  (`uvm-machine up --ram 1G`): aggregate first-touch
                                  faults/s ÷ aggregate round trips/s of the same N
                                  processes to one echo server (phases alternate by round);
  loan_over_copy                  {"4K", "64K", "256K", "1M", "4M": send MB/s loaned ÷
                                  copied}: one process sends a buffer k times on one socket,
                                  a wire receiver in the same client checks every payload,
                                  MB/s = bytes / (first send -> last packet received);
                                  `modern` vs `modern` with LOAN_THRESHOLD -1, link
                                  unthrottled (bench_net.py's one_size);
  loan_over_wire_4M, copy_over_wire_4M
                                  the 4 MiB MB/s of each mode ÷ the raw wire: the same
                                  4 MiB published k times from one process (zmq PUB) to a
                                  subscriber process that checks every payload, same span;
  pageout_mb_s                    Δpgswapout x 4 KiB / time of storing W MiB through
                                  anonymous memory of a small machine (bench_pdaemon.py);
  thrash_slowdown                 µs per page of a store pass over 2x RAM ÷ over 0.5x RAM,
                                  with swap (bench_pdaemon.py);
  stress_client_over_machine_cpu  Locust's CPU ÷ the machine's over one steady window of a
                                  `uvm-machine stress` run, default mix (bench_stress_cpu.py);
  explore_runs_per_min            seeded runs a minute of `uvm-machine explore`, modern
                                  profile, default workload, --jobs 2 (bench_explore.py).

Under "raw": the numbers behind every ratio; "host" and "commit" say where and what.
A section that fails (the tree is being edited by others) is retried after a pause
(--retries); if it still fails its keys are null, "failures" says why, and the exit
status is 1. Only public client APIs (machine.client) and the CLI are used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import bench_agg as ba
import bench_explore as be
import bench_machine as bm  # bench/ is on sys.path (bench/__init__.py, or run as a script)
import bench_net as bn
import bench_pdaemon as bp
import bench_stress_cpu as bs
import summary_report as sr
import zmq
from bench_uvm import booted

from machine.client import Machine
from machine.params import PAGE_SIZE
from machine.profile import load_profile, with_overrides

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SIZES = {"4K": 4 << 10, "64K": 64 << 10, "256K": 256 << 10, "1M": 1 << 20, "4M": 4 << 20}
MAPPED = 64  # pages the mapped stores cycle over
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Plan:
    rounds: int  # latency: rounds of r_rtt raw round trips, r_fault faults, r_store stores
    r_rtt: int
    r_fault: int
    r_store: int
    clients: int  # aggregate: client processes at once
    agg_rounds: int  # rounds of (echo phase, fault phase), order alternating
    agg_s: float  # seconds per phase
    agg_pages: int  # fresh pages per client (16 x 12000 x 4 KiB = 750 MiB of 1 GiB)
    net_rounds: int  # loan/copy: rounds of (loan machine, copy machine), order alternating
    net_bytes: int  # bytes per size per round: k = net_bytes / size, net_min_k..256
    net_min_k: int
    wire_reps: int  # raw wire: publisher processes, each k x 4 MiB
    pd: bp.Plan
    stress: bs.Plan


SMOKE = Plan(rounds=2, r_rtt=20, r_fault=20, r_store=20, clients=2, agg_rounds=1, agg_s=0.3,
             agg_pages=500, net_rounds=1, net_bytes=256 << 10, net_min_k=1, wire_reps=1,
             pd=bp.Plan(ram_mib=1, swap_mib=8, write_mib=2), stress=bs.SMOKE)  # fmt: skip
QUICK = Plan(rounds=10, r_rtt=300, r_fault=300, r_store=300, clients=16, agg_rounds=4,
             agg_s=2.0, agg_pages=12000, net_rounds=2, net_bytes=16 << 20, net_min_k=8,
             wire_reps=3, pd=bp.QUICK, stress=bs.QUICK)  # fmt: skip
FULL = Plan(rounds=20, r_rtt=500, r_fault=500, r_store=1000, clients=16, agg_rounds=4,
            agg_s=3.0, agg_pages=12000, net_rounds=3, net_bytes=16 << 20, net_min_k=8,
            wire_reps=5, pd=bp.DEFAULT, stress=bs.FULL)  # fmt: skip


def p50(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


# -- 1. fault and mapped store over the raw RTT, interleaved -------------------------------


async def _latency(ep: str, echo_ep: str, pl: Plan) -> dict[str, Any]:
    rtt = await bm.EchoClient().open(echo_ep)
    try:
        async with Machine.attach(ep) as m:
            p = await m.spawn()
            fresh, used = await p.mmap(pl.rounds * pl.r_fault * PAGE_SIZE), 0
            mapped = await p.mmap(MAPPED * PAGE_SIZE)
            await p.touch(mapped, MAPPED)

            async def fault(i: int) -> None:
                nonlocal used
                used += 1
                await p.store(fresh + (used - 1) * PAGE_SIZE, b"x")

            async def store(i: int) -> None:
                await p.store(mapped + (i % MAPPED) * PAGE_SIZE + 8, b"y")

            await bm.timed(max(pl.r_rtt, 50), rtt.one, [])  # warm-up
            await bm.timed(max(pl.r_store, 50), store, [])
            acc: dict[str, list[int]] = {"raw": [], "fault": [], "store": []}
            rounds = []
            for r in range(pl.rounds):
                got = {k: await bm.timed(n, op, []) for k, n, op in (
                    ("raw", pl.r_rtt, rtt.one), ("fault", pl.r_fault, fault),
                    ("store", pl.r_store, store))}  # fmt: skip
                for k, v in got.items():
                    acc[k] += v
                raw = p50(got["raw"])
                rounds.append({k: p50(v) / raw for k, v in got.items() if k != "raw"})
                log(f"   round {r + 1}/{pl.rounds}: raw RTT {raw / 1e3:.0f} µs, fault "
                    f"{rounds[-1]['fault']:.2f}x, store {rounds[-1]['store']:.2f}x")  # fmt: skip
            await p.exit()
    finally:
        await rtt.close()
    return {
        **{f"{k}_p50_us": p50(v) / 1e3 for k, v in acc.items()},
        **{f"{k}_p99_us": bm.summary(v)["p99_us"] for k, v in acc.items()},
        "n": {k: len(v) for k, v in acc.items()},
        "per_round": rounds,  # each round's p50 ÷ that round's raw p50
        "per_round_median": {k: p50([r[k] for r in rounds]) for k in ("fault", "store")},
    }


def latency(pl: Plan) -> dict[str, Any]:
    with bm.echo_server("transport") as (echo_ep, _), booted("256M") as mach:
        return asyncio.run(_latency(mach["endpoint"], echo_ep, pl))


# -- 2. N client processes at once: faults against echo round trips ------------------------


def aggregate(pl: Plan) -> dict[str, Any]:
    """Rounds of an echo phase and a fault phase (order alternating), every client at once;
    aggregate ops/s = Σ (client's ops / its elapsed). CPU µs per op of mmu, uvm, the echo
    server and the clients together (all threads, schedstat)."""
    with bm.echo_server("transport") as (echo_ep, echo_pid), booted("1G") as mach:
        roles = {r: int(v["pid"]) for r, v in mach["roles"].items() if r in ("mmu", "uvm")}
        roles["echo"] = echo_pid
        cmd = [sys.executable, str(Path(__file__).resolve()), "--client", mach["endpoint"],
               echo_ep, str(pl.agg_pages)]  # fmt: skip
        procs = [
            subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(pl.clients)
        ]
        rates: dict[str, list[float]] = {"echo": [], "fault": []}
        cpu: dict[str, list[dict[str, float]]] = {"echo": [], "fault": []}
        try:
            for pr in procs:
                assert pr.stdout is not None
                if pr.stdout.readline().strip() != "ready":
                    raise RuntimeError("a client process did not start")
            log(f"   {pl.clients} client processes ready")
            for r in range(pl.agg_rounds):
                for ph in ("echo", "fault") if r % 2 == 0 else ("fault", "echo"):
                    pids = {**roles, **{f"c{i}": pr.pid for i, pr in enumerate(procs)}}
                    c0 = {k: bm.cpu_ns(v) for k, v in pids.items()}
                    outs = ba.phase(procs, ph, pl.agg_s)
                    c1 = {k: bm.cpu_ns(v) for k, v in pids.items()}
                    n = max(1, sum(o["n"] for o in outs))
                    rates[ph].append(sum(o["n"] / o["s"] for o in outs))
                    per = {k: (c1[k] - c0[k]) / n / 1e3 for k in roles}
                    per["clients"] = sum(c1[k] - c0[k] for k in pids if k not in roles) / n / 1e3
                    cpu[ph].append(per)
                    log(f"   round {r + 1}/{pl.agg_rounds} {ph}: {rates[ph][-1]:,.0f}/s, CPU "
                        f"µs/op {', '.join(f'{k} {v:.0f}' for k, v in per.items())}")  # fmt: skip
        finally:
            for pr in procs:
                if pr.stdin is not None:
                    pr.stdin.close()
            for pr in procs:
                try:
                    pr.wait(30)
                except subprocess.TimeoutExpired:
                    log(f"warning: client process {pr.pid} did not exit; killing it")
                    pr.kill()
                    pr.wait(5)
    ratios = [f / e for f, e in zip(rates["fault"], rates["echo"], strict=True)]
    return {
        "clients": pl.clients,
        "faults_per_s": p50(rates["fault"]),
        "echo_rt_per_s": p50(rates["echo"]),
        "ratio_per_round": ratios,
        "per_round": rates,
        "cpu_us_per_op": {ph: {k: p50([c[k] for c in v]) for k in v[0]} for ph, v in cpu.items()},
    }


# -- 3. loan versus copy, and the raw wire ------------------------------------------------


_BUF: list[bytes] = []


def pattern() -> bytes:
    """The 4 MiB every send takes its first `size` bytes of (bench_net's pattern)."""
    if not _BUF:
        _BUF.append(bytes((i * 131 + (i >> 12)) & 0xFF for i in range(bn.BUF)))
    return _BUF[0]


async def _net_mode(ep: str, pl: Plan) -> dict[str, dict[str, Any]]:
    buf = pattern()
    async with Machine.attach(ep) as m, m.wire() as wire:
        p = await m.spawn()
        va = await p.mmap(bn.BUF, "rw")
        await p.mlock(va, bn.BUF)  # resident in one call: a 4 MiB store alone traps per page
        await p.munlock(va, bn.BUF)
        await p.store(va, buf)
        s = await p.socket(sndbuf=16 << 20)
        await bn.one_size(m, wire, p, s, va, buf, 64 << 10, max(2, pl.net_min_k))  # warm-up
        out = {}
        for name, size in SIZES.items():
            k = max(pl.net_min_k, min(256, pl.net_bytes // size))
            out[name] = await bn.one_size(m, wire, p, s, va, buf, size, k)
        await p.exit()
        return out


def loan_copy(pl: Plan) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="uvm-bench-summary-"))
    copy = with_overrides(load_profile("modern"), {"LOAN_THRESHOLD": -1}, tmp, "modern-copy")
    profiles = {"loan": "modern", "copy": str(copy)}
    runs: dict[str, list[dict[str, dict[str, Any]]]] = {"loan": [], "copy": []}
    for r in range(pl.net_rounds):
        for mode in ("loan", "copy") if r % 2 == 0 else ("copy", "loan"):
            with booted("256M", "--profile", profiles[mode]) as mach:
                runs[mode].append(asyncio.run(_net_mode(mach["endpoint"], pl)))
            log(f"   round {r + 1}/{pl.net_rounds} {mode}: " + ", ".join(
                f"{n} {v['mb_s']:.0f}" for n, v in runs[mode][-1].items()) + " MB/s")  # fmt: skip
    med = {
        mode: {
            name: {
                "mb_s": p50([x[name]["mb_s"] for x in rs]),
                "send_mb_s": p50([x[name]["send_mb_s"] for x in rs]),
                "msgs_per_send": rs[0][name]["msgs_per_send"],
                "sends": rs[0][name]["sends"],
            }
            for name in SIZES
        }
        for mode, rs in runs.items()
    }
    return med


def publish(size: int, k: int) -> int:
    """The raw wire's publisher process (`--publish`): XPUB, prints `ready ENDPOINT`, waits
    for the subscription, sends b"s" then k payloads, waits for a line on stdin, exits."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.XPUB)
    s.bind("tcp://127.0.0.1:*")
    print("ready", s.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    payload = pattern()[:size]
    s.recv()  # the subscription: the subscriber is connected
    s.send(b"s")
    for _ in range(k):
        s.send(payload)
    sys.stdin.readline()
    ctx.destroy(linger=0)
    return 0


def raw_wire(size: int, k: int) -> float:
    """MB/s of k payloads from a publisher process to this one, b"s" received -> last."""
    buf = pattern()[:size]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--publish", str(size), str(k)]
    pr = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    try:
        assert pr.stdout is not None
        assert pr.stdin is not None
        line = pr.stdout.readline().split()
        if line[:1] != ["ready"]:
            raise RuntimeError(f"publisher did not start: {line}")
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVTIMEO, 60_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(line[1])
        if sub.recv() != b"s":
            raise RuntimeError("raw wire: unexpected first message")
        t0 = time.perf_counter()
        for _ in range(k):
            if sub.recv() != buf:
                raise AssertionError("raw wire: a payload differs")
        dt = time.perf_counter() - t0
        pr.stdin.write("bye\n")
        pr.stdin.flush()
        return k * size / dt / 1e6
    finally:
        ctx.destroy(linger=0)
        if pr.stdin is not None:
            pr.stdin.close()
        try:
            pr.wait(15)
        except subprocess.TimeoutExpired:
            pr.kill()
            pr.wait(5)


# -- the run ---------------------------------------------------------------------------------


def section(name: str, fn: Callable[[], Any], retries: int, wait_s: float, fails: list[str]) -> Any:
    for attempt in range(retries + 1):
        try:
            t0 = time.monotonic()
            out = fn()
            log(f"{name}: done in {time.monotonic() - t0:.1f} s")
            return out
        except Exception as e:  # others edit the tree meanwhile: retry later
            log(f"{name}: FAILED (attempt {attempt + 1}): {e!r}")
            if attempt < retries:
                time.sleep(wait_s)
            else:
                fails.append(f"{name}: {e!r}")
    return None


def run(pl: Plan, mode: str, retries: int, wait_s: float) -> dict[str, Any]:
    fails: list[str] = []
    res: dict[str, Any] = {"mode": mode, "commit": "", "host": sr.host(ROOT), "plan": asdict(pl)}
    res["commit"] = res["host"]["commit"]

    def go(name: str, fn: Callable[[], Any]) -> Any:
        log(name)
        return section(name, fn, retries, wait_s, fails)

    lat = go("1. fault and mapped store over the raw RTT (interleaved rounds)", lambda: latency(pl))
    agg = go(f"2. {pl.clients} client processes: faults vs echo round trips",
             lambda: aggregate(pl))  # fmt: skip
    net = go("3. loan vs copy, link unthrottled", lambda: loan_copy(pl))
    k4 = max(pl.net_min_k, min(256, pl.net_bytes // SIZES["4M"]))
    wire = go("4. raw wire: 4 MiB published to a subscriber process",
              lambda: [raw_wire(SIZES["4M"], k4) for _ in range(pl.wire_reps)])  # fmt: skip
    pd = go(f"5. pageout and thrashing (--ram {pl.pd.ram_mib}M --swap {pl.pd.swap_mib}M)",
            lambda: bp.measure(pl.pd))  # fmt: skip
    st = go(f"6. stress client vs machine CPU ({pl.stress.users} users, {pl.stress.workers} "
            "workers)", lambda: bs.measure(pl.stress, log=log))  # fmt: skip
    ex = go(f"7. exploration, --jobs {be.JOBS}", lambda: be.measure(be.RUNS[mode]))

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    wire_mb_s = p50(wire) if wire else None
    if pd is not None:
        bad = pd["swap"]["bad_pages"] + sum(w["bad_pages"] for w in pd["ws"].values())
        if bad:
            fails.append(f"pdaemon: {bad} pages read back differ from what was stored")
    lo, hi = (pd["ws"][str(f)] if pd else None for f in pl.pd.ws_factors)
    res |= {
        "fault_over_rtt": ratio(lat and lat["fault_p50_us"], lat and lat["raw_p50_us"]),
        "store_over_rtt": ratio(lat and lat["store_p50_us"], lat and lat["raw_p50_us"]),
        "agg_fault_ratio": ratio(agg and agg["faults_per_s"], agg and agg["echo_rt_per_s"]),
        "loan_over_copy": {n: ratio(net["loan"][n]["mb_s"], net["copy"][n]["mb_s"])
                           if net else None for n in SIZES},
        "loan_over_wire_4M": ratio(net and net["loan"]["4M"]["mb_s"], wire_mb_s),
        "copy_over_wire_4M": ratio(net and net["copy"]["4M"]["mb_s"], wire_mb_s),
        "pageout_mb_s": pd["swap"]["pageout_MBps"] if pd else None,
        "thrash_slowdown": ratio(hi and hi["us_per_page"], lo and lo["us_per_page"]),
        "stress_client_over_machine_cpu": st and st["ratio"],
        "explore_runs_per_min": ex and ex["runs_per_min"],
    }  # fmt: skip
    res["raw"] = {
        "latency": lat,
        "aggregate": agg,
        "net": net,
        "wire_4M": {"mb_s": wire_mb_s, "reps": wire, "sends": k4},
        "explore": ex,
        "pdaemon": pd and {
            "pageout_mb_s": pd["swap"]["pageout_MBps"], "pagein_mb_s": pd["swap"]["pagein_MBps"],
            "plain_write_mb_s": pd["plain"]["write_MBps"], "delta_write": pd["swap"]["delta_write"],
            "ws": {f"{f}x_ram": pd["ws"][str(f)] for f in pl.pd.ws_factors},
        },
        "stress": st,
    }  # fmt: skip
    res["failures"] = fails
    res["loadavg_after"] = os.getloadavg()
    return res


KEYS = ("fault_over_rtt", "store_over_rtt", "agg_fault_ratio", "loan_over_wire_4M",
        "copy_over_wire_4M", "pageout_mb_s", "thrash_slowdown",
        "stress_client_over_machine_cpu", "explore_runs_per_min")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    doc = (__doc__ or "").split("\n\n")[0]
    ap = argparse.ArgumentParser(prog="python -m bench summary", description=doc)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="under 5 minutes on 2 CPUs")
    g.add_argument("--smoke", action="store_true", help="a handful of iterations (tests)")
    ap.add_argument("--json", action="store_true", help="last stdout line: the JSON object")
    ap.add_argument("--out", type=Path, help="JSON file (default bench/results/summary-*.json)")
    ap.add_argument("--retries", type=int, default=1, help="per failed section (default 1)")
    ap.add_argument("--retry-wait", type=float, default=60.0, metavar="S")
    ap.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--publish", nargs=2, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.client:
        # bench_agg.py's client: PHASE START_AT SECONDS lines in, {"n", "s"} lines out
        asyncio.run(ba.client(a.client[0], a.client[1], int(a.client[2])))
        return 0
    if a.publish:
        return publish(*a.publish)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through every finally: machines stop

    signal.signal(signal.SIGTERM, on_term)
    mode = "smoke" if a.smoke else "quick" if a.quick else "full"
    pl = SMOKE if a.smoke else QUICK if a.quick else FULL
    res = run(pl, mode, a.retries, a.retry_wait)
    res["elapsed_s"] = round(time.monotonic() - T0, 1)
    out = a.out or BENCH_DIR / "results" / f"summary-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(sr.report(res, KEYS), file=sys.stderr if a.json else sys.stdout, flush=True)
    log(f"JSON: {out}")
    if a.json:
        print(json.dumps(res, default=str), flush=True)
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
