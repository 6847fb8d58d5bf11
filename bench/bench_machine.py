#!/usr/bin/env python3
"""First-touch fault latency of the machine, against the raw round trip of its own transport.

    .venv/bin/python bench/bench_machine.py [--quick] [--wait-idle S] [--json PATH]

One run measures (bench/README.md says how):
 1. raw request/reply round trips to an echo server in another process, tcp loopback, tiny
    msgpack payloads: the roles' stack (ZmqTransport.bind with a plain handler returning
    bytes, on the roles' loop: machine.ipc.eventloop; ZmqTransport.connect): the "raw
    RTT"; for reference zmq.asyncio on both ends and blocking zmq;
 2. a real machine (`uvm-machine up`, booted and stopped here): first-touch faults, stores and
    loads to mapped pages, ctl.ping, in rounds interleaved with raw round trips (the ratio is
    taken under the same host load), CPU time per operation in each process; short rounds
    under two CPU placements;
 3. the same client operations on SimMachine (in-memory transport, zero latency);
 4. where one fault's time goes, on real processes and in memory: the roles timestamp every
    request and call (machine.ipc.timing: UVM_MACHINE_TIMING=1 in the role processes,
    Service.timing / Peer.timing in this one).

Markdown on stdout, progress on stderr, JSON in bench/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import resource
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

import msgspec
import zmq
import zmq.asyncio

from machine.client import Machine
from machine.ipc import eventloop, timing
from machine.ipc.inmemory import run_simulation
from machine.ipc.peer import Identity, Peer
from machine.ipc.service import Service
from machine.ipc.zmqtransport import ZmqTransport
from machine.params import PAGE_SIZE
from machine.proto import NO_HEADER, CtlDump, CtlDumpReply, CtlPing
from machine.testing import SimMachine

BENCH_DIR = Path(__file__).resolve().parent

ALL_CPUS: tuple[int, ...] = tuple(sorted(os.sched_getaffinity(0)))
OPS = {
    "fault": "first-touch fault (store 1 B)",
    "store": "store 1 B, mapped page",
    "load": "load 8 B, mapped page",
    "ping": "ctl.ping to mmu (1 machine round trip)",
}
Samples = dict[str, list[int]]
Cpu = dict[str, dict[str, int]]


@dataclass
class Plan:
    rtt_n: int  # round trips per reference stack, after rtt_warm
    rtt_warm: int
    rounds: int  # interleaved rounds: raw round trips, then each machine operation
    r_rtt: int  # per round
    r_fault: int
    r_ops: int  # stores, loads, pings per round
    pinned_rounds: int  # per placement
    trace_faults: int


QUICK = Plan(rtt_n=1000, rtt_warm=200, rounds=4, r_rtt=300, r_fault=200, r_ops=400,
             pinned_rounds=1, trace_faults=200)  # fmt: skip
DEFAULT = Plan(rtt_n=5000, rtt_warm=500, rounds=20, r_rtt=500, r_fault=500, r_ops=1500,
               pinned_rounds=3, trace_faults=1000)  # fmt: skip

# -- statistics, CPUs, processes, host load ---------------------------------------------


def summary(ns: Sequence[int]) -> dict[str, float]:
    """µs; rate = operations per second with one in flight (n / sum of latencies)."""
    s = sorted(ns)
    if not s:
        return {"n": 0}

    def q(x: float) -> float:
        return s[min(len(s) - 1, round(x * (len(s) - 1)))] / 1e3

    mean = statistics.fmean(s) / 1e3
    return {"n": len(s), "p50_us": q(0.5), "p99_us": q(0.99), "mean_us": mean, "rate": 1e6 / mean}


def tids(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def pin(pid: int, cpu: int | None) -> None:
    """Affinity of every thread of pid (zmq I/O threads included); None = every CPU."""
    for t in tids(pid):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(t, {ALL_CPUS[cpu]} if cpu is not None else set(ALL_CPUS))


def cpu_ns(pid: int, only_zmq: bool = False) -> int:
    """CPU time of every thread of pid (schedstat), or of its zmq I/O threads only."""
    total = 0
    for t in tids(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            task = Path(f"/proc/{pid}/task/{t}")
            if not only_zmq or (task / "comm").read_text().startswith("ZMQbg"):
                total += int((task / "schedstat").read_text().split()[0])
    return total


def cpu_of(pids: dict[str, int]) -> dict[str, int]:
    """{name: CPU ns of the process, "name zmq": of its zmq I/O threads}."""
    out = {r: cpu_ns(p) for r, p in pids.items()}
    return out | {f"{r} zmq": cpu_ns(p, only_zmq=True) for r, p in pids.items()}


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    out = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = Path(f"/proc/{d}/stat").read_text()
            f = raw[raw.rindex(")") + 2 :].split()
            if int(f[2]) == pgid and f[0] != "Z":
                out.append(int(d))
    return out


class Load:
    """Host CPU use per phase, and how much of it was not this bench (the host is shared)."""

    def __init__(self) -> None:
        self.groups: set[int] = set()  # process groups this bench started
        self.gone_ns = 0  # CPU of those that were stopped
        self.samples: list[dict[str, Any]] = []
        self.last = self._read()

    def _read(self) -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait ...
        hz, busy = os.sysconf("SC_CLK_TCK"), v[0] + v[1] + v[2] + v[5] + v[6]
        me = resource.getrusage(resource.RUSAGE_SELF)
        ours = sum(cpu_ns(p) for g in self.groups for p in group_pids(g)) + self.gone_ns
        return busy / hz, (busy + v[3] + v[4] + v[7]) / hz, me.ru_utime + me.ru_stime + ours / 1e9

    def stopping(self, pgid: int) -> None:
        self.gone_ns += sum(cpu_ns(p) for p in group_pids(pgid))
        self.groups.discard(pgid)

    def sample(self, phase: str) -> dict[str, Any]:
        now = self._read()
        busy, total, ours = (a - b for a, b in zip(now, self.last, strict=True))
        self.last, total = now, max(total, 1e-9)
        s = {"phase": phase, "host_busy_pct": 100 * busy / total,
             "others_pct": 100 * max(busy - ours, 0.0) / total,
             "loadavg": os.getloadavg()[0]}  # fmt: skip
        self.samples.append(s)
        return s

    def wait_idle(self, max_s: float, below_pct: float, log: Callable[[str], None]) -> float:
        deadline = time.monotonic() + max_s
        while True:
            self.sample("")
            time.sleep(1.0)
            busy = float(self.sample("")["host_busy_pct"])
            self.samples.clear()
            log(f"host CPU use {busy:.0f} % (waiting for < {below_pct:.0f} %)")
            if busy < below_pct or time.monotonic() > deadline:
                return busy


LOAD = Load()


@contextlib.contextmanager
def started(cmd: list[str], stop_sig: int, what: str, **kw: Any) -> Iterator[list[str]]:
    """Run cmd in its own session; yields its first stdout line (split). Always stopped, and
    anything left in its process group killed (by pid: only processes this bench started)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True, **kw)
    LOAD.groups.add(proc.pid)
    try:
        assert proc.stdout is not None
        yield [*proc.stdout.readline().split(), str(proc.pid)]
    finally:
        LOAD.stopping(proc.pid)
        if proc.poll() is None:
            proc.send_signal(stop_sig)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                print(f"warning: {what} {proc.pid} ignored signal {stop_sig}", file=sys.stderr)
                proc.kill()
                proc.wait(5)
        deadline = time.monotonic() + 5
        while (left := group_pids(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in left:
            print(f"warning: killing leftover {what} process {pid}", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- 1. raw round trips: an echo server in another process --------------------------------

_enc, _dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
RTT_LABELS = {
    "transport": "ZmqTransport.connect -> ZmqTransport.bind (roles' stack) = raw RTT",
    "asyncio": "zmq.asyncio DEALER -> zmq.asyncio ROUTER",
    "sync": "blocking zmq DEALER -> blocking ROUTER",
}


def _request(i: int) -> bytes:
    return _enc.encode({"t": "ping", "id": i, "va": 0x1000_0000})  # 30 B


def _reply(req: bytes) -> bytes:
    return _enc.encode({"re": _dec.decode(req)["id"], "ok": True})  # 12 B


def serve(kind: str, ep: str) -> int:
    """The echo server process (`--serve KIND`): prints `ready ENDPOINT`, serves until killed."""
    if kind == "sync":
        s = zmq.Context().socket(zmq.ROUTER)
        s.bind(ep)
        print("ready", s.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
        while True:
            ident, payload = s.recv_multipart()
            s.send_multipart([ident, _reply(payload)])

    async def main() -> None:
        if kind == "transport":
            srv = await ZmqTransport().bind(ep, _reply)  # a plain handler: no task per request
            print("ready", srv.endpoint, flush=True)
        else:
            a = zmq.asyncio.Context().socket(zmq.ROUTER)
            a.bind(ep)
            print("ready", a.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
            while True:
                ident, payload = await a.recv_multipart()
                await a.send_multipart([ident, _reply(payload)])
        await asyncio.get_running_loop().create_future()

    # The roles' stack includes their loop (uvloop when installed): machine.ipc.eventloop.
    (eventloop.run if kind == "transport" else asyncio.run)(main())
    return 0


@contextlib.contextmanager
def echo_server(kind: str, transport: str = "tcp") -> Iterator[tuple[str, int]]:
    """=> (bound endpoint, pid)."""
    tmp = tempfile.mkdtemp(prefix="uvm-bench-")
    ep = "tcp://127.0.0.1:*" if transport == "tcp" else f"ipc://{tmp}/echo.sock"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--endpoint", ep]
    try:
        with started(cmd, signal.SIGTERM, "echo server") as line:
            if line[0] != "ready":
                raise RuntimeError(f"echo server {kind} did not start: {line}")
            yield line[1], int(line[2])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class EchoClient:
    """The roles' stack on the client side: ZmqTransport.connect, one request in flight."""

    async def open(self, ep: str) -> EchoClient:
        self.t = ZmqTransport()
        self.waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.conn = await self.t.connect(ep, self._on_reply)
        return self

    def _on_reply(self, data: bytes) -> None:
        if not self.waiter.done():
            self.waiter.set_result(data)

    async def one(self, i: int) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        self.conn.send(_request(i))
        _dec.decode(await self.waiter)

    async def close(self) -> None:
        await self.conn.close()
        await self.t.close()


async def timed(n: int, op: Callable[[int], Awaitable[object]], out: list[int]) -> list[int]:
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        await op(i)
        out.append(clock() - t0)
    return out


async def _rtt_async(kind: str, ep: str, pl: Plan, mark: Callable[[], None]) -> list[int]:
    if kind == "transport":
        c = await EchoClient().open(ep)
        one: Callable[[int], Awaitable[None]] = c.one
        close: Callable[[], Awaitable[None]] = c.close
    else:
        ctx = zmq.asyncio.Context()
        s = ctx.socket(zmq.DEALER)
        s.connect(ep)

        async def one(i: int) -> None:
            await s.send(_request(i))
            _dec.decode(await s.recv())

        async def close() -> None:
            ctx.destroy(linger=0)

    await timed(pl.rtt_warm, one, [])
    mark()
    out = await timed(pl.rtt_n, one, [])
    mark()
    await close()
    return out


def _rtt_sync(ep: str, pl: Plan, mark: Callable[[], None]) -> list[int]:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(ep)
    clock, out = time.perf_counter_ns, []
    for i in range(pl.rtt_warm + pl.rtt_n):
        if i == pl.rtt_warm:
            mark()
        t0 = clock()
        s.send(_request(i))
        _dec.decode(s.recv())
        out.append(clock() - t0)
    mark()
    ctx.destroy(linger=0)
    return out[pl.rtt_warm :]


def run_rtt(kind: str, transport: str, pl: Plan) -> dict[str, Any]:
    """pl.rtt_n round trips after pl.rtt_warm; CPU per round trip of client and server."""
    cpu: list[dict[str, int]] = []
    with echo_server(kind, transport) as (ep, spid):
        pids = {"client": os.getpid(), "server": spid}

        def mark() -> None:
            cpu.append(cpu_of(pids))

        s = (
            _rtt_sync(ep, pl, mark)
            if kind == "sync"
            else asyncio.run(_rtt_async(kind, ep, pl, mark))
        )
    return {"label": RTT_LABELS[kind], "transport": transport, **summary(s),
            "cpu_us": {k: (cpu[1][k] - cpu[0][k]) / pl.rtt_n / 1e3 for k in cpu[0]}}  # fmt: skip


# -- 2. a real machine, interleaved with raw round trips; 3. the in-memory machine --------


@contextlib.contextmanager
def booted_machine(trace: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    """`uvm-machine up`, stopped with SIGINT. => (attach endpoint, machine.json + pgid)."""
    state = Path(tempfile.mkdtemp(prefix="uvm-bench-"))
    env = dict(os.environ)
    if trace:
        env[timing.ENV_VAR] = "1"  # every role times its requests (machine.ipc.timing)
    up = [str(Path(sys.executable).parent / "uvm-machine"), "up", "--ram", "256M"]
    cmd = [*up, "--endpoint", "tcp://127.0.0.1:0", "--state", str(state)]
    line = ["", "", "-"]
    try:
        with started(cmd, signal.SIGINT, "machine", env=env) as line:
            if line[0] != "attach:":
                raise RuntimeError(f"uvm-machine up did not boot: {line}")
            pgid = int(line[2])
            yield line[1], {**json.loads((state / "machine.json").read_text()), "pgid": pgid}
    finally:
        shutil.rmtree(state, ignore_errors=True)
        for seg in Path("/dev/shm").glob(f"uvm-machine-{line[2]}-*"):
            print(f"warning: removing leftover RAM segment {seg}", file=sys.stderr)
            seg.unlink(missing_ok=True)


class Ops:
    """The client operations every setup is measured with, each timed alone."""

    WARM = 64

    async def open(self, m: Machine, n_fault: int) -> Ops:
        self.m, self.p = m, await m.spawn()
        self.mapped = await self.p.mmap(self.WARM * PAGE_SIZE)
        self.fresh, self.next_fresh = await self.p.mmap(n_fault * PAGE_SIZE), 0
        await self.p.touch(self.mapped, self.WARM)
        await self.round({}, {}, 0, 4 * self.WARM, {})
        return self

    async def fault(self, i: int) -> None:
        self.next_fresh += 1
        await self.p.store(self.fresh + (self.next_fresh - 1) * PAGE_SIZE, b"x")

    async def store(self, i: int) -> None:
        await self.p.store(self.mapped + (i % self.WARM) * PAGE_SIZE + 8, b"y")

    async def load(self, i: int) -> None:
        await self.p.load(self.mapped + (i % self.WARM) * PAGE_SIZE, 8)

    async def ping(self, i: int) -> None:
        await self.m.call_role("mmu", CtlPing(h=NO_HEADER))

    async def round(
        self, acc: Samples, cpu: Cpu, n_fault: int, n: int, pids: dict[str, int]
    ) -> None:
        """n_fault faults, then n of each other operation; CPU time of pids per operation."""
        for op in OPS:
            f0, k = self.p.faults, n_fault if op == "fault" else n
            await block(acc, cpu, op, k, getattr(self, op), pids)
            if self.p.faults - f0 != (k if op == "fault" else 0):
                raise AssertionError(f"{op}: {self.p.faults - f0} traps in {k} operations")


async def block(acc: Samples, cpu: Cpu, name: str, n: int,
                op: Callable[[int], Awaitable[object]], pids: dict[str, int]) -> None:  # fmt: skip
    """n operations timed one by one into acc[name]; CPU time of pids into cpu[name]."""
    c0 = cpu_of(pids)
    await timed(n, op, acc.setdefault(name, []))
    c1, d = cpu_of(pids), cpu.setdefault(name, {})
    for k in c1:
        d[k] = d.get(k, 0) + c1[k] - c0[k]


def summarise(acc: Samples, cpu: Cpu) -> dict[str, Any]:
    return {
        op: {**summary(v), "cpu_us": {r: c / len(v) / 1e3 for r, c in cpu.get(op, {}).items()}}
        for op, v in acc.items()
    }


PLACEMENTS = {"all on cpu0": (0, 0), "client cpu0, roles + echo server cpu1": (0, 1)}


async def measure_real(
    ep: str, info: dict[str, Any], echo_ep: str, echo_pid: int, pl: Plan, log: Callable[[str], None]
) -> dict[str, Any]:
    """Rounds of: raw round trips, then faults, stores, loads, pings; then the placements."""
    rtt = await EchoClient().open(echo_ep)
    me, roles = os.getpid(), {r: int(v["pid"]) for r, v in info["roles"].items()}
    mpids = {"client": me, "mmu": roles["mmu"], "uvm": roles["uvm"]}
    rpids = {"client": me, "echo": echo_pid}
    others = [echo_pid, *group_pids(info["pgid"])]
    try:
        async with Machine.attach(ep) as m:
            n_fault = pl.r_fault * (pl.rounds + pl.pinned_rounds * len(PLACEMENTS))
            ops = await Ops().open(m, n_fault)
            await timed(pl.rtt_warm, rtt.one, [])
            acc: Samples = {}
            cpu: Cpu = {}
            ratios = []
            for r in range(pl.rounds):
                await block(acc, cpu, "raw", pl.r_rtt, rtt.one, rpids)
                await ops.round(acc, cpu, pl.r_fault, pl.r_ops, mpids)
                f, r0 = acc["fault"][-pl.r_fault :], acc["raw"][-pl.r_rtt :]
                ratios.append(statistics.median(f) / statistics.median(r0))
                log(f"   round {r + 1}/{pl.rounds}: fault / raw RTT {ratios[-1]:.2f}")
            res = {**summarise(acc, cpu), "fault_over_raw_per_round": ratios}
            res["placements"] = {}
            for name, (c_cpu, o_cpu) in PLACEMENTS.items():
                pin(me, c_cpu)
                for pid in others:
                    pin(pid, o_cpu)
                pacc: Samples = {}
                try:
                    for _ in range(pl.pinned_rounds):
                        await block(pacc, {}, "raw", pl.r_rtt, rtt.one, {})
                        await ops.round(pacc, {}, pl.r_fault, pl.r_ops, {})
                finally:
                    for pid in [me, *others]:
                        pin(pid, None)
                res["placements"][name] = {k: summary(v) for k, v in pacc.items()}
                log(f"   {name}: fault p50 {res['placements'][name]['fault']['p50_us']:.0f} µs")
            await ops.p.exit()
            return res
    finally:
        await rtt.close()


def measure_sim(pl: Plan, trace_faults: int) -> dict[str, Any]:
    """The same client operations, in-process on the in-memory transport, zero latency; then
    (trace_faults > 0) a fault breakdown on a second in-memory machine, timed."""

    async def main(n_fault: int, traced: bool) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        boot = SimMachine.boot(seed=1, ram_bytes=256 << 20, latency_s=(0.0, 0.0))
        async with boot as sim, sim.attach() as m:
            ops = await Ops().open(m, n_fault)
            if traced:
                assert Service.timing is not None
                Service.timing.drain()
                faults = await traced_faults(ops, n_fault)
                tr = Service.timing.drain()
                return breakdown(faults, tr["handled"], tr["calls"])
            acc: Samples = {}
            v0 = loop.time()
            for _ in range(pl.rounds):
                await ops.round(acc, {}, pl.r_fault, pl.r_ops, {})
            return {**summarise(acc, {}), "virtual_s_elapsed": loop.time() - v0}

    res: dict[str, Any] = run_simulation(main(pl.r_fault * pl.rounds, False))
    Service.timing = Peer.timing = timing.Timing()  # every role of the in-memory machine
    try:
        res["breakdown"] = run_simulation(main(trace_faults, True))
    finally:
        Service.timing = Peer.timing = None
    return res


# -- 4. where one fault's time goes --------------------------------------------------------

# (step, kind) of one first-touch fault, from client, mmu and uvm timestamps. A hop runs from
# the sender's call (or its handler's end) until the receiver's handler starts (or its caller
# has resumed): encoding, the transport both ways, and the receiver's loop waking up.
STEPS = [
    ("client: store() -> mmu.store call", "client"),
    ("client -> mmu: mmu.store request", "hop"),
    ("mmu: mmu.store (trap, park, hand the trap over)", "handler"),
    ("mmu -> uvm: pmap.trapwait reply (the trap)", "hop"),
    ("uvm: resolve the trap (uvm_fault, fault-ahead)", "handler"),
    ("uvm -> mmu: pmap.trapwait request (the answer)", "hop"),
    ("mmu: enter, resume the access, reply", "handler"),
    ("mmu -> client: mmu.store reply", "hop"),
    ("client: reply -> store() returns", "client"),
]
Fault = tuple[int, int, list[list[Any]]]


async def traced_faults(ops: Ops, n: int) -> list[Fault]:
    """n first-touch faults: when each store() started and returned, and the client's calls."""
    out = []
    own = Peer.timing is None  # real machine: time this process's calls only here
    tm = Peer.timing = Peer.timing or timing.Timing()
    try:
        for i in range(n):
            n0, t0 = len(tm.calls), time.monotonic_ns()
            await ops.fault(i)
            calls = [list(c) for c in itertools.islice(tm.calls, n0, None) if c[0] == "client"]
            out.append((t0, time.monotonic_ns(), calls))
    finally:
        if own:
            Peer.timing = None
    return out


def breakdown(
    faults: list[Fault], handled: list[list[Any]], calls: list[list[Any]]
) -> dict[str, Any]:
    """Medians (µs) of each of STEPS, of each kind and of the total, over the faults.

    The trap is handed over by the reply to uvm's outstanding pmap.trapwait (sent by the
    mmu at park time, inside the mmu.store handler) and answered by uvm's next trapwait."""
    srv = {(r[0], r[1], r[2]): (r[3], r[4]) for r in handled}  # (tag, sender, msg_id) -> times
    waits = sorted((c[3], c[4], c[2]) for c in calls if c[:2] == ["uvm", "pmap.trapwait"])
    per: list[list[int]] = []
    for t_in, t_out, cs in faults:
        if [c[1] for c in cs] != ["mmu.store"]:
            continue  # e.g. the client's keepalive ping ran meanwhile
        s = srv.get(("mmu.store", "client", cs[0][2]))
        if s is None:
            continue
        # uvm's trapwait that the park answered (its reply left the mmu in the store's
        # handler), then the next one, which carries the answer.
        i = next((i for i, w in enumerate(waits)
                  if (m := srv.get(("pmap.trapwait", "uvm", w[2]))) and s[0] <= m[1] <= s[1]),
                 None)  # fmt: skip
        if i is None or i + 1 >= len(waits):
            continue
        wa, wb = waits[i], waits[i + 1]
        ma, mb = srv[("pmap.trapwait", "uvm", wa[2])], srv.get(("pmap.trapwait", "uvm", wb[2]))
        if mb is None:
            continue
        a0, a1 = cs[0][3], cs[0][4]
        t = [t_in, a0, s[0], ma[1], wa[1], wb[0], mb[0], s[1], a1, t_out]
        per.append([*(y - x for x, y in itertools.pairwise(t)), t_out - t_in])
    if not per:
        return {"n": 0}
    med = [statistics.median(col) / 1e3 for col in zip(*per, strict=True)]
    kinds = {k: [i for i, (_, kk) in enumerate(STEPS) if kk == k] for _, k in STEPS}
    return {"n": len(per), "total_us": med[-1],
            "steps_us": {s: v for (s, _), v in zip(STEPS, med, strict=False)},
            "kinds_us": {k: statistics.median(sum(r[i] for i in ix) for r in per) / 1e3
                         for k, ix in kinds.items()}}  # fmt: skip


def measure_breakdown(n: int) -> dict[str, Any]:
    """n faults on a machine whose roles time their requests; their records come via ctl.dump."""

    async def dump(info: dict[str, Any], role: str) -> dict[str, list[list[Any]]]:
        t = ZmqTransport()
        peer = await Peer(Identity("bench", 7), info["roles"][role]["kernel"]).open(t)
        try:
            rep = await peer.call(CtlDump(h=NO_HEADER), 30.0)
        finally:
            await peer.close()
            await t.close()
        assert isinstance(rep, CtlDumpReply), rep
        tr: dict[str, list[list[Any]]] = rep.state["timings"]
        return tr

    async def main(ep: str, info: dict[str, Any]) -> dict[str, Any]:
        async with Machine.attach(ep) as m:
            ops = await Ops().open(m, n)
            await dump(info, "mmu")
            await dump(info, "uvm")
            faults = await traced_faults(ops, n)
            await ops.p.exit()
        mmu, uvm = await dump(info, "mmu"), await dump(info, "uvm")
        return breakdown(faults, mmu["handled"] + uvm["handled"], uvm["calls"])

    with booted_machine(trace=True) as (ep, info):
        out: dict[str, Any] = asyncio.run(main(ep, info))
    return out


# -- report ---------------------------------------------------------------------------------


def fmt(x: Any) -> str:
    if isinstance(x, float):
        return "-" if x != x else (f"{x:,.1f}" if abs(x) < 1e4 else f"{x:,.0f}")
    return str(x)


def table(head: str, rows: Sequence[Sequence[Any]]) -> str:
    cols = head.split("|")
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(out + ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows])


def report(res: dict[str, Any]) -> str:
    h, real, sim = res["host"], res["real"], res["sim"]
    bd, bs = res["breakdown"], sim["breakdown"]
    raw, fault = real["raw"]["p50_us"], real["fault"]["p50_us"]
    stat = ("p50_us", "p99_us", "mean_us", "rate")
    out = [f"# bench_machine ({res['mode']}), {res['started']}\n\n{h['cpus']} vCPUs "
           f"({h['cpu_model']}), Python {h['python']}, pyzmq {h['pyzmq']} / libzmq {h['libzmq']}; "
           f"load average before: {res['loadavg_before']}\n",
           "## Raw round trips (echo server in another process; 30 B msgpack request, 12 B "
           "reply)\n",
           table("stack|transport|n|p50 µs|p99 µs|mean µs|rt/s|CPU µs/rt client (zmq I/O "
                 "thread)|server (zmq I/O thread)",
                 [[r["label"], r["transport"], r["n"], *(r[k] for k in stat),
                   *(f"{c[k]:.0f} ({c[k + ' zmq']:.0f})" for k in ("client", "server"))]
                  for r in res["rtt"] if (c := r["cpu_us"])]),
           f"\nRaw RTT (roles' stack, tcp) measured in rounds with the machine below: p50 "
           f"**{raw:.1f} µs**, p99 {real['raw']['p99_us']:.0f} µs ({real['raw']['n']} round trips)."
           " Every ratio below uses it.\n",
           "## Client operations: real machine (tcp) vs in-memory transport\n",
           table("operation|real p50 µs|p99|mean|ops/s|p50 ÷ raw RTT|in-memory p50 µs|p99|mean|"
                 "ops/s|real ÷ in-memory (p50)",
                 [[OPS[op], *(real[op][k] for k in stat), real[op]["p50_us"] / raw,
                   *(sim[op][k] for k in stat), real[op]["p50_us"] / sim[op]["p50_us"]]
                  for op in OPS])]  # fmt: skip
    ratio, rr = fault / raw, real["fault_over_raw_per_round"]
    out.append(
        f"\n**First-touch fault p50 = {ratio:.2f}x the raw RTT**: the <= 2.5x aim is "
        f"{'met' if ratio <= 2.5 else 'NOT met'} (per round: {min(rr):.2f}-{max(rr):.2f}x). A "
        f"fault is 4 one-way hops by design (client -> mmu -> uvm -> mmu -> client: 2 round "
        f"trips); it costs {fault / real['ping']['p50_us']:.2f} ctl.ping round trips. 2 x raw "
        f"RTT + the in-memory fault = {2 * raw + sim['fault']['p50_us']:.0f} µs (measured "
        f"{fault:.0f} µs). In-memory virtual time moved {sim['virtual_s_elapsed']:.6f} s.\n\n"
        "CPU time per operation (all threads of each process, schedstat), µs:\n"
    )
    cpu = [(op, real[op]["cpu_us"]) for op in ("raw", *OPS)]
    out.append(table("operation|client|mmu (raw: echo server)|uvm|sum|of which zmq I/O threads|"
                     "mean latency",
                     [[op, c["client"], c.get("mmu", c.get("echo")), c.get("uvm", 0.0),
                       sum(v for k, v in c.items() if " " not in k),
                       sum(v for k, v in c.items() if k.endswith(" zmq")), real[op]["mean_us"]]
                      for op, c in cpu]))  # fmt: skip
    out.append("\n## CPU placement (short rounds; unpinned = the rows above)\n")
    pl = [("unpinned", real), *real["placements"].items()]
    out.append(table("placement|raw RTT p50 µs|fault p50 µs|fault ÷ raw|store p50 µs",
                     [[n, p["raw"]["p50_us"], p["fault"]["p50_us"],
                       p["fault"]["p50_us"] / p["raw"]["p50_us"], p["store"]["p50_us"]]
                      for n, p in pl]))  # fmt: skip
    if bd.get("n") and bs.get("n"):
        out.append(f"\n## Where one first-touch fault's time goes (medians over {bd['n']} faults "
                   f"on real processes, unpinned, and {bs['n']} in memory)\n")  # fmt: skip
        rows = [[s, k, bd["steps_us"][s], bs["steps_us"][s]] for s, k in STEPS]
        rows += [
            [f"*{k}* (per fault)", "", v, bs["kinds_us"][k]] for k, v in bd["kinds_us"].items()
        ]
        rows.append(["*total* (store() call to return)", "", bd["total_us"], bs["total_us"]])
        out.append(table("step|kind|real µs|in-memory µs", rows))
    out.append("\n## Host load per phase\n")
    out.append(table("phase|host busy %|other processes %|loadavg 1m",
                     [list(s.values()) for s in res["load"]]))  # fmt: skip
    return "\n".join(out)


# -- main -------------------------------------------------------------------------------------


def run(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    pl = QUICK if quick else DEFAULT
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "")
    res: dict[str, Any] = {
        "mode": "quick" if quick else "default", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()), "plan": asdict(pl),
        "host": {"cpus": len(ALL_CPUS), "cpu_model": model, "kernel": platform.release(),
                 "python": platform.python_version(), "pyzmq": zmq.__version__,
                 "libzmq": zmq.zmq_version(), "msgspec": msgspec.__version__},
    }  # fmt: skip
    LOAD.sample("")
    LOAD.samples.clear()
    log("1. raw round trips")
    specs = [("transport", "tcp"), ("asyncio", "tcp"), ("sync", "tcp")]
    res["rtt"] = [run_rtt(k, t, pl) for k, t in specs + ([] if quick else [("transport", "ipc")])]
    LOAD.sample("raw round trips")
    log("2. real machine, in rounds with raw round trips")
    with echo_server("transport") as (eep, epid), booted_machine() as (ep, info):
        res["real"] = asyncio.run(measure_real(ep, info, eep, epid, pl, log))
    LOAD.sample("real machine")
    log("3. in-memory transport (SimMachine)")
    res["sim"] = measure_sim(pl, pl.trace_faults)
    LOAD.sample("in-memory")
    log("4. fault breakdown (traced machine)")
    res["breakdown"] = measure_breakdown(pl.trace_faults)
    LOAD.sample("breakdown")
    res["load"] = LOAD.samples
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (< 20 s): smoke test / CI")
    ap.add_argument("--json", type=Path, help="write results here (default bench/results/...)")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="first wait up to S seconds for host CPU use < 15 %%")  # fmt: skip
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return serve(a.serve, a.endpoint)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through every finally: servers, machines stop

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:5.1f}s] {msg}", file=sys.stderr, flush=True)

    idle = LOAD.wait_idle(a.wait_idle, 15.0, log) if a.wait_idle > 0 else float("nan")
    res = {**run(a.quick, log), "host_busy_pct_before": idle}
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    out = a.json or BENCH_DIR / "results" / f"bench_machine-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(report(res))
    print(f"\n(elapsed {res['elapsed_s']} s; JSON: {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
