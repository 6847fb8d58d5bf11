#!/usr/bin/env python3
"""How fast is the machine's first-touch fault, and where does its time go?

    .venv/bin/python bench/bench_machine.py [--quick] [--json PATH]

One run measures, on this host:

 1. raw ZeroMQ request/reply round trips between two processes, tiny msgpack
    payloads, tcp loopback (and ipc): zmq.asyncio DEALER -> zmq.asyncio ROUTER
    (the roles' stack: the reference "raw RTT"), blocking zmq, asyncio with a
    hand-rolled add_reader loop, and the machine's own Peer -> ZmqServer ->
    Service stack with a trivial handler (ctl.ping);
 2. a real machine (`uvm-machine up`, booted and stopped here): first-touch
    fault latency (one Process.store to a never-touched page), store and load
    latency to mapped pages, CPU time per operation in each process, under
    several CPU placements (pinning) and in blocks (is it bimodal?);
 3. the same client code on SimMachine (one process, in-memory transport,
    latency (0, 0)), on its virtual-time loop and on a stock asyncio loop;
 4. a timestamped breakdown of one fault over real processes (every hop and
    handler, clocks comparable across processes), and candidate optimisations
    applied by monkeypatching (bench/uvm_bench_patches.py; machine/ untouched)
    to the client and, through bench/_rolepatch/sitecustomize.py, to the role
    processes of a machine booted for that purpose.

It prints markdown tables and writes JSON (default bench/results/, git-ignored).
Every process it starts is stopped before it exits (and checked).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import zmq
import zmq.asyncio

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import uvm_bench_patches as patches  # noqa: E402

from machine.client import Machine  # noqa: E402
from machine.ipc.inmemory import run_simulation  # noqa: E402
from machine.ipc.peer import Identity, Peer  # noqa: E402
from machine.ipc.service import Service  # noqa: E402
from machine.ipc.zmqtransport import ZmqTransport  # noqa: E402
from machine.params import PAGE_SIZE  # noqa: E402
from machine.proto import (  # noqa: E402
    CtlDump,
    CtlDumpReply,
    CtlPing,
    Header,
    MmuAccessReply,
    MmuStore,
    UvmFault,
    decode_reply,
    decode_request,
    encode,
    with_header,
)
from machine.proto.types import Prot  # noqa: E402
from machine.testing import SimMachine  # noqa: E402

_H = Header(msg_id=0, sender="", incarnation=0)
ALL_PATCHES = "nowaitfor,eager,rawzmq"
STREAMS_PATCHES = "streams,nowaitfor,eager"
KFAULT_PATCHES = "kfault,streams,nowaitfor,eager"
RESULTS_DIR = BENCH_DIR / "results"
_now = time.monotonic_ns  # CLOCK_MONOTONIC: the same clock in every process of the host


# =============================================================================
# statistics
# =============================================================================


def pct(sorted_ns: Sequence[int], q: float) -> float:
    """q-quantile (0..1) of sorted samples, nearest rank."""
    if not sorted_ns:
        return float("nan")
    i = min(len(sorted_ns) - 1, max(0, round(q * (len(sorted_ns) - 1))))
    return float(sorted_ns[i])


def summary(ns: Sequence[int], wall_ns: int | None = None) -> dict[str, float]:
    """Latency summary in µs; rate = operations per second of wall time."""
    s = sorted(ns)
    if not s:
        return {"n": 0}
    total = wall_ns if wall_ns is not None else sum(s)
    return {
        "n": len(s),
        "mean_us": statistics.fmean(s) / 1e3,
        "p50_us": pct(s, 0.50) / 1e3,
        "p90_us": pct(s, 0.90) / 1e3,
        "p99_us": pct(s, 0.99) / 1e3,
        "min_us": s[0] / 1e3,
        "max_us": s[-1] / 1e3,
        "rate_per_s": len(s) / (total / 1e9) if total else float("nan"),
    }


def looks_bimodal(values: Sequence[float]) -> bool:
    """Crude: the sorted values split in two groups with a gap of > 30 % between them."""
    v = sorted(x for x in values if x == x)
    if len(v) < 3 or v[-1] < 1.4 * v[0]:
        return False
    return any(b > 1.3 * a for a, b in itertools.pairwise(v))


# =============================================================================
# processes, CPUs, load
# =============================================================================

ALL_CPUS: tuple[int, ...] = tuple(sorted(os.sched_getaffinity(0)))


def tids(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def pin(pid: int, cpus: Sequence[int] | None) -> None:
    """Set the affinity of every thread of pid (zmq I/O threads included)."""
    want = set(cpus) if cpus else set(ALL_CPUS)
    for t in tids(pid):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(t, want)


def _stat_fields(path: str) -> list[str]:
    with open(path) as f:
        raw = f.read()
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on


def last_cpu(pid: int) -> int:
    """The CPU the main thread of pid last ran on."""
    try:
        return int(_stat_fields(f"/proc/{pid}/stat")[36])  # field 39
    except (OSError, ValueError, IndexError):
        return -1


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of pid (schedstat: ns)."""
    total = 0
    for t in tids(pid):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            f = _stat_fields(f"/proc/{d}/stat")
        except (OSError, ValueError):
            continue
        if int(f[2]) == pgid and f[0] != "Z":
            out.append(int(d))
    return out


#: CPU time of machine processes this bench started, read just before they were stopped
#: (they are not our children, so RUSAGE_CHILDREN never sees them).
_MACHINE_CPU_NS = [0]


def _host_cpu_s() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of the whole host since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = v
    hz = os.sysconf("SC_CLK_TCK")
    busy = user + nice + system + irq + softirq
    return busy / hz, steal / hz, (busy + idle + iowait + steal) / hz


def _ours_s() -> float:
    me, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime + _MACHINE_CPU_NS[0] / 1e9


