"""Playing a recorded run's requests in the in-process machine (a workload of calls).

    player = CallPlayer(w, sim, ctx, found, hooks)
    await player.play()                  # from run.run_workload, for a recorded workload

A workload rebuilt from a dump (machine.explore.fromdump) is one client per
recorded session, its ops the session's requests in the order it sent them
("call": the recorded bytes), plus one client of kernel-side tool requests
("kcall": the nemesis's net.link, pd.wakeup). Playing it:

  * every recorded session gets a session of its own (sim.attach()), attached
    when its first op is due and detached where the recorded one sent
    uvm.detach, else when every client is done; its calls go one at a time,
    each awaiting its reply, as the recorded client did (its msg_id order is
    its send order);
  * identifiers are the simulator's: the recorded asid, socket and file handle a
    spawn, fork, net.socket or uvm.open made (`makes`) is mapped to the one the
    replay's reply names, per session, and every later request's asid, sock
    and handle field is mapped through it (unknown ids go as recorded: they
    fail as another session's would);
  * VAs go as recorded (the same mmaps of a process in the same order give the
    same VAs: uvm's first fit); a request whose range is not inside what the
    replay mapped for its process is counted as a VA mismatch (`va_mismatch`,
    the first few described) and sent anyway; a fork's child has what its
    parent mapped but the ranges minherit NONE left out (a new mapping or a
    later minherit of another value puts them back);
  * the wire: net.listen opens the session's Wire (its feed reads net.recv in
    the background), a run of recorded net.recv long polls becomes one wait
    until the session's sends so far have come out on the operator's tap,
    net.unlisten closes the Wire;
  * corruption: before each net.send the sent range is read straight from the
    simulated RAM through the mmu's pmap (no message: the interleaving does
    not change); its payload on the tap must equal those bytes wherever the
    page was resident (`checked_bytes`); a page not resident at send is not
    checked (`unchecked_bytes`);
  * "paced" (a feature of the workload): no op goes before its recorded time
    `at_us` after the start; a kcall also waits until every client has issued
    its ops with a smaller `seq` (its place in the merged history);
  * a request that fails (an error reply: a shrunk workload that lost its
    spawn, an OOM kill) is counted (`failed_calls`) and the client goes on; a
    panic, a stop or a call's timeout ends the clients (the caller classifies
    it through hooks.failed).
Invariant: the player's own choices (attach order, id maps, pacing) depend
only on the workload and the replies, so a play is a function of its run's
seeds, as run.run_workload requires.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from machine.client import (
    Machine,
    MachineError,
    MachinePanic,
    MachineStopped,
    MachineTimeout,
    Packet,
    Wire,
)
from machine.explore.workload import Op, Workload
from machine.ipc.follow import FollowGate
from machine.mmu.pmap import Mmu
from machine.params import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from machine.proto import (
    MAP_INHERIT_NONE,
    MmuAccessReply,
    NetSendReply,
    NetSocketReply,
    Reply,
    Request,
    Status,
    UvmForkReply,
    UvmMmapReply,
    UvmOpenReply,
    UvmSpawnReply,
    decode_request,
)
from machine.scenarios.runner import Ctx
from machine.testing import SimMachine, poll_for

#: What a creating request makes (the field of later requests that names it).
MAKES = {"uvm.spawn": "asid", "uvm.fork": "asid", "net.socket": "sock", "uvm.open": "handle"}
#: Requests whose (va, length-or-n) is a range of the process's memory.
_RANGES = {
    "mmu.load": "n",
    "net.send": "n",
    "uvm.munmap": "length",
    "uvm.wire": "length",
    "uvm.unwire": "length",
    "uvm.msync": "length",
    "uvm.mprotect": "length",
    "uvm.minherit": "length",
    "uvm.madvise": "length",
    "uvm.mincore": "length",
}
#: How long a recorded wire read waits for the session's sends (the stress sender's).
WIRE_WAIT_S = 20.0
#: How long the run's session may take to hear of a panic a client saw first.
PANIC_WAIT_S = 2.0
#: How long before its first op is due a paced client attaches its session (an attach is
#: a few requests: the first op then goes on time).
ATTACH_LEAD_S = 0.01
#: VA mismatches described in the result (all are counted).
VA_NOTES = 5


class GateMaker(Protocol):
    """Makes the follow gate of a run, given the map the player fills (simulated
    session id -> recorded session id) that the gate's classify reads."""

    def __call__(self, sessions: dict[int, str]) -> FollowGate: ...


