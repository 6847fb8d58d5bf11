"""The bus's pluggable schedule and its trace: determinism, PCT's priorities and change
points, per-pair order under every schedule, and today's traces kept by the default."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from machine.ipc.inmemory import InMemoryTransport, run_simulation
from machine.ipc.schedule import PctSchedule, RandomSchedule, Schedule, make_schedule
from machine.ipc.trace import tag_bytes
from machine.params import PAGE_SIZE
from machine.proto import NO_HEADER, codec
from machine.proto.net import NetLink
from machine.scenarios.runner import run_scenario
from machine.testing import SimMachine

ROOT = Path(__file__).resolve().parents[2]


def _schedule(strategy: str, seed: int) -> Schedule:
    return make_schedule(strategy, random.Random(f"s:{seed}"), depth=3)


async def _workload(seed: int, strategy: str, sched_seed: int) -> tuple[str, int, float]:
    """spawn, mmap, store/load, a send with the link held then released, exit.
    => (digest, deliveries, virtual time at the end)."""
    sched = _schedule(strategy, sched_seed)
    async with (
        SimMachine.boot(seed=seed, ram_bytes=64 * PAGE_SIZE, schedule=sched) as sim,
        sim.attach() as m,
    ):
        p = await m.spawn()
        va = await p.mmap(4 * PAGE_SIZE, "rw")
        data = bytes(range(256)) * (2 * PAGE_SIZE // 256)
        await p.store(va, data)
        assert await p.load(va, len(data)) == data
        s = await p.socket()
        await sim.kcall("net", NetLink(h=NO_HEADER, hold=True))
        await p.send(s, va, len(data))
        await sim.kcall("net", NetLink(h=NO_HEADER, hold=False))
        await p.exit()
    bus = sim.transport
    return bus.digest(), bus.deliveries, asyncio.get_running_loop().time()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", ["random", "pct"])
def test_the_same_seed_and_schedule_give_the_same_digest_twice(strategy: str) -> None:
    """Each run has its own temporary state directory and the raw bytes differ; the
    digest (time, endpoint, kind, tag per delivery) does not."""
    first = run_simulation(_workload(3, strategy, 11))
    second = run_simulation(_workload(3, strategy, 11))
    assert first == second
    assert first[1] > 40


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", ["random", "pct"])
def test_another_schedule_seed_gives_another_digest(strategy: str) -> None:
    digests = {run_simulation(_workload(3, strategy, k))[0] for k in (1, 2, 3)}
    assert len(digests) == 3


_CHILD = """
import sys
sys.path.insert(0, {tests!r})
from machine.ipc.inmemory import run_simulation
from explore.test_schedule import _workload
print(run_simulation(_workload(3, "pct", 11))[0])
"""


@pytest.mark.timeout(90)
def test_the_digest_does_not_depend_on_the_hash_seed() -> None:
    """Two processes with different PYTHONHASHSEED give the same digest as this one."""
    code = _CHILD.format(tests=str(ROOT / "tests"))
    out = []
    for hs in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hs}
        cp = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True
        )
        assert cp.returncode == 0, cp.stderr[-2000:]
        out.append(cp.stdout.strip().splitlines()[-1])
    assert out[0] == out[1] == run_simulation(_workload(3, "pct", 11))[0]


# --- PCT on a bare bus ------------------------------------------------------------


async def _one_each(bus: InMemoryTransport, endpoints: list[str]) -> list[str]:
    """One request to each endpoint, all sent at the same instant => delivery order."""
    for ep in endpoints:
        if ep not in bus.servers:
            await bus.bind(ep, lambda d: None)
    conns = [await bus.connect(ep, lambda d: None) for ep in endpoints]
    assert bus.record is not None
    start = len(bus.record)
    for c, ep in zip(conns, endpoints, strict=True):
        c.send(codec.encode(NetLink(h=NO_HEADER, hold=False)) + ep.encode())
    await asyncio.sleep(0.01)
    return [d.endpoint for d in bus.record[start:]]


async def _twice(bus: InMemoryTransport, endpoints: list[str]) -> list[str]:
    """The second round's order (the first gives each endpoint its priority)."""
    await _one_each(bus, endpoints)
    return await _one_each(bus, endpoints)