def wait_idle(max_wait_s: float, below_pct: float, log: Callable[[str], None]) -> float:
    """Wait until the host's CPU use over 1 s is below below_pct (at most max_wait_s).

    => the last 1-s busy percentage seen.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        b0, _, t0 = _host_cpu_s()
        time.sleep(1.0)
        b1, _, t1 = _host_cpu_s()
        busy = 100 * (b1 - b0) / max(t1 - t0, 1e-9)
        if busy < below_pct or time.monotonic() > deadline:
            log(f"host CPU use {busy:.0f} % (waited for < {below_pct:.0f} %)")
            return busy
        log(f"host CPU use {busy:.0f} %, waiting for < {below_pct:.0f} % ...")


class LoadMonitor:
    """How busy the host was during each phase, and how much of that was someone else.

    The host is shared (2 vCPUs): another job's CPU use shows up directly in
    cross-process latencies, so every result should be read with this table.
    """

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.host0 = _host_cpu_s()
        self.ours0 = _ours_s()
        self.samples: list[dict[str, Any]] = []

    def sample(self, label: str) -> dict[str, Any]:
        now, host, ours = time.monotonic(), _host_cpu_s(), _ours_s()
        busy, steal, total = (a - b for a, b in zip(host, self.host0, strict=True))
        total = max(total, 1e-9)
        d_ours = ours - self.ours0
        s = {
            "label": label,
            "seconds": round(now - self.t0, 2),
            "host_busy_pct": round(100 * busy / total, 1),
            "ours_pct": round(100 * min(d_ours, busy) / total, 1),
            "others_pct": round(100 * max(busy - d_ours, 0.0) / total, 1),
            "steal_pct": round(100 * steal / total, 2),
            "loadavg_1m": os.getloadavg()[0],
        }
        self.samples.append(s)
        self.t0, self.host0, self.ours0 = now, host, ours
        return s


# =============================================================================
# 1. raw request/reply round trips
# =============================================================================

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()


def _request(i: int) -> bytes:
    return _enc.encode({"t": "ping", "id": i, "va": 0x1000_0000})  # 30 B


def _reply(req: bytes) -> bytes:
    return _enc.encode({"re": _dec.decode(req)["id"], "ok": True})  # 12 B


class _BenchService(Service):
    role = "bench"
    serves = ()


async def _serve_asyncio(ep: str, ready: Callable[[str], None]) -> None:
    ctx = zmq.asyncio.Context()
    s = ctx.socket(zmq.ROUTER)
    s.bind(ep)
    ready(str(s.getsockopt_string(zmq.LAST_ENDPOINT)))
    while True:
        ident, payload = await s.recv_multipart()
        await s.send_multipart([ident, _reply(payload)])


async def _serve_reader(ep: str, ready: Callable[[str], None]) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.bind(ep)
    loop = asyncio.get_running_loop()

    def drain() -> None:
        while patches._events(s) & zmq.POLLIN:
            try:
                ident, payload = s.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            s.send_multipart([ident, _reply(payload)], zmq.NOBLOCK)

    loop.add_reader(s.FD, drain)
    ready(str(s.getsockopt_string(zmq.LAST_ENDPOINT)))
    drain()
    await loop.create_future()


async def _serve_stream(ep: str, ready: Callable[[str], None]) -> None:
    loop = asyncio.get_running_loop()

    def factory() -> patches.FrameProtocol:
        return patches.FrameProtocol(lambda p, frame: p.write(_reply(frame)))

    kind, where, port = patches._split_endpoint(ep)
    if kind == "tcp":
        srv = await loop.create_server(factory, where, port)
        ready(f"tcp://{where}:{srv.sockets[0].getsockname()[1]}")
    else:
        await loop.create_unix_server(factory, where)
        ready(ep)
    await loop.create_future()


async def _serve_service(ep: str, ready: Callable[[str], None]) -> None:
    svc = _BenchService(ZmqTransport(), rng=random.Random(1))
    eps = await svc.start(None, ep, "tcp://127.0.0.1:*")
    ready(eps["user"])
    await svc.stopped.wait()


def serve(kind: str, ep: str, patch_spec: str) -> int:
    """Entry point of the echo-server process (`--serve KIND`)."""

    def ready(bound: str) -> None:
        print(f"ready {bound}", flush=True)

    patches.apply(patch_spec)
    if kind == "sync":
        ctx = zmq.Context()
        s = ctx.socket(zmq.ROUTER)
        s.bind(ep)
        ready(str(s.getsockopt_string(zmq.LAST_ENDPOINT)))
        while True:
            ident, payload = s.recv_multipart()
            s.send_multipart([ident, _reply(payload)])
    servers: dict[str, Callable[[str, Callable[[str], None]], Awaitable[None]]] = {
        "asyncio": _serve_asyncio,
        "reader": _serve_reader,
        "stream": _serve_stream,
        "service": _serve_service,
    }
    asyncio.run(servers[kind](ep, ready))  # type: ignore[arg-type]
    return 0


@contextlib.contextmanager
def echo_server(kind: str, transport: str, patch_spec: str = "") -> Iterator[tuple[str, int]]:
    """Start an echo server process; yields (endpoint, pid); always stops it."""
    sock = ""
    if transport == "tcp":
        ep = "tcp://127.0.0.1:*"
    else:
        sock = tempfile.mktemp(prefix="uvm-bench-", suffix=".sock", dir="/tmp")
        ep = f"ipc://{sock}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--endpoint", ep]
    cmd += ["--patches", patch_spec or "none"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            raise RuntimeError(f"echo server {kind} did not start ({line!r})")
        yield line[1], proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if sock:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sock)


def _rtt_sync(ep: str, n: int, warm: int, cpus: Sequence[int] | None) -> list[int]:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(ep)
    if cpus is not None:
        pin(os.getpid(), cpus)
    out: list[int] = []
    clock = time.perf_counter_ns
    try:
        for i in range(warm + n):
            t0 = clock()
            s.send(_request(i))
            _dec.decode(s.recv())
            t1 = clock()
            if i >= warm:
                out.append(t1 - t0)
    finally:
        s.close(0)
        ctx.term()
    return out


async def _rtt_asyncio(ep: str, n: int, warm: int, cpus: Sequence[int] | None) -> list[int]:
    ctx = zmq.asyncio.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(ep)
    if cpus is not None:
        pin(os.getpid(), cpus)
    out: list[int] = []
    clock = time.perf_counter_ns
    try:
        for i in range(warm + n):
            t0 = clock()
            await s.send(_request(i))
            _dec.decode(await s.recv())
            t1 = clock()
            if i >= warm:
                out.append(t1 - t0)
    finally:
        s.close(0)
        ctx.term()
    return out


async def _rtt_reader(ep: str, n: int, warm: int, cpus: Sequence[int] | None) -> list[int]:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(ep)
    if cpus is not None:
        pin(os.getpid(), cpus)
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[bytes]] = []

    def drain() -> None:
        while patches._events(s) & zmq.POLLIN:
            try:
                data = s.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if waiter:
                waiter.pop().set_result(data)

    loop.add_reader(s.FD, drain)
    out: list[int] = []
    clock = time.perf_counter_ns
    try:
        for i in range(warm + n):
            t0 = clock()
            fut = loop.create_future()
            waiter.append(fut)
            s.send(_request(i), zmq.NOBLOCK)
            if patches._events(s) & zmq.POLLIN:
                drain()
            _dec.decode(await fut)
            t1 = clock()
            if i >= warm:
                out.append(t1 - t0)
    finally:
        loop.remove_reader(s.FD)
        s.close(0)
        ctx.term()
    return out


async def _rtt_stream(ep: str, n: int, warm: int, cpus: Sequence[int] | None) -> list[int]:
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[bytes]] = []

    def factory() -> patches.FrameProtocol:
        return patches.FrameProtocol(lambda _p, frame: waiter.pop().set_result(frame))

    kind, where, port = patches._split_endpoint(ep)
    if kind == "tcp":
        tr, proto = await loop.create_connection(factory, where, port)
    else:
        tr, proto = await loop.create_unix_connection(factory, where)
    if cpus is not None:
        pin(os.getpid(), cpus)
    out: list[int] = []
    clock = time.perf_counter_ns
    try:
        for i in range(warm + n):
            t0 = clock()
            fut = loop.create_future()
            waiter.append(fut)
            proto.write(_request(i))
            _dec.decode(await fut)
            t1 = clock()
            if i >= warm:
                out.append(t1 - t0)
    finally:
        tr.close()
    return out


async def _rtt_service(ep: str, n: int, warm: int, cpus: Sequence[int] | None) -> list[int]:
    t = ZmqTransport()
    peer = await Peer(Identity("client", 1), ep).open(t)
    if cpus is not None:
        pin(os.getpid(), cpus)
    out: list[int] = []
    clock = time.perf_counter_ns
    req = CtlPing(h=_H)
    try:
        for i in range(warm + n):
            t0 = clock()
            await peer.call(req)
            t1 = clock()
            if i >= warm:
                out.append(t1 - t0)
    finally:
        await peer.close()
        await t.close()
    return out


RTT_CLIENTS: dict[str, Callable[[str, int, int, Sequence[int] | None], Any]] = {
    "sync": _rtt_sync,
    "asyncio": _rtt_asyncio,
    "reader": _rtt_reader,
    "stream": _rtt_stream,
    "service": _rtt_service,
}
RTT_LABELS = {
    "sync": "blocking zmq DEALER -> blocking ROUTER",
    "asyncio": "zmq.asyncio DEALER -> zmq.asyncio ROUTER (raw RTT)",
    "reader": "asyncio + add_reader(zmq FD) both ends",
    "stream": "asyncio Protocol both ends, no zmq (length-prefixed)",
    "service": "machine stack: Peer.call -> ZmqServer -> Service (ctl.ping)",
}


def run_rtt(
    kind: str,
    transport: str,
    n: int,
    warm: int,
    placement: str = "unpinned",
    patch_spec: str = "",
) -> dict[str, Any]:
    """One echo-server process, n round trips from this process."""
    cpus_client: Sequence[int] | None = None
    cpus_server: Sequence[int] | None = None
    if placement == "same core":
        cpus_client = cpus_server = [ALL_CPUS[0]]
    elif placement == "cross core":
        cpus_client, cpus_server = [ALL_CPUS[0]], [ALL_CPUS[1]]
    applied = patches.apply(patch_spec)
    try:
        with echo_server(kind, transport, patch_spec) as (ep, spid):
            if cpus_server is not None:
                pin(spid, cpus_server)
            c0, s0 = cpu_ns(os.getpid()), cpu_ns(spid)
            fn = RTT_CLIENTS[kind]
            if kind == "sync":
                samples: list[int] = fn(ep, n, warm, cpus_client)
            else:
                samples = asyncio.run(fn(ep, n, warm, cpus_client))
            c1, s1 = cpu_ns(os.getpid()), cpu_ns(spid)
            if cpus_client is not None:
                pin(os.getpid(), None)
    finally:
        patches.undo()
    res: dict[str, Any] = {
        "kind": kind,
        "label": RTT_LABELS[kind] + (f" + {','.join(applied)}" if applied else ""),
        "transport": transport,
        "placement": placement,
        "patches": list(applied),
        **summary(samples),
        "cpu_client_us": (c1 - c0) / (warm + n) / 1e3,
        "cpu_server_us": (s1 - s0) / (warm + n) / 1e3,
    }
    return res


# =============================================================================
# 2. a real machine
# =============================================================================


@dataclass
class BootedMachine:
    endpoint: str
    pid: int
    state: Path
    info: dict[str, Any]
    patches: tuple[str, ...]
    role_pids: dict[str, int] = field(default_factory=dict)

    def kernel_endpoint(self, role: str) -> str:
        return str(self.info["roles"][role]["kernel"])


def _uvm_machine_cmd() -> list[str]:
    script = Path(sys.executable).parent / "uvm-machine"
    return [str(script)] if script.exists() else [sys.executable, "-m", "machine"]


@contextlib.contextmanager
def booted_machine(
    endpoint_kind: str = "tcp", patch_spec: str = "", ram: str = "64M"
) -> Iterator[BootedMachine]:
    """`uvm-machine up` in its own session; stopped (and checked) on the way out."""
    state = Path(tempfile.mkdtemp(prefix="uvm-bench-"))
    ep = "tcp://127.0.0.1:0" if endpoint_kind == "tcp" else f"ipc://{state}/attach.sock"
    env = dict(os.environ)
    names = patches.parse(patch_spec)
    if names:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(BENCH_DIR / "_rolepatch"), *filter(None, [env.get("PYTHONPATH", "")])]
        )
        env[patches.ENV_VAR] = ",".join(names)
    cmd = [*_uvm_machine_cmd(), "up", "--ram", ram, "--endpoint", ep, "--state", str(state)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    pgid = proc.pid
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "attach:":
            raise RuntimeError(f"uvm-machine up did not boot: {line!r} (status {proc.poll()})")
        info = json.loads((state / "machine.json").read_text())
        bm = BootedMachine(line[1], proc.pid, state, info, names)
        bm.role_pids = {r: int(v["pid"]) for r, v in info["roles"].items()}
        yield bm
    finally:
        _stop_machine(proc, pgid, state)


def _stop_machine(proc: subprocess.Popen[str], pgid: int, state: Path) -> None:
    _MACHINE_CPU_NS[0] += sum(cpu_ns(pid) for pid in group_pids(pgid) if pid != proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            print(f"warning: uvm-machine up (pid {proc.pid}) ignored SIGINT", file=sys.stderr)
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    deadline = time.monotonic() + 5
    left = group_pids(pgid)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = group_pids(pgid)
    for pid in left:  # only processes of the machine this bench started
        print(f"warning: killing leftover machine process {pid}", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for seg in Path("/dev/shm").glob(f"uvm-machine-{proc.pid}-*"):
        print(f"warning: removing leftover RAM segment {seg}", file=sys.stderr)
        seg.unlink(missing_ok=True)
    shutil.rmtree(state, ignore_errors=True)


PLACEMENTS: dict[str, dict[str, list[int]] | None] = {
    "unpinned": None,
    "all on cpu0": {"client": [0], "mmu": [0], "uvm": [0], "other": [0]},
    "client cpu0, roles cpu1": {"client": [0], "mmu": [1], "uvm": [1], "other": [1]},
    "client+mmu cpu0, uvm cpu1": {"client": [0], "mmu": [0], "uvm": [1], "other": []},
}


def place_machine(bm: BootedMachine, placement: str) -> None:
    spec = PLACEMENTS[placement]
    by_pid = {pid: role for role, pid in bm.role_pids.items()}
    for pid in group_pids(bm.pid):
        role = by_pid.get(pid, "other")
        cpus = None if spec is None else spec.get(role, spec["other"])
        pin(pid, [ALL_CPUS[c] for c in cpus] if cpus else None)


def place_client(placement: str) -> None:
    spec = PLACEMENTS[placement]
    cpus = None if spec is None else spec["client"]
    pin(os.getpid(), [ALL_CPUS[c] for c in cpus] if cpus else None)


@dataclass
class OpsConfig:
    n_fault: int
    n_ops: int
    blocks: int = 1
    warm: int = 64
    keep_samples: bool = False


async def client_ops(
    m: Machine,
    cfg: OpsConfig,
    pids: dict[str, int] | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> dict[str, Any]:
    """First-touch faults, then stores and loads to mapped pages, timed one by one.

    pids (real machine): CPU time per process is read around each phase, and
    the CPU each process last ran on is sampled after every block.
    """
    p = await m.spawn()
    wva = await p.mmap(cfg.warm * PAGE_SIZE, prot="rw")
    for i in range(cfg.warm):
        await p.store(wva + i * PAGE_SIZE, b"w")
    for i in range(4 * cfg.warm):
        await p.store(wva + (i % cfg.warm) * PAGE_SIZE, b"w")
        await p.load(wva + (i % cfg.warm) * PAGE_SIZE, 8)
    va = await p.mmap(cfg.n_fault * PAGE_SIZE, prot="rw")
    procs = {"client": os.getpid(), **(pids or {})}
    out: dict[str, Any] = {"blocks": []}

    async def phase(name: str, n: int, op: Callable[[int], Awaitable[Any]]) -> None:
        c0 = {r: cpu_ns(pid) for r, pid in procs.items()} if pids else {}
        f0 = p.faults
        samples: list[int] = []
        per_block = max(1, n // cfg.blocks)
        w0 = clock()
        for i in range(n):
            t0 = clock()
            await op(i)
            samples.append(clock() - t0)
            if pids and cfg.blocks > 1 and (i + 1) % per_block == 0:
                blk = sorted(samples[-per_block:])
                out["blocks"].append(
                    {
                        "op": name,
                        "p50_us": pct(blk, 0.5) / 1e3,
                        "cpus": {r: last_cpu(pid) for r, pid in procs.items()},
                    }
                )
        wall = clock() - w0
        out[name] = summary(samples, wall)
        out[name]["faults"] = p.faults - f0
        if cfg.keep_samples:
            out[name]["samples"] = samples
        if pids:
            out[name]["cpu_us_per_op"] = {
                r: (cpu_ns(pid) - c0[r]) / n / 1e3 for r, pid in procs.items()
            }

    async def fault(i: int) -> None:
        await p.store(va + i * PAGE_SIZE, b"x")

    async def store(i: int) -> None:
        await p.store(va + (i % cfg.n_fault) * PAGE_SIZE + 8, b"y")

    async def load(i: int) -> None:
        await p.load(va + (i % cfg.n_fault) * PAGE_SIZE, 8)

    await phase("fault", cfg.n_fault, fault)
    await phase("store", cfg.n_ops, store)
    await phase("load", cfg.n_ops, load)
    # kfault (bench patch): the mmu resolves traps itself, the client sees none
    want = 0 if patches.F.kfault else cfg.n_fault
    if out["fault"]["faults"] != want or out["store"]["faults"] or out["load"]["faults"]:
        raise AssertionError(f"unexpected fault counts: {out}")
    await p.exit()
    return out


def measure_machine(
    bm: BootedMachine, placement: str, cfg: OpsConfig, patch_spec: str = ""
) -> dict[str, Any]:
    place_machine(bm, placement)

    async def go() -> dict[str, Any]:
        async with Machine.attach(bm.endpoint) as m:
            place_client(placement)
            try:
                pids = {"mmu": bm.role_pids["mmu"], "uvm": bm.role_pids["uvm"]}
                return await client_ops(m, cfg, pids)
            finally:
                place_client("unpinned")

    patches.apply(patch_spec)
    try:
        res = asyncio.run(go())
    finally:
        patches.undo()
        place_machine(bm, "unpinned")
    return {"placement": placement, "patches": list(patches.parse(patch_spec)), **res}


def measure_variants(
    specs: Sequence[str], placements: Sequence[str], rounds: int, block: OpsConfig
) -> list[dict[str, Any]]:
    """A/B/C... interleaved: one machine per patch set (and one as shipped), all booted at
    once, measured in rotating order, `rounds` times, so that a change in the host's load
    hits every variant alike. Samples are pooled over the rounds.
    """
    names = ["", *specs]
    block = OpsConfig(**{**block.__dict__, "keep_samples": True})
    pooled: dict[tuple[str, str], dict[str, list[int]]] = {}
    per_round: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        machines = {spec: stack.enter_context(booted_machine("tcp", spec)) for spec in names}
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for spec in order:
                for placement in placements:
                    res = measure_machine(machines[spec], placement, block, spec)
                    acc = pooled.setdefault(
                        (spec, placement), {"fault": [], "store": [], "load": []}
                    )
                    for op in acc:
                        acc[op] += res[op]["samples"]
                    per_round.setdefault((spec, placement), []).append(res["fault"]["p50_us"])
                    cpu.setdefault((spec, placement), []).append(res["fault"]["cpu_us_per_op"])
    out = []
    for (spec, placement), acc in pooled.items():
        row: dict[str, Any] = {
            "patches": list(patches.parse(spec)),
            "placement": placement,
            "endpoint": "tcp",
            "rounds": rounds,
            "fault_p50_per_round_us": per_round[(spec, placement)],
            "fault_cpu_us": {
                k: statistics.fmean(c[k] for c in cpu[(spec, placement)])
                for k in cpu[(spec, placement)][0]
            },
        }
        for op, samples in acc.items():
            row[op] = summary(samples)
        out.append(row)
    return out


# -- client-side experiments (existing protocol, no patch) ---------------------------


async def _prefault_and_window(m: Machine, n: int, windows: Sequence[int]) -> dict[str, Any]:
    """(a) call uvm.fault before the first store (saves the trap round trip);
    (b) W first-touch stores in flight at once (asyncio.gather)."""
    out: dict[str, Any] = {}
    p = await m.spawn()
    va = await p.mmap(n * PAGE_SIZE, prot="rw")
    samples = []
    clock = time.perf_counter_ns
    w0 = clock()
    for i in range(n):
        a = va + i * PAGE_SIZE
        t0 = clock()
        await m.call_role("uvm", UvmFault(h=_H, asid=p.asid, va=a, access=int(Prot.WRITE)))
        await p.store(a, b"x")
        samples.append(clock() - t0)
    out["prefault"] = summary(samples, clock() - w0)
    await p.exit()
    for w in windows:
        p = await m.spawn()
        va = await p.mmap(n * PAGE_SIZE, prot="rw")
        f0 = p.faults
        w0 = clock()
        for b in range(0, n, w):
            await asyncio.gather(
                *(p.store(va + i * PAGE_SIZE, b"x") for i in range(b, min(n, b + w)))
            )
        wall = clock() - w0
        out[f"window {w}"] = {
            "n": n,
            "us_per_page": wall / n / 1e3,
            "rate_per_s": n / (wall / 1e9),
            "faults": p.faults - f0,
        }
        await p.exit()
    return out


def measure_client_experiments(bm: BootedMachine, n: int, windows: Sequence[int]) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with Machine.attach(bm.endpoint) as m:
            return await _prefault_and_window(m, n, windows)

    return asyncio.run(go())


# =============================================================================
# 3. the same on SimMachine (one process, in-memory transport)
# =============================================================================


def measure_sim(cfg: OpsConfig, virtual: bool, patch_spec: str = "") -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        boot = SimMachine.boot(seed=1, ram_bytes=64 << 20, latency_s=(0.0, 0.0))
        async with boot as sim, sim.attach() as m:
            v0 = loop.time()
            res = await client_ops(m, cfg)
            res["virtual_s_elapsed"] = loop.time() - v0
            return res

    patches.apply(patch_spec)
    try:
        res = run_simulation(go()) if virtual else asyncio.run(go())
    finally:
        patches.undo()
    return {
        "loop": "VirtualTimeLoop" if virtual else "stock asyncio loop",
        "patches": list(patches.parse(patch_spec)),
        **res,
    }


# =============================================================================
# 4. breakdown of one fault (trace patch, real processes)
# =============================================================================

_REQ = "encode + zmq send + I/O threads + kernel + wake-up + zmq recv"
_REP = "zmq send + I/O threads + kernel + wake-up + zmq recv"
SEGMENTS: list[tuple[str, str]] = [
    ("lib.enter", "client: store() until the first mmu.store call starts"),
    ("s1.req", f"client -> mmu (tcp): {_REQ}"),
    ("s1.sched", "mmu: received -> handler starts (task)"),
    ("s1.handle", "mmu: decode + dispatch + store (traps) + encode"),
    ("s1.rep", f"mmu -> client (tcp): {_REP}"),
    ("s1.resume", "client: reply decoded -> caller resumes (future, wait_for)"),
    ("lib.trap", "client: trap -> uvm.fault call starts"),
    ("f.req", f"client -> uvm (tcp): {_REQ}"),
    ("f.sched", "uvm: received -> handler starts (task)"),
    ("f.pre", "uvm: decode + dispatch + fault + zero-fill until pmap.enter call"),
    ("e.req", f"uvm -> mmu (ipc): {_REQ}"),
    ("e.sched", "mmu: received -> handler starts (task)"),
    ("e.handle", "mmu: decode + dispatch + enter + encode"),
    ("e.rep", f"mmu -> uvm (ipc): {_REP}"),
    ("e.resume", "uvm: reply decoded -> fault handler resumes"),
    ("f.post", "uvm: after pmap.enter: unbusy + encode reply"),
    ("f.rep", f"uvm -> client (tcp): {_REP}"),
    ("f.resume", "client: reply decoded -> caller resumes"),
    ("lib.retry", "client: fault done -> retry mmu.store call starts"),
    ("s2.req", f"client -> mmu (tcp): {_REQ}"),
    ("s2.sched", "mmu: received -> handler starts (task)"),
    ("s2.handle", "mmu: decode + dispatch + store + encode"),
    ("s2.rep", f"mmu -> client (tcp): {_REP}"),
    ("s2.resume", "client: reply decoded -> caller resumes"),
    ("lib.exit", "client: last reply -> store() returns"),
]

CATEGORIES: dict[str, tuple[str, ...]] = {
    "message paths (8 one-way: encode, send, I/O threads, kernel, wake-up, recv)": (
        *("s1.req", "s1.rep", "f.req", "f.rep"),
        *("e.req", "e.rep", "s2.req", "s2.rep"),
    ),
    "asyncio: received -> handler task runs; reply -> caller resumes": (
        *("s1.sched", "s1.resume", "f.sched", "f.resume"),
        *("e.sched", "e.resume", "s2.sched", "s2.resume"),
    ),
    "role handlers (decode, dispatch, VM work, encode)": (
        *("s1.handle", "f.pre", "e.handle", "f.post", "s2.handle"),
    ),
    "client library between calls": ("lib.enter", "lib.trap", "lib.retry", "lib.exit"),
}


def _hop(prefix: str, call: Sequence[int], srv: Sequence[int]) -> dict[str, int]:
    """call = (t_call, t_sent, t_reply, t_done); srv = (t_recv, t_start, t_end, t_sent).

    One-way paths are measured from the sender's timestamp *before* its send
    call: the time after send() returns is no use, because the sender is often
    preempted inside send() by its own zmq I/O thread and the receiver (the
    receiver then timestamps the message before the sender's send() returned).
    x.csend / x.ssend (not in SEGMENTS) keep how long the two send calls took.
    """
    return {
        f"{prefix}.req": srv[0] - call[0],
        f"{prefix}.sched": srv[1] - srv[0],
        f"{prefix}.handle": srv[2] - srv[1],
        f"{prefix}.rep": call[2] - srv[2],
        f"{prefix}.resume": call[3] - call[2],
        f"{prefix}.csend": call[1] - call[0],
        f"{prefix}.ssend": srv[3] - srv[2],
    }


def analyse_trace(
    faults: list[tuple[int, int, list[list[Any]]]],
    mmu: dict[str, list[list[Any]]],
    uvm: dict[str, list[list[Any]]],
) -> dict[str, Any]:
    """Per-fault segments from client, mmu and uvm timestamps; medians over faults."""

    def index(server: list[list[Any]]) -> dict[tuple[str, int, int], list[int]]:
        return {(str(r[1]), int(r[2]), int(r[3])): [int(x) for x in r[4:8]] for r in server}

    mmu_srv = index(mmu["server"])
    uvm_srv = index(uvm["server"])
    enters = sorted(
        (int(c[4]), [int(x) for x in c[4:8]], (str(c[1]), int(c[2]), int(c[3])))
        for c in uvm["calls"]
        if c[0] == "pmap.enter"
    )
    rows: list[dict[str, int]] = []
    for t_in, t_out, calls in faults:
        if [c[0] for c in calls] != ["mmu.store", "uvm.fault", "mmu.store"]:
            continue
        keys = [(str(c[1]), int(c[2]), int(c[3])) for c in calls]
        ct = [[int(x) for x in c[4:8]] for c in calls]
        s1, f, s2 = mmu_srv.get(keys[0]), uvm_srv.get(keys[1]), mmu_srv.get(keys[2])
        if s1 is None or f is None or s2 is None:
            continue
        enter = next((e for e in enters if f[1] <= e[0] <= f[2]), None)
        if enter is None or enter[2] not in mmu_srv:
            continue
        e_call, e_srv = enter[1], mmu_srv[enter[2]]
        seg: dict[str, int] = {"lib.enter": ct[0][0] - t_in}
        seg |= _hop("s1", ct[0], s1)
        seg["lib.trap"] = ct[1][0] - ct[0][3]
        seg |= _hop("f", ct[1], f)
        seg |= _hop("e", e_call, e_srv)
        del seg["f.handle"]
        seg["f.pre"] = e_call[0] - f[1]
        seg["f.post"] = f[2] - e_call[3]
        seg["lib.retry"] = ct[2][0] - ct[1][3]
        seg |= _hop("s2", ct[2], s2)
        seg["lib.exit"] = t_out - ct[2][3]
        seg["total"] = t_out - t_in
        rows.append(seg)
    if not rows:
        return {"n": 0}
    med = {k: statistics.median(r[k] for r in rows) / 1e3 for k in rows[0]}
    cats = {
        c: statistics.median(sum(r[k] for k in ks) for r in rows) / 1e3
        for c, ks in CATEGORIES.items()
    }
    sends = {
        "caller send() call (encode + zmq send), p50 µs": statistics.median(
            r[f"{h}.csend"] for r in rows for h in ("s1", "f", "e", "s2")
        )
        / 1e3,
        "role reply send() call, p50 µs": statistics.median(
            r[f"{h}.ssend"] for r in rows for h in ("s1", "f", "e", "s2")
        )
        / 1e3,
    }
    return {
        "n": len(rows),
        "send_calls": sends,
        "total_p50_us": med["total"],
        "segments_p50_us": {k: med[k] for k, _ in SEGMENTS},
        "categories_p50_us": cats,
        "sum_of_segment_medians_us": sum(med[k] for k, _ in SEGMENTS),
    }


async def _dump_trace(bm: BootedMachine, role: str) -> dict[str, list[list[Any]]]:
    t = ZmqTransport()
    peer = await Peer(Identity("bench", 7), bm.kernel_endpoint(role)).open(t)
    try:
        rep = await peer.call(CtlDump(h=_H), 30.0)
    finally:
        await peer.close()
        await t.close()
    assert isinstance(rep, CtlDumpReply), rep
    tr: dict[str, list[list[Any]]] = rep.state["bench_trace"]
    return tr


def measure_breakdown(bm: BootedMachine, n: int, placement: str) -> dict[str, Any]:
    """Fault n fresh pages with every hop timestamped; bm must run with the trace patch."""
    assert "trace" in bm.patches
    place_machine(bm, placement)

    async def go() -> dict[str, Any]:
        async with Machine.attach(bm.endpoint) as m:
            place_client(placement)
            p = await m.spawn()
            va = await p.mmap((n + 32) * PAGE_SIZE, prot="rw")
            for i in range(32):
                await p.store(va + (n + i) * PAGE_SIZE, b"w")
            await _dump_trace(bm, "mmu")
            await _dump_trace(bm, "uvm")
            faults: list[tuple[int, int, list[list[Any]]]] = []
            for i in range(n):
                patches.CALL_TRACE.clear()
                t0 = _now()
                await p.store(va + i * PAGE_SIZE, b"x")
                t1 = _now()
                faults.append((t0, t1, [list(c) for c in patches.CALL_TRACE]))
            await p.exit()
            place_client("unpinned")
            mmu, uvm = await _dump_trace(bm, "mmu"), await _dump_trace(bm, "uvm")
            return analyse_trace(faults, mmu, uvm)

    patches.apply(",".join(bm.patches))
    try:
        res = asyncio.run(go())
    finally:
        patches.undo()
        place_machine(bm, "unpinned")
    return {"placement": placement, **res}


# =============================================================================
# in-process micro costs (what one round trip costs in CPU, without IPC)
# =============================================================================


class _NoPmap:
    """PmapOps that does nothing: Uvm.fault's own CPU cost, without the pmap.enter hop."""

    async def create(self, asid: int, owner: int) -> None:
        return None

    async def destroy(self, asid: int) -> int:
        return 0

    async def enter(self, asid: int, va: int, pfn: int, prot: int, flags: int) -> None:
        return None

    async def remove(self, asid: int, sva: int, eva: int) -> int:
        return 0

    async def mappings(self, asid: int) -> list[tuple[int, int, int, bool]]:
        return []


def micro_costs(n: int, repeats: int = 5) -> dict[str, float]:
    """ns per operation (best of `repeats`) of pieces every round trip runs, in this process."""
    from machine.mmu.pmap import Mmu
    from machine.mmu.service import MmuService
    from machine.proto.types import EnterFlags
    from machine.ram import Ram
    from machine.uvm.vm import Uvm

    out: dict[str, float] = {}

    def timeit(name: str, fn: Callable[[], object], k: int = n) -> None:
        for _ in range(min(k, 1000)):
            fn()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            for _ in range(k):
                fn()
            best = min(best, (time.perf_counter_ns() - t0) / k)
        out[name] = best

    async def atimeit(name: str, fn: Callable[[], Awaitable[object]], k: int) -> None:
        for _ in range(min(k, 200)):
            await fn()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            for _ in range(k):
                await fn()
            best = min(best, (time.perf_counter_ns() - t0) / k)
        out[name] = best

    async def costs() -> None:
        loop = asyncio.get_running_loop()
        ident = Identity("client", 12345)  # its clock reads the running loop
        req = MmuStore(h=_H, asid=3, va=0x1000_0000, data=b"x")
        raw_req = encode(with_header(req, ident.header()))
        raw_rep = encode(MmuAccessReply(h=ident.header(re=5)))
        timeit("Identity.header()", ident.header)
        timeit("with_header + encode (request)", lambda: encode(with_header(req, ident.header())))
        timeit("decode_request (mmu.store)", lambda: decode_request(raw_req))
        timeit("decode_reply (mmu access reply)", lambda: decode_reply(raw_rep))
        rd, wr = Prot.READ, Prot.WRITE
        timeit("Prot.READ | Prot.WRITE (enum.IntFlag, 3.11)", lambda: rd | wr)
        timeit("1 | 2 (plain int)", lambda: 1 | int(wr))

        ram = Ram.anonymous(64 << 20)
        try:
            mmu = Mmu(ram)
            mmu.create(3, 12345)
            mmu.enter(3, 0x1000_0000, 5, Prot.READ | Prot.WRITE, EnterFlags.NONE)
            timeit(
                "Mmu.store 1 B, mapped page (pmap core)", lambda: mmu.store(3, 0x1000_0000, b"x")
            )
            vpn = iter(range(1 << 20))
            timeit(
                "Mmu.enter of a new page (pmap core)",
                lambda: mmu.enter(
                    3, 0x2000_0000 + next(vpn) * PAGE_SIZE, 6, rd | wr, EnterFlags.NONE
                ),
                k=min(n, 50_000),
            )
            svc = MmuService(None, mmu=mmu, rng=random.Random(1))
            await atimeit(
                "MmuService: mmu.store bytes -> reply bytes (decode, dispatch, handler, encode)",
                lambda: svc._on_user(raw_req),
                max(1, n // 10),
            )
            timeit("ram.zero(pfn) (4 KiB)", lambda: ram.zero(7))
            uvm = Uvm(ram, _NoPmap())
            asid = await uvm.spawn(9)
            k = min(ram.nframes // (repeats + 2), max(1, n // 10))
            best = float("inf")
            for _ in range(repeats):
                va = await uvm.mmap(asid, 9, k * PAGE_SIZE, Prot.READ | Prot.WRITE)
                t0 = time.perf_counter_ns()
                for i in range(k):
                    await uvm.fault(asid, 9, va + i * PAGE_SIZE, Prot.WRITE)
                best = min(best, (time.perf_counter_ns() - t0) / k)
                await uvm.munmap(asid, 9, va, k * PAGE_SIZE)
            out["Uvm.fault zero-fill, no pmap hop (uvm core)"] = best
        finally:
            ram.close()

        async def nothing() -> None:
            return None

        async def task_roundtrip() -> None:
            await loop.create_task(nothing())

        async def plain_future() -> None:
            f: asyncio.Future[None] = loop.create_future()
            loop.call_soon(f.set_result, None)
            await f

        async def waitfor_future() -> None:
            f: asyncio.Future[None] = loop.create_future()
            loop.call_soon(f.set_result, None)
            await asyncio.wait_for(f, 30.0)

        async def timer_future() -> None:
            f: asyncio.Future[None] = loop.create_future()
            h = loop.call_later(30.0, lambda: None)
            loop.call_soon(f.set_result, None)
            await f
            h.cancel()

        k = max(1, n // 10)
        await atimeit("create_task + await (trivial coroutine)", task_roundtrip, k)
        await atimeit("future resolved via call_soon, plain await", plain_future, k)
        await atimeit("  same, through asyncio.wait_for(30 s)", waitfor_future, k)
        await atimeit("  same, with a call_later timer instead (nowaitfor)", timer_future, k)

    asyncio.run(costs())
    return out


# =============================================================================
# report
# =============================================================================


def f1(x: Any) -> str:
    if isinstance(x, float):
        if x != x:
            return "-"
        return f"{x:,.1f}" if abs(x) < 1e4 else f"{x:,.0f}"
    return str(x).replace("|", "\\|")


def table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(f1(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def report(res: dict[str, Any]) -> str:
    lines: list[str] = []
    raw = res["raw_rtt_us"]
    lines.append(f"# bench_machine ({res['mode']}), {res['started']}")
    lines.append(
        f"host: {res['host']['cpus']} CPUs, {res['host']['python']}, pyzmq "
        f"{res['host']['pyzmq']} / libzmq {res['host']['libzmq']}; raw RTT reference = "
        f"zmq.asyncio tcp unpinned p50 (median of {1 + len(res['rtt_bimodal']['p50s_us'])} "
        f"runs) = **{raw:.1f} µs** (pinned to one core: {res['raw_rtt_same_core_us']:.1f} µs)"
    )
    lines.append("\n## 1. Raw request/reply round trips (separate server process)\n")
    lines.append(
        table(
            [
                "stack",
                "transport",
                "placement",
                "n",
                "mean µs",
                "p50 µs",
                "p99 µs",
                "rt/s",
                "CPU µs/rt client",
                "CPU µs/rt server",
            ],
            [
                [
                    r["label"],
                    r["transport"],
                    r["placement"],
                    r["n"],
                    r["mean_us"],
                    r["p50_us"],
                    r["p99_us"],
                    r["rate_per_s"],
                    r["cpu_client_us"],
                    r["cpu_server_us"],
                ]
                for r in res["rtt"]
            ],
        )
    )
    bi = res["rtt_bimodal"]
    lines.append(
        f"\nUnpinned raw RTT, {len(bi['p50s_us'])} separate runs, p50 per run (µs): "
        + ", ".join(f"{x:.0f}" for x in bi["p50s_us"])
        + f" -> bimodal: {'yes' if bi['bimodal'] else 'no'}"
    )

    lines.append("\n## 2-3. Client operations: real machine vs SimMachine\n")
    rows = []
    for r in res["machine"]:
        name = f"real {r['endpoint']}, {r['placement']}"
        if r["patches"]:
            name += " + " + ",".join(r["patches"])
        rows.append((name, r))
    for r in res["sim"]:
        name = f"sim ({r['loop']})" + (" + " + ",".join(r["patches"]) if r["patches"] else "")
        rows.append((name, r))
    trs = []
    for name, r in rows:
        for op in ("fault", "store", "load"):
            s = r[op]
            trs.append(
                [
                    name if op == "fault" else "",
                    op,
                    s["p50_us"],
                    s["p99_us"],
                    s["mean_us"],
                    s["rate_per_s"],
                    s["p50_us"] / raw,
                ]
            )
    lines.append(
        table(["setup", "op", "p50 µs", "p99 µs", "mean µs", "ops/s", "p50 ÷ raw RTT"], trs)
    )
    base = res["machine"][0]
    sim = res["sim"][0]
    lines.append(
        f"\nfirst-touch fault = **{base['fault']['p50_us'] / raw:.1f}x raw RTT** (p50; "
        f"target < 5x; by design ≈ 4 round trips: 3 client calls + uvm->mmu pmap.enter); "
        f"fault ÷ store = {base['fault']['p50_us'] / base['store']['p50_us']:.2f}; "
        f"real ÷ sim: fault {base['fault']['p50_us'] / sim['fault']['p50_us']:.1f}x, "
        f"store {base['store']['p50_us'] / sim['store']['p50_us']:.1f}x, "
        f"load {base['load']['p50_us'] / sim['load']['p50_us']:.1f}x. "
        f"Sim virtual time elapsed during its measurement: {sim['virtual_s_elapsed']:.6f} s."
    )
    one = next((r for r in res["machine"] if r["placement"] == "all on cpu0"), None)
    if one is not None:
        lines.append(
            f"Pinned, all on cpu0: fault p50 {one['fault']['p50_us']:.0f} µs = "
            f"{one['fault']['p50_us'] / res['raw_rtt_same_core_us']:.1f}x the raw RTT pinned to "
            f"one core ({one['fault']['p50_us'] / base['fault']['p50_us'] * 100 - 100:+.0f} % "
            "vs unpinned)."
        )
    cpu = base["fault"].get("cpu_us_per_op", {})
    if cpu:
        lines.append(
            "\nCPU time per operation (all threads of each process, real tcp unpinned), µs:\n"
        )
        lines.append(
            table(
                ["op", *cpu.keys(), "sum", "latency p50"],
                [
                    [
                        op,
                        *base[op]["cpu_us_per_op"].values(),
                        sum(base[op]["cpu_us_per_op"].values()),
                        base[op]["p50_us"],
                    ]
                    for op in ("fault", "store", "load")
                ],
            )
        )
    blocks = res.get("machine_blocks", [])
    if blocks:
        lines.append("\nUnpinned blocks (p50 µs [cpu of client/mmu/uvm]):")
        for op in ("fault", "store", "load"):
            bs = [b for b in blocks if b["op"] == op]
            cells = [
                f"{b['p50_us']:.0f} [{b['cpus']['client']}/{b['cpus']['mmu']}/{b['cpus']['uvm']}]"
                for b in bs
            ]
            vals = [b["p50_us"] for b in bs]
            lines.append(f"- {op}: " + ", ".join(cells) + f" -> bimodal: {looks_bimodal(vals)}")

    bds = [b for b in res.get("breakdowns", []) if b.get("n")]
    if bds:
        b0 = bds[0]
        lines.append(
            "\n## 4. Where one first-touch fault's time goes (trace patch; medians over "
            + ", ".join(f"{b['n']} faults ({b['label']})" for b in bds)
            + ")\n"
        )
        lines.append(
            table(
                ["segment", "what", *(f"{b['label']} µs" for b in bds), "% (first)"],
                [
                    [
                        k,
                        d,
                        *(b["segments_p50_us"][k] for b in bds),
                        100 * b0["segments_p50_us"][k] / b0["total_p50_us"],
                    ]
                    for k, d in SEGMENTS
                ]
                + [
                    [
                        "total",
                        "store() to a never-touched page",
                        *(b["total_p50_us"] for b in bds),
                        100.0,
                    ],
                    [
                        "(sum)",
                        "sum of the segment medians",
                        *(b["sum_of_segment_medians_us"] for b in bds),
                        float("nan"),
                    ],
                ],
            )
        )
        lines.append(
            "\n"
            + table(
                ["category", *(f"{b['label']} µs" for b in bds), "% (first)"],
                [
                    [c, *(b["categories_p50_us"][c] for b in bds), 100 * v / b0["total_p50_us"]]
                    for c, v in b0["categories_p50_us"].items()
                ],
            )
        )
        for b in bds:
            sc = b["send_calls"]
            lines.append(
                f"\n({b['label']}: the send() calls alone took p50 "
                + ", ".join(f"{v:.0f} µs {k.split(',')[0]}" for k, v in sc.items())
                + ")"
            )

    var = res.get("variants", [])
    if var:
        lines.append(
            "\n## 5. Candidate optimisations (monkeypatched in client + roles; every variant "
            "on its own machine, measured interleaved with the unpatched one)\n"
        )
        basep = {r["placement"]: r for r in var if not r["patches"]}
        vr = []
        for r in var:
            b = basep[r["placement"]]
            vr.append(
                [",".join(r["patches"]) or "(as shipped)", r["placement"],
                 r["fault"]["n"], r["fault"]["p50_us"], r["fault"]["p99_us"],
                 (r["fault"]["p50_us"] / b["fault"]["p50_us"] - 1) * 100,
                 r["store"]["p50_us"], (r["store"]["p50_us"] / b["store"]["p50_us"] - 1) * 100,
                 r["fault"]["p50_us"] / raw, sum(r["fault_cpu_us"].values()),
                 " ".join(f"{x:.0f}" for x in r["fault_p50_per_round_us"])]
            )  # fmt: skip
        lines.append(
            table(
                [
                    "patches",
                    "placement",
                    "faults",
                    "fault p50 µs",
                    "fault p99 µs",
                    "Δ fault %",
                    "store p50 µs",
                    "Δ store %",
                    "fault ÷ raw RTT",
                    "CPU µs/fault (3 procs)",
                    "fault p50 per round",
                ],
                vr,
            )
        )

    ce = res.get("client_experiments")
    if ce:
        lines.append("\n## Client-side experiments (unpatched machine, unpinned)\n")
        pf = ce["prefault"]
        lines.append(
            f"- uvm.fault before the first store (no trap round trip): p50 {pf['p50_us']:.0f} µs"
            f" (p99 {pf['p99_us']:.0f}) vs {base['fault']['p50_us']:.0f} µs"
        )
        for k, v in ce.items():
            if k.startswith("window"):
                lines.append(
                    f"- {k} first-touch stores in flight: {v['us_per_page']:.0f} µs/page "
                    f"({v['rate_per_s']:,.0f} faults/s)"
                )
    mc = res.get("micro_ns")
    if mc:
        lines.append("\n## In-process costs per operation (ns)\n")
        lines.append(table(["operation", "ns"], [[k, v] for k, v in mc.items()]))
    lines.append("\n## Load on the host during the run\n")
    lines.append(
        table(
            [
                "phase",
                "s",
                "host busy %",
                "this bench %",
                "other processes %",
                "steal %",
                "loadavg 1m",
            ],
            [
                [
                    s["label"],
                    s["seconds"],
                    s["host_busy_pct"],
                    s["ours_pct"],
                    s["others_pct"],
                    s["steal_pct"],
                    s["loadavg_1m"],
                ]
                for s in res["load"]
            ],
        )
    )
    return "\n".join(lines)


# =============================================================================
# main
# =============================================================================


@dataclass
class Plan:
    rtt_n: int
    rtt_warm: int
    bimodal_runs: int
    bimodal_n: int
    base: OpsConfig
    pinned: OpsConfig
    variant: OpsConfig
    sim: OpsConfig
    trace_n: int
    exp_n: int
    windows: tuple[int, ...]
    placements: tuple[str, ...]
    variant_specs: tuple[str, ...]
    variant_placements: tuple[str, ...]
    variant_rounds: int
    ipc: bool
    micro_n: int


def plan(quick: bool) -> Plan:
    two = len(ALL_CPUS) >= 2
    if quick:
        return Plan(
            rtt_n=600, rtt_warm=150, bimodal_runs=3, bimodal_n=300,
            base=OpsConfig(300, 1000, blocks=3), pinned=OpsConfig(150, 400),
            variant=OpsConfig(60, 150, warm=16), variant_rounds=2, sim=OpsConfig(300, 1000),
            trace_n=100, exp_n=96,
            windows=(8,), placements=("unpinned", "all on cpu0"),
            variant_specs=(ALL_PATCHES, STREAMS_PATCHES, KFAULT_PATCHES),
            variant_placements=("unpinned",), ipc=False, micro_n=20_000,
        )  # fmt: skip
    return Plan(
        rtt_n=5000, rtt_warm=500, bimodal_runs=6, bimodal_n=1500,
        base=OpsConfig(2000, 5000, blocks=20), pinned=OpsConfig(600, 2000),
        variant=OpsConfig(150, 400, warm=16), variant_rounds=6, sim=OpsConfig(2000, 5000),
        trace_n=400, exp_n=512,
        windows=(4, 16), placements=tuple(PLACEMENTS if two else ("unpinned", "all on cpu0")),
        variant_specs=(
            "nowaitfor", "eager", "rawzmq", ALL_PATCHES, "streams", STREAMS_PATCHES, "kfault",
            KFAULT_PATCHES,
        ),
        variant_placements=("unpinned",), ipc=True, micro_n=100_000,
    )  # fmt: skip


def host_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": len(ALL_CPUS),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgspec": msgspec.__version__,
    }


def run(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    pl = plan(quick)
    two = len(ALL_CPUS) >= 2
    mon = LoadMonitor()
    res: dict[str, Any] = {
        "mode": "quick" if quick else "default",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": host_info(),
        "plan": {
            k: (v.__dict__ if isinstance(v, OpsConfig) else v) for k, v in pl.__dict__.items()
        },
        "load": [],
    }

    # 1. raw round trips
    log("1. raw round trips")
    rtt: list[dict[str, Any]] = []
    specs: list[tuple[str, str, str, str]] = [
        ("asyncio", "tcp", "unpinned", ""),
        ("sync", "tcp", "unpinned", ""),
        ("reader", "tcp", "unpinned", ""),
        ("stream", "tcp", "unpinned", ""),
        ("service", "tcp", "unpinned", ""),
        ("service", "tcp", "unpinned", ALL_PATCHES),
        ("service", "tcp", "unpinned", STREAMS_PATCHES),
    ]
    if not quick:
        specs += [
            ("asyncio", "ipc", "unpinned", ""),
            ("sync", "ipc", "unpinned", ""),
            ("stream", "ipc", "unpinned", ""),
        ]
    specs += [("asyncio", "tcp", "same core", "")]
    if two:
        specs += [("asyncio", "tcp", "cross core", "")]
    if not quick:
        specs += [("service", "tcp", "same core", ""), ("service", "tcp", "same core", ALL_PATCHES)]
    for kind, tr, placement, ps in specs:
        r = run_rtt(kind, tr, pl.rtt_n, pl.rtt_warm, placement, ps)
        log(f"   {r['label']} {tr} {placement}: p50 {r['p50_us']:.1f} µs")
        rtt.append(r)
    res["rtt"] = rtt
    p50s = [run_rtt("asyncio", "tcp", pl.bimodal_n, 200)["p50_us"] for _ in range(pl.bimodal_runs)]
    res["rtt_bimodal"] = {"p50s_us": p50s, "bimodal": looks_bimodal(p50s)}
    # the reference: median over every unpinned zmq.asyncio tcp run (it moves between runs)
    res["raw_rtt_us"] = statistics.median([rtt[0]["p50_us"], *p50s])
    res["raw_rtt_same_core_us"] = next(
        (r["p50_us"] for r in rtt if r["kind"] == "asyncio" and r["placement"] == "same core"),
        float("nan"),
    )
    res["load"].append(mon.sample("raw round trips"))

    # 2. real machine, unpatched
    res["machine"] = []
    log("2. real machine (tcp)")
    with booted_machine("tcp") as bm:
        for i, placement in enumerate(pl.placements):
            cfg = pl.base if i == 0 else pl.pinned
            r = measure_machine(bm, placement, cfg)
            r["endpoint"] = "tcp"
            if i == 0:
                res["machine_blocks"] = r.pop("blocks")
            else:
                r.pop("blocks")
            log(f"   {placement}: fault p50 {r['fault']['p50_us']:.0f} µs, "
                f"store p50 {r['store']['p50_us']:.0f} µs")  # fmt: skip
            res["machine"].append(r)
        log("   client experiments")
        res["client_experiments"] = measure_client_experiments(bm, pl.exp_n, pl.windows)
    res["load"].append(mon.sample("real machine tcp"))
    if pl.ipc:
        log("2b. real machine (ipc endpoint)")
        with booted_machine("ipc") as bm:
            r = measure_machine(bm, "unpinned", pl.pinned)
            r.pop("blocks")
            r["endpoint"] = "ipc"
            res["machine"].append(r)
        res["load"].append(mon.sample("real machine ipc"))

    # 3. sim
    log("3. SimMachine")
    res["sim"] = []
    for virtual, ps in ((True, ""), (False, ""), (True, "nowaitfor")):
        r = measure_sim(pl.sim, virtual, ps)
        r.pop("blocks")
        res["sim"].append(r)
    res["load"].append(mon.sample("sim"))

    # 4. breakdown, then candidate optimisations
    log("4. fault breakdown (trace patch)")
    res["breakdowns"] = []
    with booted_machine("tcp", "trace") as bm:
        bd = measure_breakdown(bm, pl.trace_n, "unpinned")
        res["breakdowns"].append({"label": "as shipped, unpinned", **bd})
        if not quick and two:
            bd = measure_breakdown(bm, pl.trace_n, "all on cpu0")
            res["breakdowns"].append({"label": "as shipped, all on cpu0", **bd})
    if not quick:
        with booted_machine("tcp", "trace," + STREAMS_PATCHES) as bm:
            bd = measure_breakdown(bm, pl.trace_n, "unpinned")
            res["breakdowns"].append({"label": STREAMS_PATCHES + ", unpinned", **bd})
    res["load"].append(mon.sample("breakdown"))
    log(f"5. candidate optimisations, interleaved: {', '.join(pl.variant_specs)}")
    res["variants"] = measure_variants(
        pl.variant_specs, pl.variant_placements, pl.variant_rounds, pl.variant
    )
    res["load"].append(mon.sample("variants (interleaved)"))
    if pl.micro_n:
        res["micro_ns"] = micro_costs(pl.micro_n)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    ap.add_argument("--quick", action="store_true", help="short run (< 20 s): smoke test / CI")
    ap.add_argument("--json", type=Path, help="write results here (default bench/results/...)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="first wait up to S seconds for host CPU use < 15 %% (the host is shared)",
    )
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    ap.add_argument("--patches", default="none", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return serve(a.serve, a.endpoint, a.patches)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through every finally: machines stop

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()

    def log(msg: str) -> None:
        if not a.quiet:
            print(f"[{time.monotonic() - t0:5.1f}s] {msg}", file=sys.stderr, flush=True)

    idle = wait_idle(a.wait_idle, 15.0, log) if a.wait_idle > 0 else float("nan")
    res = run(a.quick, log)
    res["host_busy_pct_before"] = idle
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    out = a.json or RESULTS_DIR / f"bench_machine-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(report(res))
    print(f"\n(elapsed {res['elapsed_s']} s; JSON: {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
