#!/usr/bin/env python3
"""UVM fault latency by kind, fork time and uvm memory per frame, over real processes and
in-process (SimMachine).

    .venv/bin/python bench/bench_uvm.py [--quick] [--json PATH]

One run measures:
 1. per fault kind, the client operation that takes the fault, each timed alone (p50/p99,
    faults/s = n / sum of latencies): zero-fill (first store to anonymous private memory,
    flt_przero), COW (after fork, the child's first store to a page the parent wrote,
    flt_acow), file page-in (first load from a shared mapping of a file on disk, fltget);
    uvm's counters must rise by exactly the number of timed operations;
 2. `await p.fork()` of a process with N resident pages (made resident with mlock + munlock);
 3. boot time (`uvm-machine up` started -> `attach:` line) and the roles' RSS right after
    boot at --ram 64M and 1G; uvm bytes per frame = ΔRSS / Δframes.

Markdown on stdout, progress on stderr, JSON in bench/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench_machine import group_pids  # bench/ is on sys.path when run as a script

from machine.client import Machine, Process
from machine.ipc.inmemory import run_simulation
from machine.params import PAGE_SIZE
from machine.testing import SimMachine

BENCH_DIR = Path(__file__).resolve().parent
UP = str(Path(sys.executable).parent / "uvm-machine")
KINDS = {"zero-fill": "flt_przero", "COW": "flt_acow", "file page-in": "fltget"}
OPS = {
    "zero-fill": "store 1 B, untouched anon page",
    "COW": "child's store 1 B, page parent wrote",
    "file page-in": "load 8 B, shared file mapping",
}


@dataclass
class Plan:
    faults: int  # timed operations per fault kind; <= 4096 (a file of more pages panics uvm
    # when it is flushed: pmap.attrs takes at most 4096 pfns, see bench/README.md)
    fork_pages: tuple[int, ...]
    fork_reps: int  # forks per size (a fresh parent each)
    boots: int  # boots per RAM size for the memory / boot-time probe


QUICK = Plan(faults=300, fork_pages=(1000, 10000), fork_reps=1, boots=1)
DEFAULT = Plan(faults=4000, fork_pages=(1000, 10000), fork_reps=9, boots=5)
MEM_SIZES = {"64M": 64 << 20, "1G": 1 << 30}
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:5.1f}s] {msg}", file=sys.stderr, flush=True)


def summary(ns: Sequence[int]) -> dict[str, float]:
    """µs; rate = faults per second with one in flight (n / sum of latencies)."""
    s = sorted(ns)

    def q(x: float) -> float:
        return s[round(x * (len(s) - 1))] / 1e3

    return {"n": len(s), "p50_us": q(0.5), "p99_us": q(0.99), "rate": len(s) * 1e9 / sum(s)}


async def counters(m: Machine) -> dict[str, int]:
    return (await m.stats())["roles"]["uvm"]["counters"]  # type: ignore[no-any-return]


async def free_frames(m: Machine) -> int:
    return int((await m.stats())["frames"]["free"])


# -- 1. faults by kind ---------------------------------------------------------------------


async def timed_kind(
    m: Machine, kind: str, p: Process, n: int, op: Callable[[int], Awaitable[object]]
) -> dict[str, Any]:
    """n operations timed one by one; uvm's counter for `kind` and p's traps must rise by n."""
    c0, traps0 = await counters(m), p.faults
    ns = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        await op(i)
        ns.append(time.perf_counter_ns() - t0)
    c1 = await counters(m)
    delta = {k: v - c0.get(k, 0) for k, v in c1.items() if v != c0.get(k, 0)}
    ok = delta.get(KINDS[kind], 0) == n and delta.get("faults", 0) == n and p.faults - traps0 == n
    if not ok:
        log(f"   SURPRISE {kind}: {n} ops, {p.faults - traps0} traps, counters rose {delta}")
    return {**summary(ns), "counter": KINDS[kind], "delta": delta, "traps": p.faults - traps0,
            "counter_ok": ok}  # fmt: skip


def write_numbered(path: Path, n: int) -> None:
    """A file of n pages on the host, each page starting with its number."""
    pad = bytes(PAGE_SIZE - 8)
    path.write_bytes(b"".join(i.to_bytes(8, "little") + pad for i in range(n)))


async def measure_faults(m: Machine, disk: Path, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    parent = await m.spawn()
    va = await parent.mmap(n * PAGE_SIZE)
    out["zero-fill"] = await timed_kind(
        m, "zero-fill", parent, n, lambda i: parent.store(va + i * PAGE_SIZE, b"z")
    )
    child = await parent.fork()
    out["COW"] = await timed_kind(
        m, "COW", child, n, lambda i: child.store(va + i * PAGE_SIZE + 1, b"c")
    )
    if await child.load(va, 2) != b"zc" or await parent.load(va, 2) != b"z\0":
        raise AssertionError("COW: parent and child do not see their own bytes")
    await child.exit()
    await parent.exit()
    name = f"bench-uvm-{os.getpid()}-{n}.dat"
    write_numbered(disk / name, n)
    f = await m.open(name)
    q = await m.spawn()
    fva = await q.mmap(n * PAGE_SIZE, "r", file=f, shared=True)
    got: list[bytes] = []

    async def load(i: int) -> None:
        got.append(await q.load(fva + i * PAGE_SIZE, 8))

    out["file page-in"] = await timed_kind(m, "file page-in", q, n, load)
    if got != [i.to_bytes(8, "little") for i in range(n)]:
        raise AssertionError("file page-in: loaded bytes differ from the file")
    await q.exit()
    await f.close()
    (disk / name).unlink()
    return out


# -- 2. fork ---------------------------------------------------------------------------------


async def measure_fork(m: Machine, sizes: Sequence[int], reps: int) -> dict[str, Any]:
    """Per size: ms of `await p.fork()` (fresh parent each time), and of its mlock+munlock."""
    out: dict[str, Any] = {}
    for npages in sizes:
        fork_ms, setup_ms, forks0 = [], [], (await counters(m))["forks"]
        for _ in range(reps):
            p = await m.spawn()
            length = npages * PAGE_SIZE
            va = await p.mmap(length)
            free0, t0 = await free_frames(m), time.perf_counter()
            await p.mlock(va, length)  # every page zero-filled and mapped now
            await p.munlock(va, length)
            setup_ms.append((time.perf_counter() - t0) * 1e3)
            free1 = await free_frames(m)
            if free0 - free1 < npages:
                raise AssertionError(f"only {free0 - free1} of {npages} pages resident")
            t0 = time.perf_counter()
            child = await p.fork()
            fork_ms.append((time.perf_counter() - t0) * 1e3)
            if await free_frames(m) != free1:
                raise AssertionError("fork copied pages")
            await child.exit()
            await p.exit()
        forks = (await counters(m))["forks"] - forks0
        if forks != reps:
            log(f"   SURPRISE fork: {reps} forks, counter `forks` rose by {forks}")
        out[str(npages)] = {"fork_ms": fork_ms, "median_ms": statistics.median(fork_ms),
                            "mlock_munlock_ms": statistics.median(setup_ms),
                            "forks_counted": forks}  # fmt: skip
        log(f"   fork of {npages} resident pages: {statistics.median(fork_ms):.1f} ms")
    return out


async def run_ops(m: Machine, disk: Path, pl: Plan) -> dict[str, Any]:
    await measure_faults(m, disk, 50)  # warm-up
    return {
        "faults": await measure_faults(m, disk, pl.faults),
        "fork": await measure_fork(m, pl.fork_pages, pl.fork_reps),
    }


# -- real machines ------------------------------------------------------------------------------


@contextlib.contextmanager
def booted(ram: str, *extra: str) -> Iterator[dict[str, Any]]:
    """`uvm-machine up --ram RAM [extra...]` in its own session; stopped with SIGINT, checked
    for leftovers. => machine.json + attach endpoint, state dir, boot_s (process start ->
    `attach:` line)."""
    state = Path(tempfile.mkdtemp(prefix="uvm-bench-uvm-"))
    cmd = [UP, "up", "--ram", ram, *extra, "--endpoint", "tcp://127.0.0.1:0", "--state", str(state)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        boot_s = time.perf_counter() - t0
        if line[:1] != ["attach:"]:
            raise RuntimeError(f"uvm-machine up --ram {ram} did not boot: {line}")
        info = json.loads((state / "machine.json").read_text())
        yield {**info, "endpoint": line[1], "state": state, "boot_s": boot_s}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                log(f"warning: machine {proc.pid} ignored SIGINT; killing it")
                proc.kill()
                proc.wait(5)
        if proc.returncode not in (0, None):
            log(f"warning: uvm-machine up exited with status {proc.returncode}")
        deadline = time.monotonic() + 5
        while (left := group_pids(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in left:
            log(f"warning: killing leftover machine process {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in Path("/dev/shm").glob(f"uvm-machine-{proc.pid}-*"):
            log(f"warning: removing leftover RAM segment {p}")
            p.unlink(missing_ok=True)
        if any((state / "dump").glob("crash-*")):
            log(f"warning: the machine panicked; crash dump kept in {state / 'dump'}")
        else:
            shutil.rmtree(state, ignore_errors=True)


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and its parts (RssAnon, RssFile, RssShmem) in KiB."""
    out = {}
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = ln.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[k] = int(v.split()[0])
    return out


