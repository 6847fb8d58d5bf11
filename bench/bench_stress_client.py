#!/usr/bin/env python3
"""Which client Locust users use: the green client, the asyncio bridge, and asyncio alone.

    .venv/bin/python bench/bench_stress_client.py [--quick] [--json] [--seconds 3]
        [--rounds 3] [--users 1,8,16,64] [--clients green,bridge,threadpool,asyncio]

Boots a real machine (`uvm-machine up --ram 16M`, bench_machine.py's `started`), then for
every client kind and N runs one client process (a subprocess, so gevent's monkey-patching
stays there, as in a Locust process) in which N users, each with its own session, emulated
process and page, do store 64 B + load 64 B (checked against what was stored) in a loop for
T seconds. The kinds:
  green       N greenlets, machine.stress.green.GreenMachine (ZMTP), monkey-patched
  bridge      N greenlets, machine.stress.bridge.AsyncBridge (the async client in a loop
              thread, one async watcher wakes the hub), monkey-patched
  threadpool  the same loop thread, but each greenlet waits in gevent's threadpool on
              run_coroutine_threadsafe's Future (the issue's spike), monkey-patched
  asyncio     N asyncio tasks in one loop (machine.client.Machine), no gevent: N = 1 is the
              lone client, N = 16 the baseline of 16 users without Locust
Every store and every load is one operation, timed alone. Per configuration: ops/s,
median and p99 latency (ms), CPU µs per op of the client process (time.process_time over
the timed window, every thread) and of the machine's roles (schedstat of every thread of
each role pid in <state>/machine.json, sampled by this process around the window), and
`harness_share` = client CPU ÷ (client + roles) CPU. Every configuration gets a fresh
client process; the machine is shared (each user detaches at its end). Rounds alternate
the order of the kinds; the table shows each figure's median over the rounds (--quick:
one round of 1 s, about 45 s in all; full: 3 rounds of 3 s, about 5 min). The setup (attach,
spawn, mmap, first touch, 0.5 s of warm-up) is outside the window. The host is shared: the
load average is printed. Progress on stderr; a table on stdout, or with --json one JSON
object as the last stdout line.
"""

from __future__ import annotations

import sys

# A gevent client process is patched first, before anything imports threading or socket
# (as locust does in its own __init__).
if __name__ == "__main__" and sys.argv[1:2] == ["--child"] and sys.argv[2:3] != ["asyncio"]:
    from gevent import monkey

    monkey.patch_all()

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_machine import cpu_ns, started

from machine.params import PAGE_SIZE

KINDS = ("green", "bridge", "threadpool", "asyncio")
USERS = (1, 8, 16, 64)
SIZE = 64  # bytes stored, then loaded and checked, per round
WARM_S = 0.5


# -- the client process ---------------------------------------------------------------


class Tally:
    """Latencies (s) and checks of every user of one client process."""

    def __init__(self) -> None:
        self.lat: list[float] = []
        self.bad = 0
        self.errors: list[str] = []

    def result(self, secs: float, cpu_s: float) -> dict[str, Any]:
        return {"ops": len(self.lat), "s": secs, "cpu_s": cpu_s, "bad": self.bad,
                "errors": self.errors[:5], **_quantiles(self.lat)}  # fmt: skip