@dataclass
class Hooks:
    """What the run gives the player: its classification of an exception, its note of an
    outcome found (outcome, message), the final checks, the follow gate (started when
    the ops start) and the map the gate reads (simulated session -> recorded session)."""

    failed: Callable[[BaseException], None]
    found: Callable[[str, str], None]
    final: Callable[[], Awaitable[None]]
    gate: FollowGate | None = None
    sessions: dict[int, str] = field(default_factory=dict)


@dataclass
class PlayStats:
    calls: int = 0
    failed_calls: int = 0
    va_mismatch: int = 0
    va_notes: list[str] = field(default_factory=list)
    checked_bytes: int = 0
    unchecked_bytes: int = 0


class _Client:
    def __init__(self, index: int, ops: tuple[Op, ...]) -> None:
        self.index, self.ops = index, ops
        self.session = next((str(op.args["session"]) for op in ops if "session" in op.args), "")
        self.tool = all(op.kind == "kcall" for op in ops)
        self.m: Machine | None = None
        self.stack = contextlib.AsyncExitStack()  # its session, attached at its first op
        self.ids: dict[tuple[str, int], int] = {}
        self.regions: dict[int, list[tuple[int, int]]] = {}  # simulated asid -> [va, end)
        self.unshared: dict[int, list[tuple[int, int]]] = {}  # asid -> minherit NONE ranges
        self.wire: Wire | None = None
        self.sends: list[asyncio.Event] = []
        self.next_seq = int(ops[0].args.get("seq", 0)) if ops else 1 << 62


class _Tap:
    """The operator's tap: every payload against the memory read at its send."""

    def __init__(self, wire: Wire, stats: PlayStats, found: Callable[[str, str], None]) -> None:
        self.wire, self.stats, self.found = wire, stats, found
        self.want: dict[tuple[int, int], tuple[bytes, list[tuple[int, int]], asyncio.Event]] = {}
        self.early: dict[tuple[int, int], Packet] = {}

    def expect(
        self, sock: int, seq: int, data: bytes, known: list[tuple[int, int]]
    ) -> asyncio.Event:
        ev = asyncio.Event()
        self.want[(sock, seq)] = (data, known, ev)
        pkt = self.early.pop((sock, seq), None)
        if pkt is not None:
            self._check(pkt)
        return ev

    def _check(self, pkt: Packet) -> None:
        data, known, ev = self.want.pop((pkt.sock, pkt.seq))
        ev.set()
        got = pkt.payload
        if len(got) != len(data):
            self.found(
                "corruption", f"socket {pkt.sock} send {pkt.seq}: length {len(got)} != {len(data)}"
            )
            return
        for a, b in known:
            self.stats.checked_bytes += b - a
            if got[a:b] != data[a:b]:
                bad = next(i for i in range(a, b) if got[i] != data[i])
                how = "loaned" if pkt.loaned else "copied"
                self.found(
                    "corruption",
                    f"socket {pkt.sock} send {pkt.seq} ({how}): offset {bad:#x} differs"
                    f" (sent {data[bad]:#04x}, wire {got[bad]:#04x})",
                )
                return
        self.stats.unchecked_bytes += len(data) - sum(b - a for a, b in known)

    async def run(self) -> None:
        try:
            while True:
                pkt = await self.wire.get(1e9)
                if (pkt.sock, pkt.seq) in self.want:
                    self._check(pkt)
                else:
                    self.early[(pkt.sock, pkt.seq)] = pkt
        finally:
            for _, _, ev in self.want.values():
                ev.set()