def measure_memory(boots: int) -> dict[str, Any]:
    """Boots alternating 64M / 1G; per size the medians of boot time and of each role's RSS."""
    raw: dict[str, list[dict[str, Any]]] = {s: [] for s in MEM_SIZES}
    for i in range(boots):
        for size in MEM_SIZES:
            with booted(size) as mach:
                roles = mach["roles"].items()
                rss = {f"{r} {k}": v for r, d in roles for k, v in rss_kib(int(d["pid"])).items()}
            raw[size].append({"boot_s": mach["boot_s"], "rss_kib": rss})
            log(f"   boot {i + 1}/{boots} --ram {size}: {mach['boot_s']:.2f} s, uvm VmRSS "
                f"{rss['uvm VmRSS'] / 1024:.1f} MiB")  # fmt: skip
    out: dict[str, Any] = {"boots": raw}
    for size, runs in raw.items():
        out[size] = {
            "frames": MEM_SIZES[size] // PAGE_SIZE,
            "boot_s": statistics.median(r["boot_s"] for r in runs),
            "rss_kib": {k: statistics.median(r["rss_kib"][k] for r in runs) for k in rss},
        }
    lo, hi = out["64M"], out["1G"]
    df = hi["frames"] - lo["frames"]
    out["bytes_per_frame"] = {
        k: (v - lo["rss_kib"][k]) * 1024 / df for k, v in hi["rss_kib"].items()
    }
    return out