def _quantiles(lat: list[float]) -> dict[str, float]:
    if not lat:
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    lat = sorted(lat)
    return {"p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3}


def _pattern(user: int, n: int) -> bytes:
    return bytes((user * 7 + n + i) % 256 for i in range(SIZE))


def _window(go_at: float, secs: float) -> tuple[float, float]:
    """(start of the timed window, its end): warm-up before it, from go_at."""
    return go_at + WARM_S, go_at + WARM_S + secs


def _handshake() -> float:
    """Tell the bench we are set up; => the instant it says the window opens."""
    print("ready", flush=True)
    return float(sys.stdin.readline())


def child_gevent(kind: str, ep: str, users: int, secs: float) -> dict[str, Any]:
    import gevent
    import gevent.event

    tally = Tally()
    ready: list[gevent.event.Event] = [gevent.event.Event() for _ in range(users)]
    go = gevent.event.AsyncResult()

    if kind == "green":
        from machine.stress.green import GreenMachine

        def user(i: int) -> None:
            with GreenMachine.attach(ep) as m:
                p = m.spawn()
                va = p.mmap(PAGE_SIZE)
                p.store(va, b"\0")
                ready[i].set()
                _loop(i, go.get(), p.store, p.load, va)
                p.exit()

        bridge = None
    else:
        from machine.stress.bridge import AsyncBridge

        bridge = ThreadpoolBridge() if kind == "threadpool" else AsyncBridge()
        run = bridge.run

        def user(i: int) -> None:
            with bridge.attach(ep) as m:
                p = run(m.spawn())
                va = run(p.mmap(PAGE_SIZE))
                run(p.store(va, b"\0"))
                ready[i].set()
                _loop(i, go.get(), lambda a, d: run(p.store(a, d)),
                      lambda a, n: run(p.load(a, n)), va)  # fmt: skip
                run(p.exit())

    def _loop(i: int, go_at: float, store: Callable[[int, bytes], None],
              load: Callable[[int, int], bytes], va: int) -> None:  # fmt: skip
        start, end = _window(go_at, secs)
        clock, n = time.perf_counter, 0
        while (now := time.monotonic()) < end:
            data = _pattern(i, n)
            t0 = clock()
            store(va, data)
            t1 = clock()
            got = load(va, SIZE)
            t2 = clock()
            if now >= start:
                tally.lat += (t1 - t0, t2 - t1)
                tally.bad += got != data
            n += 1

    def guarded(i: int) -> None:
        try:
            user(i)
        except Exception as e:
            tally.errors.append(f"user {i}: {e!r}")
            ready[i].set()

    glets = [gevent.spawn(guarded, i) for i in range(users)]
    for r in ready:
        r.wait()
    go_at = _handshake()
    go.set(go_at)
    start, end = _window(go_at, secs)
    gevent.sleep(max(0.0, start - time.monotonic()))
    c0 = time.process_time()
    gevent.sleep(max(0.0, end - time.monotonic()))
    c1 = time.process_time()
    gevent.joinall(glets)
    if bridge is not None:
        bridge.close()
    return tally.result(secs, c1 - c0)


def ThreadpoolBridge() -> Any:  # noqa: N802 (a class made here, once gevent is imported)
    """The spike's wait: run_coroutine_threadsafe, then Future.result() in gevent's pool."""
    import gevent

    from machine.stress.bridge import AsyncBridge

    class Pooled(AsyncBridge):
        def run(self, coro: Any) -> Any:
            fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
            return gevent.get_hub().threadpool.apply(fut.result)

    return Pooled()


async def child_asyncio(ep: str, users: int, secs: float) -> dict[str, Any]:
    from machine.client import Machine
    from machine.ipc.zmqtransport import ZmqTransport

    tally = Tally()
    loop = asyncio.get_running_loop()
    ready = [asyncio.Event() for _ in range(users)]
    go: asyncio.Future[float] = loop.create_future()
    transport = ZmqTransport()  # one zmq context for the process, as the bridge has

    async def user(i: int) -> None:
        try:
            async with Machine.attach(ep, transport=transport) as m:
                p = await m.spawn()
                va = await p.mmap(PAGE_SIZE)
                await p.store(va, b"\0")
                ready[i].set()
                start, end = _window(await go, secs)
                clock, n = time.perf_counter, 0
                while (now := time.monotonic()) < end:
                    data = _pattern(i, n)
                    t0 = clock()
                    await p.store(va, data)
                    t1 = clock()
                    got = await p.load(va, SIZE)
                    t2 = clock()
                    if now >= start:
                        tally.lat += (t1 - t0, t2 - t1)
                        tally.bad += got != data
                    n += 1
                await p.exit()
        except Exception as e:
            tally.errors.append(f"user {i}: {e!r}")
            ready[i].set()

    tasks = [asyncio.create_task(user(i)) for i in range(users)]
    for r in ready:
        await r.wait()
    go_at = await loop.run_in_executor(None, _handshake)
    go.set_result(go_at)
    start, end = _window(go_at, secs)
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    c0 = time.process_time()
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    c1 = time.process_time()
    await asyncio.gather(*tasks)
    await transport.close()
    return tally.result(secs, c1 - c0)


def child(kind: str, ep: str, users: int, secs: float) -> None:
    if kind == "asyncio":
        res = asyncio.run(child_asyncio(ep, users, secs))
    else:
        res = child_gevent(kind, ep, users, secs)
    print(json.dumps(res), flush=True)


# -- the bench ------------------------------------------------------------------------


@contextmanager
def machine(ram: str) -> Iterator[tuple[str, dict[str, int]]]:
    """`uvm-machine up`, stopped with SIGINT. => (attach endpoint, {role: pid})."""
    state = Path(tempfile.mkdtemp(prefix="uvm-bench-stress-"))
    up = str(Path(sys.executable).parent / "uvm-machine")
    cmd = [up, "up", "--ram", ram, "--endpoint", "tcp://127.0.0.1:0", "--state", str(state)]
    try:
        with started(cmd, signal.SIGINT, "machine") as line:
            if line[0] != "attach:":
                raise RuntimeError(f"uvm-machine up did not boot: {line}")
            info = json.loads((state / "machine.json").read_text())
            yield line[1], {r: int(v["pid"]) for r, v in info["roles"].items()}
    finally:
        shutil.rmtree(state, ignore_errors=True)


def one(kind: str, users: int, secs: float, ep: str, roles: dict[str, int]) -> dict[str, Any]:
    """One client process of `kind` with `users` users; => its figures."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, ep, str(users),
           str(secs)]  # fmt: skip
    pr = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert pr.stdin is not None
    assert pr.stdout is not None
    try:
        if (line := pr.stdout.readline().strip()) != "ready":
            raise RuntimeError(f"{kind} x{users}: client did not start: {line!r}")
        go_at = time.monotonic() + 0.1
        pr.stdin.write(f"{go_at}\n")
        pr.stdin.flush()
        start, end = _window(go_at, secs)
        time.sleep(max(0.0, start - time.monotonic()))
        r0 = {r: cpu_ns(p) for r, p in roles.items()}
        time.sleep(max(0.0, end - time.monotonic()))
        r1 = {r: cpu_ns(p) for r, p in roles.items()}
        out = json.loads(pr.stdout.readline())
        pr.wait(60)
    finally:
        if pr.poll() is None:
            pr.kill()
            pr.wait(5)
    ops = max(out["ops"], 1)
    role_us = {r: (r1[r] - r0[r]) / ops / 1e3 for r in roles}
    client_us = out["cpu_s"] / ops * 1e6
    machine_us = sum(role_us.values())
    return {
        "kind": kind, "users": users, "ops": out["ops"], "ops_s": out["ops"] / out["s"],
        "p50_ms": out["p50_ms"], "p99_ms": out["p99_ms"], "bad": out["bad"],
        "errors": out["errors"], "client_cpu_us_op": client_us,
        "machine_cpu_us_op": machine_us, "roles_cpu_us_op": role_us,
        "harness_share": client_us / (client_us + machine_us) if client_us + machine_us else 0,
    }  # fmt: skip


def median_row(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration over its rounds: the median of every figure, bad and errors summed."""
    med = statistics.median
    keys = ("ops_s", "p50_ms", "p99_ms", "client_cpu_us_op", "machine_cpu_us_op", "harness_share")
    return {"kind": rs[0]["kind"], "users": rs[0]["users"], "rounds": len(rs),
            **{k: med(r[k] for r in rs) for k in keys},
            "roles_cpu_us_op": {k: med(r["roles_cpu_us_op"][k] for r in rs)
                                for k in rs[0]["roles_cpu_us_op"]},
            "ops": sum(r["ops"] for r in rs), "bad": sum(r["bad"] for r in rs),
            "errors": [e for r in rs for e in r["errors"]][:5]}  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| client | N | ops/s | p50 ms | p99 ms | client CPU µs/op | machine CPU µs/op "
           "| harness share | bad |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        out.append(f"| {r['kind']} | {r['users']} | {r['ops_s']:.0f} | {r['p50_ms']:.2f} "
                   f"| {r['p99_ms']:.2f} | {r['client_cpu_us_op']:.0f} "
                   f"| {r['machine_cpu_us_op']:.0f} | {r['harness_share']:.0%} "
                   f"| {r['bad']} |")  # fmt: skip
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round of 1 s per configuration")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed window per config")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (the medians are shown)")
    ap.add_argument("--users", default=",".join(map(str, USERS)))
    ap.add_argument("--clients", default=",".join(KINDS), help="of " + ",".join(KINDS))
    ap.add_argument("--ram", default="16M")
    ap.add_argument("--json", action="store_true")
    if sys.argv[1:2] == ["--child"]:
        kind, ep, users, secs = sys.argv[2:6]
        child(kind, ep, int(users), float(secs))
        return 0
    a = ap.parse_args()
    secs = 1.0 if a.quick else a.seconds
    rounds = 1 if a.quick else a.rounds
    kinds = [k for k in a.clients.split(",") if k in KINDS]
    users = [int(u) for u in a.users.split(",")]
    every: dict[tuple[str, int], list[dict[str, Any]]] = {(k, n): [] for n in users for k in kinds}
    load0 = os.getloadavg()[0]
    with machine(a.ram) as (ep, roles):
        for rnd in range(rounds):
            order = kinds if rnd % 2 == 0 else kinds[::-1]  # alternate: drift hits all alike
            for n in users:
                for kind in order:
                    r = one(kind, n, secs, ep, roles)
                    every[kind, n].append(r)
                    print(f"round {rnd + 1} {kind} x{n}: {r['ops_s']:.0f} ops/s "
                          f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms "
                          f"client {r['client_cpu_us_op']:.0f} µs/op "
                          f"machine {r['machine_cpu_us_op']:.0f} µs/op bad {r['bad']} "
                          f"{r['errors'] or ''}", file=sys.stderr)  # fmt: skip
    rows = [median_row(rs) for rs in every.values()]
    res = {"seconds": secs, "rounds": rounds, "size": SIZE, "ram": a.ram,
           "cpus": os.cpu_count(), "loadavg": [load0, os.getloadavg()[0]], "rows": rows,
           "every_round": [r for rs in every.values() for r in rs]}  # fmt: skip
    failed = any(r["bad"] or r["errors"] for rs in every.values() for r in rs)
    if a.json:
        print(json.dumps(res))
    else:
        print(table(rows))
        print(f"\nloadavg {load0:.2f} -> {res['loadavg'][1]:.2f} on {os.cpu_count()} CPUs")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