@pytest.mark.timeout(30)
def test_pct_delivers_to_higher_priority_endpoints_first() -> None:
    eps = [f"inproc://r{i}/kernel" for i in range(6)]
    orders = set()
    for seed in range(8):
        sched = PctSchedule(random.Random(seed), depth=1)
        bus = InMemoryTransport(0, schedule=sched, record=True)
        got = run_simulation(_twice(bus, eps))
        assert got == sched.priorities()  # highest priority first
        orders.add(tuple(got))
        delays = [sched.delay(ep, "req") for ep in sched.priorities()]
        assert delays == sorted(delays)
        assert (delays[0], delays[-1]) == (sched.lo, sched.hi)
    assert len(orders) > 4  # priorities are random per seed


@pytest.mark.timeout(30)
def test_a_pct_change_point_demotes_the_endpoint_just_delivered_to() -> None:
    sched = PctSchedule(random.Random(4), depth=2, horizon=1)
    assert sched.change_points == {0}  # the first message is the change point
    eps = [f"inproc://r{i}/kernel" for i in range(4)]
    bus = InMemoryTransport(0, schedule=sched, record=True)
    got = run_simulation(_twice(bus, eps))
    assert sched.changes == [(0, eps[0])]
    assert sched.priorities()[-1] == eps[0]  # dropped below all others
    assert got == sched.priorities()  # so its messages now come last
    assert sched.delay(eps[0], "req") == sched.hi


def test_pct_draws_d_minus_1_change_points_below_the_horizon() -> None:
    for seed in range(20):
        s = PctSchedule(random.Random(seed), depth=4, horizon=50)
        assert 1 <= len(s.change_points) <= 3
        assert all(0 <= c < 50 for c in s.change_points)
    assert PctSchedule(random.Random(0), depth=1).change_points == set()
    with pytest.raises(ValueError, match="unknown schedule strategy"):
        make_schedule("dfs", random.Random(0))


class _Logged:
    """Forwards to a schedule and keeps every delay it drew."""

    def __init__(self, inner: Schedule) -> None:
        self.inner = inner
        self.drawn: list[tuple[str, str, float]] = []

    def delay(self, endpoint: str, kind: str) -> float:
        d = self.inner.delay(endpoint, kind)
        self.drawn.append((endpoint, kind, d))
        return d


async def _bursts(bus: InMemoryTransport, n: int) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """n requests on one connection to A and n on one to B, sent alternately at one
    instant, plus n events to one subscriber => what arrived at A, back at A's caller,
    and at the subscriber, in order."""
    at_a: list[bytes] = []
    replies: list[bytes] = []
    events: list[bytes] = []

    def serve(d: bytes) -> bytes:
        at_a.append(d)
        return b"re:" + d

    await bus.bind("inproc://a/kernel", serve)
    await bus.bind("inproc://b/kernel", lambda d: None)
    a = await bus.connect("inproc://a/kernel", replies.append)
    b = await bus.connect("inproc://b/kernel", lambda d: None)
    pub = await bus.publisher("inproc://a/pub")
    await bus.subscribe("inproc://a/pub", "", events.append)
    for i in range(n):
        a.send(b"%d" % i)
        b.send(b"%d" % i)
        pub.publish("t", b"%d" % i)
    await asyncio.sleep(0.01)
    return at_a, replies, events


@pytest.mark.timeout(30)
def test_pct_keeps_each_connection_and_subscriber_in_order() -> None:
    """Change points make A's delays fall mid-burst (B is demoted below it), so the
    schedule alone would let a later request to A overtake an earlier one; the bus
    still delivers A's requests, their replies and the events in the order sent."""
    n = 20
    pct = PctSchedule(random.Random(1), depth=5)
    pct.change_points = {3, 7, 13, 22, 31}
    sched = _Logged(pct)
    bus = InMemoryTransport(0, schedule=sched, record=True)
    at_a, replies, events = run_simulation(_bursts(bus, n))
    want = [b"%d" % i for i in range(n)]
    a_req = [d for ep, kind, d in sched.drawn if ep == "inproc://a/kernel" and kind == "req"]
    assert any(x > y for x, y in itertools.pairwise(a_req)), "no delay fell"
    assert at_a == want
    assert replies == [b"re:" + w for w in want]
    assert events == want


# --- the trace ---------------------------------------------------------------------