def measure_real(pl: Plan) -> dict[str, Any]:
    with booted("256M") as mach:

        async def main() -> dict[str, Any]:
            async with Machine.attach(mach["endpoint"]) as m:
                return await run_ops(m, mach["state"] / "disk", pl)

        return asyncio.run(main())


def measure_sim(pl: Plan) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        boot = SimMachine.boot(seed=1, ram_bytes=256 << 20, latency_s=(0.0, 0.0))
        async with boot as sim, sim.attach() as m:
            return await run_ops(m, Path(sim.state_dir) / "disk", pl)

    return run_simulation(main())  # type: ignore[no-any-return]


# -- report ------------------------------------------------------------------------------------


def table(head: str, rows: Sequence[Sequence[Any]]) -> str:
    cols = head.split("|")
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def us(x: float) -> str:
    return f"{x:,.0f}"


def fault_rows(real: dict[str, Any], sim: dict[str, Any]) -> list[list[str]]:
    rows = []
    for kind in KINDS:
        r, s = real[kind], sim[kind]
        rise = f"+{r['delta'].get(r['counter'], 0)} / +{s['delta'].get(s['counter'], 0)}"
        ok = "ok" if r["counter_ok"] and s["counter_ok"] else "**MISMATCH** (see JSON)"
        rows.append(
            [f"{kind}: {OPS[kind]}", f"`{r['counter']}`"]
            + [us(x[k]) for x in (r, s) for k in ("p50_us", "p99_us", "rate")]
            + [f"{r['p50_us'] / s['p50_us']:.1f}x", f"{rise} {ok}"]
        )
    return rows