def memory_at(sim: SimMachine, asid: int, va: int, n: int) -> tuple[bytes, list[tuple[int, int]]]:
    """=> what process `asid` holds at [va, va+n) now, read through the mmu's pmap with no
    message, and the ranges (offsets) that were resident; the rest reads as zeros."""
    mmu = getattr(sim.service("mmu"), "mmu", None)
    pm = mmu.pmaps.get(asid) if isinstance(mmu, Mmu) else None
    out, known = bytearray(n), list[tuple[int, int]]()
    view, pos, end = sim.ram.view, va, va + n
    while pos < end:
        take = min(PAGE_SIZE - (pos & PAGE_MASK), end - pos)
        pte = pm.ptes.get(pos >> PAGE_SHIFT) if pm is not None else None
        if pte is not None:
            base = (pte.pfn << PAGE_SHIFT) + (pos & PAGE_MASK)
            out[pos - va : pos - va + take] = view[base : base + take]
            if known and known[-1][1] == pos - va:
                known[-1] = (known[-1][0], pos - va + take)
            else:
                known.append((pos - va, pos - va + take))
        pos += take
    return bytes(out), known


def request_of(op: Op) -> Request:
    """=> the recorded request of a call or kcall op (ValueError if its body does not decode)."""
    try:
        return decode_request(base64.b64decode(str(op.args["body"])))
    except Exception as e:
        raise ValueError(f"op {op}: its body does not decode: {e}") from None


