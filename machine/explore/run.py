"""One exploration run: boot the in-process machine, play a workload, check, classify.

    r = run_workload(draw(random.Random("w:7")), "bug1999", sched_seed=7)
    r.outcome, r.message, r.trace_hash, r.revoker

The machine is a SimMachine on its own VirtualTimeLoop (run_simulation, with
a virtual-time limit), booted with the workload's RAM and swap, the profile,
and the delivery schedule make_schedule(strategy, Random(f"s:{sched_seed}"),
depth). The link is set with net.link (never held). Every client of the
workload is a process of one session, run concurrently as an asyncio task;
every send is checked on the wire through the operator's tap against the
bytes its client stored (machine.wirecheck, via the scenario runner's Ctx).

Outcome, the first that holds in this order:
  panic       the machine panicked (role: message; `revoker` parsed from
              "... was revoked by X: ...")
  corruption  a payload on the wire differed from its sender's memory at send
  hang        a deadlock, the virtual-time limit, a call's MachineTimeout,
              sends that never arrived, or a page daemon pass that never ends
  error       a client error the workload does not expect (OutOfMemory is
              expected: the kernel kills the faulting process under pressure),
              or a process that does not see its own stores, or a VM call's
              rule broken (machine.explore.vmops: SIGBUS beyond a truncated
              file's end, minherit at fork, madvise, mlockall)
  audit       uvm.audit found problems after the run
  leak        after every client exited, net drained and the page daemon's
              pass (if any) ended (its claimed pages are PG_BUSY, those
              released meanwhile freed by its finish): a loan not returned,
              a frame neither free nor kernel-owned (the zero page is), swap
              still in use
  ok          none of these.

A recorded run's workload (calls: machine.explore.fromdump) is played by
machine.explore.calls instead, one session per recorded session, with the
same final checks; `follow` (a recording's delivery order, as a function of
the player's session map that makes a machine.ipc.follow.FollowGate) gates
the bus so each role gets its inputs in the recorded order where it can.

Invariants: run_workload is a pure function of (workload, profile,
sched_seed, strategy, depth, follow) -- same inputs, same outcome, message
and trace_hash; each run boots a fresh machine in a fresh temporary state dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Any

from machine.client import (
    Machine,
    MachineError,
    MachinePanic,
    MachineTimeout,
    OutOfMemory,
    Process,
    Socket,
)
from machine.client.wire import Packet, Wire
from machine.explore.calls import CallPlayer, GateMaker, Hooks, PlayStats
from machine.explore.vmops import VmOps, WorkloadError, fill
from machine.explore.workload import BUS_US, VM_KINDS, Op, Workload
from machine.ipc.inmemory import SimulationDeadlock, SimulationTimeout, run_simulation
from machine.ipc.schedule import make_schedule
from machine.ipc.trace import Delivery
from machine.params import PAGE_SIZE
from machine.profile import load_profile
from machine.proto import NO_HEADER, NetLink, PdWakeup
from machine.scenarios.catalog import ScenarioFailure
from machine.scenarios.runner import Ctx, _panic_of
from machine.testing import SimMachine, poll_for
from machine.wirecheck import WireCorruption

_H = NO_HEADER
OUTCOMES = ("panic", "corruption", "hang", "error", "audit", "leak")  # by precedence
_REVOKED = re.compile(r"was revoked by (\w+)")


@dataclass
class RunResult:
    outcome: str  # "ok" or one of OUTCOMES
    message: str
    trace_hash: str
    deliveries: int
    virtual_s: float
    revoker: str = ""
    record: list[Delivery] | None = None  # the bus's deliveries, when recorded
    follow: dict[str, Any] | None = None  # the follow gate's report (FollowGate.report)
    calls: PlayStats | None = None  # a recorded workload's play (machine.explore.calls)


def seed_of(sched_seed: int | str) -> int:
    """The boot seed (keys, the default latency stream) for a schedule seed."""
    if isinstance(sched_seed, int):
        return sched_seed
    return int.from_bytes(hashlib.blake2b(f"b:{sched_seed}".encode(), digest_size=8).digest())


@dataclass
class _Found:
    """What went wrong during a run, by outcome (the first message of each)."""

    by: dict[str, str] = field(default_factory=dict)

    def add(self, outcome: str, message: str) -> None:
        self.by.setdefault(outcome, message)

    def first(self) -> tuple[str, str]:
        for o in OUTCOMES:
            if o in self.by:
                return o, self.by[o]
        return "ok", "every send intact, audit clean, every loan and frame returned"


class _Receiver:
    """The operator's tap, drained by one task; a packet may arrive before its send's
    reply reaches the client, so it waits in `early` until the client expects it."""

    def __init__(self, ctx: Ctx, found: _Found) -> None:
        self.ctx, self.found = ctx, found
        self.early: dict[tuple[int, int], Packet] = {}
        self.arrived: dict[tuple[int, int], asyncio.Event] = {}  # per send expected
        self.idle = asyncio.Event()  # nothing expected is outstanding
        self.idle.set()

    def expect(self, r: Any, data: bytes) -> asyncio.Event:
        """Expect send r's packet to hold `data`. => set once it has arrived (checked)."""
        key = (r.sock, r.seq)
        self.ctx.check.expect(r, data)
        self.idle.clear()
        ev = self.arrived[key] = asyncio.Event()
        pkt = self.early.pop(key, None)
        if pkt is not None:
            self._check(pkt)
        return ev

    def _check(self, pkt: Packet) -> None:
        try:
            self.ctx.check.check(pkt)
        except WireCorruption as e:
            self.found.add("corruption", e.detail)
        ev = self.arrived.pop((pkt.sock, pkt.seq), None)
        if ev is not None:
            ev.set()
        if not self.ctx.check.expected:
            self.idle.set()

    async def run(self) -> None:
        try:
            while True:
                pkt = await self.ctx.wire.get(1e9)
                if (pkt.sock, pkt.seq) in self.ctx.check.expected:
                    self._check(pkt)
                else:
                    self.early[(pkt.sock, pkt.seq)] = pkt
        finally:  # a panic (or the end): nobody waits for the wire any longer
            for ev in self.arrived.values():
                ev.set()
            self.idle.set()