def test_the_tag_is_read_from_the_msgpack_without_decoding() -> None:
    raw = codec.encode(NetLink(h=NO_HEADER, hold=True))
    assert tag_bytes(raw) == b"net.link"
    assert tag_bytes(raw + b"\x00" * 16) == b"net.link"  # a signed request's trailing tag
    for bad in (b"", b"\x81", b"\x81\xa1t", b"\x92\x01\x02", b"\xc1" * 40):
        assert tag_bytes(bad) == b"?"


@pytest.mark.timeout(60)
def test_record_keeps_every_delivery_with_its_bytes() -> None:
    async def main() -> tuple[int, list[tuple[str, str, bytes]]]:
        async with SimMachine.boot(seed=2, ram_bytes=32 * PAGE_SIZE, record=True) as sim:
            async with sim.attach() as m:
                p = await m.spawn()
                await p.mmap(PAGE_SIZE, "rw")
            bus = sim.transport
            assert bus.record is not None
            rec = [(d.kind, d.endpoint, tag_bytes(d.data)) for d in bus.record]
            assert [d.t for d in bus.record] == sorted(d.t for d in bus.record)
            return bus.deliveries, rec

    n, rec = run_simulation(main())
    assert len(rec) == n
    assert {k for k, _, _ in rec} == {"req", "rep", "evt"}
    assert ("req", "inproc://uvm/user", b"uvm.mmap") in rec
    assert any(k == "rep" and ep == "inproc://uvm/user" for k, ep, _ in rec)


# --- the default schedule keeps today's traces ---------------------------------------


async def _toy() -> list[tuple[object, ...]]:
    """Three connections and a subscriber on a bare bus seeded 7 => (ns, who, data)."""
    bus = InMemoryTransport(7)
    loop = asyncio.get_running_loop()
    got: list[tuple[object, ...]] = []
    await bus.bind("inproc://s/kernel", lambda d: b"r" + d)
    pub = await bus.publisher("inproc://s/pub")
    await bus.subscribe("inproc://s/pub", "", lambda d: got.append((loop.time(), d)))

    def replies(i: int) -> Callable[[bytes], None]:
        return lambda d: got.append((loop.time(), i, d))

    conns = [await bus.connect("inproc://s/kernel", replies(i)) for i in range(3)]
    for k in range(5):
        for i, c in enumerate(conns):
            c.send(b"%d.%d" % (i, k))
        pub.publish("x", b"e%d" % k)
    await asyncio.sleep(0.01)
    return [(round(float(g[0]) * 1e9), *g[1:]) for g in got]  # type: ignore[arg-type]


@pytest.mark.timeout(30)
def test_the_default_schedule_draws_what_the_bus_always_drew() -> None:
    """Golden values taken from the bus before schedules existed (one rng.uniform per
    message on Random(seed)): the same delivery times, to the ns."""
    got = run_simulation(_toy())
    assert (
        repr(got[:4]) == "[(33039, b'e0'), (106675, 0, b'r0.0'), (111338, b'e1'), (111339, b'e2')]"
    )
    assert hashlib.sha256(repr(got).encode()).hexdigest()[:16] == "5dbf4652ad719a5e"


@pytest.mark.timeout(120)
def test_a_seeded_scenario_runs_the_same_with_the_default_and_an_explicit_random_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scenario `seed` under bug1999 (seed 1) panics, as the matrix says, with the
    same deliveries and digest whether the bus makes its default schedule or is given
    RandomSchedule(Random(seed)) explicitly."""
    buses: list[InMemoryTransport] = []
    init = InMemoryTransport.__init__

    def keep(self: InMemoryTransport, *a: object, **kw: object) -> None:
        init(self, *a, **kw)  # type: ignore[arg-type]
        buses.append(self)

    monkeypatch.setattr(InMemoryTransport, "__init__", keep)
    o1 = run_simulation(run_scenario("seed", "bug1999", inprocess=True, seed=1))
    default = buses.pop()
    assert isinstance(default.sched, RandomSchedule)
    assert default.sched.rng is default.rng

    def explicit(self: InMemoryTransport, seed: int, *a: object, **kw: object) -> None:
        kw["schedule"] = RandomSchedule(random.Random(seed))
        keep(self, seed, *a, **kw)

    monkeypatch.setattr(InMemoryTransport, "__init__", explicit)
    o2 = run_simulation(run_scenario("seed", "bug1999", inprocess=True, seed=1))
    other = buses.pop()
    assert o1.outcome == o2.outcome == "panic"
    assert o1.detail == o2.detail
    assert (default.deliveries, default.digest()) == (other.deliveries, other.digest())