class CallPlayer:
    """Plays a recorded workload on a booted machine (module doc)."""

    def __init__(self, w: Workload, sim: SimMachine, ctx: Ctx, hooks: Hooks) -> None:
        self.w, self.sim, self.ctx, self.hooks = w, sim, ctx, hooks
        self.found = hooks.found
        self.stats = PlayStats()
        self.clients = [_Client(i, ops) for i, ops in enumerate(w.clients, 1)]
        self.paced = "paced" in w.features
        self.t0 = 0.0
        self._moved = asyncio.Event()

    async def play(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            for c in self.clients:  # detached at the end, in client order, unless before
                stack.push_async_callback(c.stack.aclose)
            await stack.enter_async_context(self.ctx.wire)
            tap = _Tap(self.ctx.wire, self.stats, self.found)
            rx = asyncio.create_task(tap.run())
            loop = asyncio.get_running_loop()
            self.t0 = loop.time()
            if self.hooks.gate is not None:
                self.hooks.gate.start(self.t0)
            tasks = [asyncio.create_task(self.client(c, tap)) for c in self.clients]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for t in tasks:
                    if t.done() and not t.cancelled() and t.exception() is not None:
                        e = t.exception()
                        if isinstance(e, MachinePanic):  # the run names the machine's panic
                            await self.panic_known()
                        self.hooks.failed(e)  # type: ignore[arg-type]
                        return
                await self.arrived(tap)
            finally:
                for t in (rx, *tasks):
                    t.cancel()
                await asyncio.gather(rx, *tasks, return_exceptions=True)
        await self.hooks.final()

    async def panic_known(self) -> None:
        """Wait (bounded) until the run's own session has the panic event: its message
        names the role, as the recording's does (a client's EPANIC reply does not)."""
        with contextlib.suppress(TimeoutError):
            await poll_for(lambda: self.ctx.m.panic is not None, PANIC_WAIT_S, 0.01, "panic")

    async def arrived(self, tap: _Tap) -> None:
        """Every send of the replay has come out on the tap (else a hang, as run.py's)."""
        left = [ev for c in self.clients for ev in c.sends if not ev.is_set()]
        try:
            async with asyncio.timeout(WIRE_WAIT_S * 3):
                for ev in left:
                    await ev.wait()
        except TimeoutError:
            n = sum(1 for ev in left if not ev.is_set())
            self.found("hang", f"{n} sends never arrived within {WIRE_WAIT_S * 3:g} s")

    # -- one client -------------------------------------------------------------------

    async def attach(self, c: _Client) -> None:
        """The client's session, attached now (the recorded one started with its first
        request: it attaches ATTACH_LEAD_S before that is due)."""
        c.m = await c.stack.enter_async_context(self.sim.attach())
        self.hooks.sessions[c.m.session] = c.session

    async def client(self, c: _Client, tap: _Tap) -> None:
        if not c.tool and c.ops:
            await self.pace(c.ops[0], -ATTACH_LEAD_S)
            await self.attach(c)
        for k, op in enumerate(c.ops):
            await self.pace(op)
            c.next_seq = int(c.ops[k + 1].args.get("seq", 0)) if k + 1 < len(c.ops) else 1 << 62
            self.moved()
            try:
                await self.op(c, op, tap)
            except (MachinePanic, MachineStopped, MachineTimeout):
                raise
            except MachineError:
                self.stats.failed_calls += 1
        c.next_seq = 1 << 62
        self.moved()

    def moved(self) -> None:
        """A client issued an op: wake the kcalls waiting for their place (pace)."""
        self._moved.set()
        self._moved = asyncio.Event()

    async def pace(self, op: Op, lead_s: float = 0.0) -> None:
        """Wait until op is due (paced: its at_us, plus `lead_s`; a kcall: its place)."""
        loop = asyncio.get_running_loop()
        if self.paced:
            wait = self.t0 + int(op.args.get("at_us", 0)) / 1e6 + lead_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        after = int(op.args.get("after", -1))
        while after >= 0 and any(c.next_seq < after for c in self.clients if c.ops and not c.tool):
            await self._moved.wait()

    async def op(self, c: _Client, op: Op, tap: _Tap) -> None:
        t, role = str(op.args["t"]), str(op.args["role"])
        req = request_of(op)
        self.stats.calls += 1
        if op.kind == "kcall":
            rep = await self.ctx.kcall(role, req)
            if rep.status is not Status.OK:
                self.stats.failed_calls += 1
            return
        if c.m is None:
            await self.attach(c)
        m = c.m
        assert m is not None
        if t == "uvm.detach":  # the recorded session ended here: its processes exit
            await c.stack.aclose()
            c.m, c.wire = None, None
        elif t == "net.listen":
            c.wire = await Wire(m).open()
        elif t == "net.unlisten":
            if c.wire is not None:
                await c.wire.close()
                c.wire = None
        elif t == "net.recv":  # the session's wire reads: until its sends have arrived
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WIRE_WAIT_S):
                    for ev in list(c.sends):
                        await ev.wait()
        else:
            await self.call(c, m, op, self.mapped(c, req), tap)

    def mapped(self, c: _Client, req: Request) -> Request:
        """The request with its asid, sock and handle fields mapped to the replay's."""
        change = {}
        for name in ("asid", "sock", "handle"):
            v = getattr(req, name, None)
            if isinstance(v, int) and v and (name, v) in c.ids:
                change[name] = c.ids[(name, v)]
        return msgspec.structs.replace(req, **change) if change else req

    async def call(self, c: _Client, m: Machine, op: Op, req: Request, tap: _Tap) -> None:
        t = str(op.args["t"])
        asid = int(getattr(req, "asid", 0) or 0)
        self.check_range(c, t, req, asid)
        sent: tuple[bytes, list[tuple[int, int]]] | None = None
        if t == "net.send":
            sent = memory_at(self.sim, asid, int(getattr(req, "va", 0)), int(getattr(req, "n", 0)))
        rep = await m.call_role(str(op.args["role"]), req, Reply)
        if isinstance(rep, MmuAccessReply) and rep.status is not Status.OK:
            self.stats.failed_calls += 1
            return
        made = _made(rep)
        if made is not None and "makes" in op.args:
            c.ids[(MAKES.get(t, made[0]), int(op.args["makes"]))] = made[1]
        if isinstance(rep, UvmSpawnReply):
            c.regions[rep.asid] = []
        elif isinstance(rep, UvmForkReply):
            kept = c.regions.get(asid, [])
            for va, end in c.unshared.get(asid, []):  # minherit NONE: not in the child
                kept = _cut(kept, va, end)
            c.regions[rep.asid] = list(kept)
        elif isinstance(rep, UvmMmapReply):
            length = -(-int(getattr(req, "length", 0)) // PAGE_SIZE) * PAGE_SIZE
            c.regions.setdefault(asid, []).append((rep.va, rep.va + length))
            self.inherits(c, asid, rep.va, rep.va + length, False)  # a new mapping's default
        elif t in ("uvm.munmap", "uvm.minherit") and rep.status is Status.OK:
            va = int(getattr(req, "va", 0)) // PAGE_SIZE * PAGE_SIZE
            end = -(-(int(getattr(req, "va", 0)) + int(getattr(req, "length", 0))) // PAGE_SIZE)
            if t == "uvm.munmap":
                c.regions[asid] = _cut(c.regions.get(asid, []), va, end * PAGE_SIZE)
            none = t == "uvm.minherit" and getattr(req, "inherit", -1) == MAP_INHERIT_NONE
            self.inherits(c, asid, va, end * PAGE_SIZE, none)
        elif t == "uvm.exit":
            c.regions.pop(asid, None)
            c.unshared.pop(asid, None)
        elif isinstance(rep, NetSendReply) and sent is not None:
            c.sends.append(tap.expect(int(getattr(req, "sock", 0)), rep.seq, *sent))

    def inherits(self, c: _Client, asid: int, va: int, end: int, none: bool) -> None:
        """Note [va, end) of `asid` as left out of a fork's child (minherit NONE) or not."""
        ranges = _cut(c.unshared.get(asid, []), va, end) + ([(va, end)] if none else [])
        if ranges or asid in c.unshared:
            c.unshared[asid] = ranges

    def check_range(self, c: _Client, t: str, req: Request, asid: int) -> None:
        """Count (and describe the first few) requests outside what the replay mapped."""
        if asid not in c.regions:
            return  # a process the replay did not make here: nothing to compare with
        va = int(getattr(req, "va", 0) or 0)
        if t == "mmu.store":
            n = len(getattr(req, "data", b""))
        elif t in _RANGES:
            n = int(getattr(req, _RANGES[t], 0) or 0)
        else:
            return
        if n <= 0 or any(a <= va and va + n <= b for a, b in c.regions[asid]):
            return
        self.stats.va_mismatch += 1
        if len(self.stats.va_notes) < VA_NOTES:
            self.stats.va_notes.append(
                f"client {c.index}: {t} at {va:#x}+{n} is outside the replay's mappings of"
                f" asid {asid}: {[(hex(a), hex(b)) for a, b in c.regions[asid]]}"
            )


def _made(rep: Reply) -> tuple[str, int] | None:
    if isinstance(rep, UvmSpawnReply | UvmForkReply):
        return ("asid", rep.asid)
    if isinstance(rep, NetSocketReply):
        return ("sock", rep.sock)
    if isinstance(rep, UvmOpenReply):
        return ("handle", rep.handle)
    return None


def _cut(regions: list[tuple[int, int]], va: int, end: int) -> list[tuple[int, int]]:
    out = []
    for a, b in regions:
        if b <= va or a >= end:
            out.append((a, b))
            continue
        if a < va:
            out.append((a, va))
        if b > end:
            out.append((end, b))
    return out