def fork_rows(real: dict[str, Any], sim: dict[str, Any]) -> list[list[str]]:
    def ms(f: dict[str, Any]) -> str:
        return f"{f['median_ms']:.1f} ({min(f['fork_ms']):.1f}-{max(f['fork_ms']):.1f})"

    setup = {n: [us(x[n]["mlock_munlock_ms"]) for x in (real, sim)] for n in real}
    return [[n, ms(real[n]), ms(sim[n]), *setup[n]] for n in real]


def memory_rows(mem: dict[str, Any]) -> list[list[str]]:
    lo, hi, bpf = mem["64M"], mem["1G"], mem["bytes_per_frame"]
    met = {True: "met", False: "**NOT met**"}
    boot = [f"{x['boot_s']:.2f} s" for x in (lo, hi)]
    rows = [["boot: start -> `attach:`", *boot, "", f"1G < 2 s: {met[hi['boot_s'] < 2]}"]]
    for k in ("uvm VmRSS", "uvm RssAnon", "uvm RssShmem", "mmu VmRSS"):
        rss = [f"{x['rss_kib'][k] / 1024:.1f} MiB" for x in (lo, hi)]
        target = f"< 100 B: {met[bpf[k] < 100]}" if k == "uvm VmRSS" else ""
        rows.append([k, *rss, f"{bpf[k]:.1f} B", target])
    return rows


def report(res: dict[str, Any]) -> str:
    real, sim, pl = res["real"], res["sim"], res["plan"]
    return "\n".join(
        [
            f"# bench_uvm ({res['mode']}), {res['started']}; load average before "
            f"{res['loadavg_before']}, after {res['loadavg_after']}\n",
            f"## Fault latency by kind ({pl['faults']} faults per kind, each timed alone; real "
            "= `uvm-machine up --ram 256M`, tcp; in-process = SimMachine, zero latency)\n",
            table(
                "fault kind: timed op|counter|real p50 µs|p99 µs|faults/s|in-proc p50 µs|p99 µs"
                "|faults/s|real ÷ in-proc p50|counter Δ real / in-proc",
                fault_rows(real["faults"], sim["faults"]),
            ),
            f"\n## fork of a process with N resident pages (median (min-max) of {pl['fork_reps']};"
            " a fresh parent each, its pages made resident by mlock + munlock)\n",
            table(
                "N pages|real fork ms|in-proc fork ms|real mlock+munlock ms|in-proc ditto",
                fork_rows(real["fork"], sim["fork"]),
            ),
            f"\n## Boot time and memory per frame (median of {pl['boots']} boots per size; RSS "
            "right after the `attach:` line)\n",
            table("|--ram 64M|--ram 1G|per frame: Δ ÷ Δframes|target", memory_rows(res["memory"])),
        ]
    )


# -- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (< 30 s): smoke test")
    ap.add_argument("--json", type=Path, help="write results here (default bench/results/...)")
    a = ap.parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through every finally: machines stop

    signal.signal(signal.SIGTERM, on_term)
    pl = QUICK if a.quick else DEFAULT
    res: dict[str, Any] = {
        "mode": "quick" if a.quick else "default", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()), "plan": asdict(pl),
        "cpus": os.cpu_count(), "python": sys.version.split()[0],
    }  # fmt: skip
    log("1+2. real machine (faults by kind, fork)")
    res["real"] = measure_real(pl)
    log("1+2. in-process machine (SimMachine)")
    res["sim"] = measure_sim(pl)
    log("3. boot time and memory per frame")
    res["memory"] = measure_memory(pl.boots)
    res["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    res["elapsed_s"] = round(time.monotonic() - T0, 1)
    out = a.json or BENCH_DIR / "results" / f"bench_uvm-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(report(res))
    print(f"\n(elapsed {res['elapsed_s']} s; JSON: {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