class _Player(VmOps):
    """Plays one workload on a booted machine (see the module doc for the checks; the
    VM calls' ops are machine.explore.vmops')."""

    def __init__(self, w: Workload, sim: SimMachine, m: Machine, ctx: Ctx, found: _Found):
        self.w, self.sim, self.m, self.ctx, self.found = w, sim, m, ctx, found
        self.rx = _Receiver(ctx, found)
        self.files = 0
        self.sent: dict[int, list[asyncio.Event]] = {}  # client -> its sends' arrivals
        self.held = False  # the test-only leak op held the link: later sends stay queued

    async def play(self) -> None:
        w, ctx = self.w, self.ctx
        await ctx.kcall(
            "net", NetLink(h=_H, bandwidth_bps=w.link_bps, latency_us=w.link_latency_us)
        )
        async with ctx.wire:
            rx = asyncio.create_task(self.rx.run())
            clients: list[asyncio.Task[None]] = []
            try:
                clients += [
                    asyncio.create_task(self.client(i, ops)) for i, ops in enumerate(w.clients, 1)
                ]
                await asyncio.wait(clients)
                for t in clients:
                    if t.exception() is not None:
                        self.failed(t.exception())  # type: ignore[arg-type]
                if self.found.by:
                    return
                try:
                    await asyncio.wait_for(self.rx.idle.wait(), self.link_s())
                except TimeoutError:
                    n = len(ctx.check.expected)
                    self.found.add("hang", f"{n} sends never arrived within {self.link_s():g} s")
                    return
            finally:  # every task of the run ends here, also when play is interrupted
                for t in (rx, *clients):
                    t.cancel()
                await asyncio.gather(rx, *clients, return_exceptions=True)
                if rx.done() and not rx.cancelled() and rx.exception() is not None:
                    self.failed(rx.exception())  # type: ignore[arg-type]
        await self.final_checks()

    def link_s(self) -> float:
        """A generous bound on the link's time for every byte of the workload."""
        total = sum(int(op.args.get("size", 0)) for ops in self.w.clients for op in ops)
        wire = total * 8 / self.w.link_bps if self.w.link_bps else 0.0
        return 30.0 + 2 * wire + self.w.link_latency_us / 1e6 * 64

    def failed(self, e: BaseException) -> None:
        if isinstance(e, MachinePanic) or self.m.panic is not None:
            self.found.add("panic", str(e))  # replaced by the machine's own panic later
        elif isinstance(e, WireCorruption):
            self.found.add("corruption", e.detail)
        elif isinstance(e, MachineTimeout | SimulationDeadlock | SimulationTimeout):
            self.found.add("hang", f"{type(e).__name__}: {e}")
        else:
            self.found.add("error", f"{type(e).__name__}: {e}")

    async def final_checks(self) -> None:
        ctx, leaks = self.ctx, []
        try:
            await ctx.drain(self.link_s())
        except ScenarioFailure as e:
            leaks.append(str(e))
        await self.daemon_idle()
        left = await ctx.loans_left()
        if left:
            leaks.append(f"{left} pages still loaned after every client exited")
        problems = await ctx.audit()
        if problems:
            self.found.add("audit", "; ".join(problems[:8]))
        fr = await ctx.frames()
        held = fr["total"] - fr["free"] - fr["kernel_owned"]
        if held:
            leaks.append(f"{held} frames neither free nor kernel-owned: {fr}")
        if fr.get("swpginuse", 0):
            leaks.append(f"{fr['swpginuse']} swap slots still in use")
        if leaks:
            self.found.add("leak", "; ".join(leaks))

    async def daemon_idle(self) -> None:
        """Wait until the page daemon's pass (if one runs) has ended: the pages it claimed
        are PG_BUSY until its finish, and those an exit released meanwhile (uvm_anfree:
        PG_RELEASED) are freed only by that finish, so frames counted before it would be a
        false leak. A pass that never ends is a hang."""

        async def idle() -> bool:
            return not (await self.ctx.counters("pdaemon")).get("scanning", 0)

        try:
            await poll_for(idle, self.link_s(), 0.01, "the page daemon's pass")
        except TimeoutError:
            self.found.add("hang", f"the page daemon's pass did not end in {self.link_s():g} s")

    # -- the clients --------------------------------------------------------------------

    async def client(self, i: int, ops: tuple[Op, ...]) -> None:
        """Client i's ops in order, a new process after an exit (or an OOM kill); at the
        end it waits until its sends have arrived, then exits (a clean close, no loan
        of its memory still out: an exit during a loan is the after_exit feature)."""
        p: Process | None = None
        s: Socket | None = None
        sent = self.sent[i] = []
        for k, op in enumerate(ops):
            if p is None or p.exited:
                p = await self.m.spawn()
                s = await p.socket()
            assert s is not None
            try:
                await self.op(p, s, op, i * 1000 + k)
            except OutOfMemory:
                await _gone(p)  # killed by the kernel, or refused (then it exits now)
                p = None  # the next op gets a new process
        try:
            async with asyncio.timeout(self.link_s()):
                for ev in sent:
                    await ev.wait()
        except TimeoutError:
            raise MachineTimeout(
                f"client {i}'s sends did not arrive in {self.link_s():g} s"
            ) from None
        if p is not None and not p.exited:
            await p.exit()

    def expect(self, tag: int, r: Any, data: bytes) -> None:
        if not self.held:  # a held link delivers nothing: nothing to expect
            self.sent[tag // 1000].append(self.rx.expect(r, data))

    async def op(self, p: Process, s: Socket, op: Op, tag: int) -> None:
        a, kind = op.args, op.kind
        if kind == "send":
            await self.send(p, s, a, tag)
        elif kind == "map":
            n = int(a["pages"]) * PAGE_SIZE
            va = await self.buffer(p, n, "shared" if a.get("shared") else "private")
            data = fill(tag, n)
            await p.store(va, data)
            if a.get("msync"):
                await p.msync(va, n)
            await self.sees(p, va, data, "its file mapping")
        elif kind == "mlock":
            n = int(a["pages"]) * PAGE_SIZE
            va = await p.mmap(n, "rw")
            data = fill(tag, n)
            await p.store(va, data)
            locked = await self.mlock(p, va, data)
            if a.get("send"):
                self.expect(tag, await p.send(s, va, n), data)
            if locked:
                await p.munlock(va, n)
        elif kind == "hog":
            await self.hog(int(a["pages"]))
        elif kind == "wakeup":
            await self.ctx.kcall("pdaemon", PdWakeup(h=_H))
        elif kind in VM_KINDS.values():
            await self.vm_op(p, s, op, tag)
        elif kind == "leak":  # test-only: an injected leak
            await self.leak(str(a.get("what", "hold")))
        else:
            raise WorkloadError(f"unknown op {op}")

    async def send(self, p: Process, s: Socket, a: dict[str, Any], tag: int) -> None:
        n, buf, then = int(a["size"]), str(a.get("buf", "anon")), str(a.get("then", ""))
        va = await self.buffer(p, n, buf)
        data = fill(tag, n)
        await p.store(va, data)
        r = await p.send(s, va, n)
        model = bytes([data[0] ^ 0xFF]) + data[1:] if a.get("flip") else data
        self.expect(tag, r, model)
        if then == "write":
            await p.store(va, b"\xee" * n)  # a write fault on a loaned page: a loan break
            await self.sees(p, va, b"\xee" * n, "its new bytes after the send")
        elif then == "unmap":
            await p.munmap(va, -(-n // PAGE_SIZE) * PAGE_SIZE)
        elif then == "exit":
            await p.exit()
        elif then == "fork":
            c = await p.fork()
            await c.store(va, b"\xcc" * n)
            if buf != "shared":
                await self.sees(p, va, data, "its bytes after its child's write (COW)")
            await c.exit()

    async def hog(self, pages: int) -> None:
        """Touch `pages` pages of a fresh process (a store per MAX_ACCESS_BYTES), then exit."""
        h = await self.m.spawn()
        try:
            va = await h.mmap(pages * PAGE_SIZE, "rw")
            await h.store(va, b"h" * (pages * PAGE_SIZE))
        except OutOfMemory:
            await _gone(h)  # killed under pressure, or refused (then it exits now)
            return
        await h.exit()

    async def leak(self, what: str) -> None:
        if what == "hold":  # keep every later loan: the driver stops draining
            self.held = True
            await self.ctx.kcall("net", NetLink(h=_H, hold=True))
        else:  # a process with a wired page that never exits
            q = await self.m.spawn()
            va = await q.mmap(PAGE_SIZE, "rw")
            await q.store(va, b"w")
            await q.mlock(va, PAGE_SIZE)


async def _gone(p: Process) -> None:
    """A process an OutOfMemory left behind exits, unless the kernel killed it already: a
    refused fault (ENOMEM, the process alive) would otherwise hold its frames to the end."""
    if not p.exited:
        with contextlib.suppress(MachineError):
            await p.exit()


async def _run(
    w: Workload,
    profile: str,
    seed: int,
    boot_kw: dict[str, Any],
    st: _State,
    follow: GateMaker | None = None,
) -> None:
    async with (
        SimMachine.boot(
            seed=seed, ram_bytes=w.ram, swap_bytes=w.swap, profile=profile, **boot_kw
        ) as sim,
        sim.attach() as m,
    ):
        st.sim, st.m = sim, m
        ctx = Ctx(m, sim.kcall, Wire.tap(sim.kcall, m), load_profile(profile).knobs, w.ram)
        player = _Player(w, sim, m, ctx, st.found)
        try:
            if w.recorded():
                sessions: dict[int, str] = {}
                st.gate = gate = follow(sessions) if follow is not None else None
                sim.transport.gate = gate
                hooks = Hooks(player.failed, st.found.add, player.final_checks, gate, sessions)
                calls = CallPlayer(w, sim, ctx, hooks)
                st.calls = calls.stats
                await calls.play()
            else:
                await player.play()
        except Exception as e:
            player.failed(e)
        if m.panic is not None:
            panic = await _panic_of(m, m.panic)
            st.found.by["panic"] = f"{panic.role or '?'}: {panic.message}"
        st.vtime = asyncio.get_running_loop().time()


@dataclass
class _State:
    found: _Found = field(default_factory=_Found)
    sim: SimMachine | None = None
    m: Machine | None = None
    vtime: float = 0.0
    gate: Any = None  # the follow gate, if any (its report goes into the result)
    calls: PlayStats | None = None


def run_workload(
    w: Workload,
    profile: str,
    sched_seed: int | str,
    strategy: str = "random",
    depth: int = 3,
    record: bool = False,
    time_limit_s: float = 600.0,
    follow: GateMaker | None = None,
) -> RunResult:
    """Boot, play, check, classify (module doc). Synchronous: its own VirtualTimeLoop.
    `follow`: a recorded workload's delivery order to follow (module doc)."""
    rng = random.Random(f"s:{sched_seed}")
    if w.bus_us == BUS_US:
        schedule = make_schedule(strategy, rng, depth)
    else:  # a recorded run's replay on a slower bus
        lo, hi = (us / 1e6 for us in w.bus_us)
        schedule = make_schedule(strategy, rng, depth, lo_s=lo, hi_s=hi)
    boot_kw: dict[str, Any] = {"schedule": schedule, "record": record}
    st = _State()
    try:
        run_simulation(
            _run(w, profile, seed_of(sched_seed), boot_kw, st, follow), limit_s=time_limit_s
        )
    except (SimulationDeadlock, SimulationTimeout) as e:
        if st.m is not None and st.m.panic is not None:
            p = st.m.panic
            st.found.add("panic", f"{p.role or '?'}: {p.message}")
        st.found.add("hang", f"{type(e).__name__}: {e}")
        st.vtime = time_limit_s if isinstance(e, SimulationTimeout) else st.vtime
    except Exception as e:  # booting or tearing down failed
        st.found.add("error", f"{type(e).__name__}: {e}")
    outcome, message = st.found.first()
    m = _REVOKED.search(message) if outcome == "panic" else None
    bus = st.sim.transport if st.sim is not None else None
    return RunResult(
        outcome=outcome,
        message=message,
        trace_hash=bus.digest() if bus is not None else "",
        deliveries=bus.deliveries if bus is not None else 0,
        virtual_s=st.vtime,
        revoker=m.group(1) if m else "",
        record=bus.record if bus is not None and record else None,
        follow=st.gate.report() if st.gate is not None else None,
        calls=st.calls,
    )
