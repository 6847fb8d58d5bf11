"""The net role's core: its parts wired together, with no bus (cf. machine.mmu.pmap).

    net = Net(ops, knobs=net_knobs("modern"), limits=Limits(), ram=ram, clock=clock)

`ops` is the kernel the core calls (machine.net.kernel.KernelOps: BusKernel over the
kernel bus, a fake in unit tests). The parts, one job each, share one wait channel
(machine.net.synch: sbwait, the mbuf pool and loan KVA sleep on it; every free wakes it)
and one counter dict:

    sockets  machine.net.socket   socket records, soclose, sofree
    sosend   machine.net.sosend   the send path: chunks, loans, copies, the window
    kva      machine.net.kva      loan KVA (socurkva <= somaxkva)
    pool     machine.net.mbuf     storage of copied data (mbuf_bytes <= limits.mbufs)
    driver   machine.net.driver   the ring, transmit, sopendfree
    wire     machine.net.wire     listeners and taps

What is here is what spans parts: the owner checks of net.socket and net.listen, the
reconciliation with uvm, the link's settings and the counters. Every invariant is the
parts' (see each module); the core adds one: a socket or listener names a process or
session uvm called live when it was made, and `reconcile` ends those uvm no longer
knows (sockets of processes that exited, listeners of sessions that ended).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from machine.ipc.peer import RemoteError
from machine.kpt import KernelPageTable
from machine.limits import Limits
from machine.net.driver import Driver, PhysMem, Sleeper
from machine.net.kernel import KernelOps
from machine.net.knobs import NetKnobs, new_stats
from machine.net.kva import KvaArena
from machine.net.mbuf import MbufPool
from machine.net.socket import Socket, SocketTable
from machine.net.sosend import Sosend
from machine.net.synch import WaitChannel
from machine.net.wire import Wire
from machine.params import PAGE_SIZE
from machine.proto import Errno, UserError

OWNERS_BATCH = 4096  # asids or sessions per uvm.owners request


class Net:
    """Sockets, the send path, loan KVA, the mbuf pool, the driver and the wire."""

    def __init__(
        self,
        ops: KernelOps,
        *,
        knobs: NetKnobs,
        limits: Limits,
        ram: PhysMem | None,
        clock: Sleeper,
        log: Callable[[str], None] = lambda line: None,
        note: Callable[..., None] | None = None,
        live: Collection[int] = (),
        kpt: KernelPageTable | None = None,
    ) -> None:
        """live: the sessions net knows live (its SessionAuth's), the `n` of the fair
        shares of mbufs (machine.share; wire_total's is the wire's own: machine.net.wire)."""
        self.ops = ops
        self.knobs = knobs
        self.limits = limits
        self.log = log
        self.stats = new_stats()
        self.chan = WaitChannel()
        self.kva = KvaArena(self.chan, self.stats)
        self.pool = MbufPool(self.chan, limits.mbufs, self.stats, live)
        self.sockets = SocketTable(self.chan, self.stats, log)
        self.wire = Wire(limits.wire_bytes, limits.wire_total, self.stats)
        self.driver = Driver(
            ops, ram, clock, self.wire.deliver, self.kva, self.pool, self.sockets, self.chan,
            self.stats, note, kpt,
        )  # fmt: skip
        self.driver.wire = self.wire
        self.sosend = Sosend(
            ops, knobs, self.kva, self.pool, self.driver, self.sockets, self.chan, self.stats, log
        )
        if ram is not None:  # a window's loans hold at most an eighth of RAM
            self.sosend.loan_window_pages = max(16, len(ram.view) // PAGE_SIZE // 8)

    async def socreate(self, session: int, asid: int, sndbuf: int) -> Socket:
        """A socket for process asid of the session. => ESRCH when uvm knows no such
        process of that session (alike for none and another session's), EMFILE."""
        owners, _ = await self.ops.owners([asid], [])
        if owners != [session]:
            raise UserError(Errno.ESRCH, f"no process with asid {asid}")
        return self.sockets.socreate(session, asid, sndbuf, self.limits.sockets)

    async def listen(self, session: int) -> None:
        """The session's mbufs are queued for it from now on. => ESESSION when uvm says the
        session has ended."""
        if session not in self.wire.listeners:
            _, live = await self.ops.owners([], [session])
            if live != [True]:
                raise UserError(Errno.ESESSION, "the session has ended (detached or reaped)")
            self.wire.listen(session)

    def set_link(
        self, bandwidth_bps: int, latency_us: int, hold: bool, somaxkva: int, loan_chunk: int
    ) -> None:
        """net.link: the link's speed, hold, and (non-zero) somaxkva and the loan chunk."""
        self.driver.bandwidth_bps, self.driver.latency_us = bandwidth_bps, latency_us
        if somaxkva:
            self.kva.somaxkva = somaxkva
        if loan_chunk:
            self.sosend.loan_chunk = loan_chunk
        self.driver.hold(hold)

    async def reconcile(self) -> None:
        """Close the sockets of processes that are gone and end the listeners of sessions
        that are gone (a lost uvm.proc_exited leaks nothing). An error from uvm ends this
        round; the next one tries again."""
        asids = self.sockets.open_asids()
        sessions = sorted(self.wire.listeners)
        if not asids and not sessions:
            return
        self.stats["reconciles"] += 1
        for i in range(0, max(len(asids), len(sessions)), OWNERS_BATCH):
            some_asids = asids[i : i + OWNERS_BATCH]
            some_sessions = sessions[i : i + OWNERS_BATCH]
            try:
                owners, live = await self.ops.owners(some_asids, some_sessions)
            except RemoteError as e:
                self.log(f"reconcile: uvm.owners failed ({e.errno}); next time")
                return
            for asid, owner in zip(some_asids, owners, strict=False):
                if owner == 0:
                    self.sockets.process_exited(asid, "exited (reconciled with uvm)")
            for session, alive in zip(some_sessions, live, strict=False):
                if not alive:
                    self.wire.unlisten(session)

    def counters(self) -> dict[str, int]:
        return {
            **self.stats,
            "sockets": len(self.sockets),
            "listeners": len(self.wire.listeners),
            "taps": len(self.wire.taps),
            "wire_queued": self.wire.wire_queued,
            "txq": self.driver.queued,
            "pendfree_q": self.driver.pendfree.qsize(),
            "socurkva": self.kva.socurkva,
            "mbuf_bytes": self.pool.mbuf_bytes,
            "held": int(self.driver.held),
        }

    def dump_state(self) -> dict[str, Any]:
        return {
            "counters": self.counters(),
            "loan_thresh": self.knobs.loan_thresh,
            "somaxkva": self.kva.somaxkva,
            "link": {
                "bandwidth_bps": self.driver.bandwidth_bps,
                "latency_us": self.driver.latency_us,
            },
        }
