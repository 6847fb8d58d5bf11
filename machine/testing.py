"""The in-process machine: every role as a service in one process, on the in-memory bus.

    async def main():
        async with SimMachine.boot(seed=7, ram_bytes=4 << 20) as sim:
            async with sim.attach() as m:
                p = await m.spawn() ...
    run_simulation(main())

Same Service classes as the real processes, the same supervisor, the same
client library; only the transport (machine.ipc.inmemory) and the launcher
differ. With the virtual-time loop the run is deterministic for a seed.
Also: poll_for() (wait for a condition with a deadline, never a bare sleep).

A temporary state directory (no state_dir given) is made under SIM_TMP, the host's
memory-backed /dev/shm when there is one: the simulated machine's disk and swap are
thrown away after the run, so their writes and fsyncs need not wait for a real disk
(on a host shared with other jobs one fsync took milliseconds, the run's whole budget).
The files and every call on them are the same as on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from machine.client import Machine
from machine.config import CLIENT_LEASE_S
from machine.ipc.auth import KEY_LEN
from machine.ipc.inmemory import InMemoryTransport
from machine.ipc.peer import Peer
from machine.ipc.schedule import Schedule
from machine.ipc.service import Service
from machine.limits import Limits
from machine.params import PAGE_SIZE
from machine.proto import NO_HEADER, Reply, Request
from machine.ram import Ram
from machine.roles import ROLE_NAMES, make_service
from machine.supervisor.arbiter import Supervisor
from machine.supervisor.launcher import Launcher

_H = NO_HEADER
#: Where a temporary state directory goes: memory-backed when the host has /dev/shm.
SIM_TMP: str | None = "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else None


class InprocLauncher(Launcher):
    """Roles as in-process services on the in-memory transport."""

    def __init__(
        self,
        transport: InMemoryTransport,
        ram: Ram,
        rng: random.Random,
        lease_s: float,
        state_dir: str = "",
        swap_bytes: int = 0,
        profile: str = "modern",
        limits: Limits | None = None,
    ) -> None:
        self.profile = profile
        self.limits = limits
        self.key = rng.randbytes(KEY_LEN)  # the machine key, from the seed (deterministic)
        self.transport = transport
        self.ram = ram
        self.rng = rng
        self.lease_s = lease_s
        self.state_dir = state_dir
        self.swap_bytes = swap_bytes
        self.services: dict[str, Service] = {}

    async def start(self, role: str, peers: dict[str, dict[str, str]]) -> dict[str, Any]:
        svc = make_service(
            role,
            self.transport,
            self.ram,
            self.rng,
            self.lease_s,
            pid=0,
            state_dir=self.state_dir,
            swap_bytes=self.swap_bytes,
            profile=self.profile,
            key=self.key,
            limits=self.limits,
            peers=peers,
        )
        await svc.connect()
        eps = await svc.start(
            f"inproc://{role}/kernel", f"inproc://{role}/user", f"inproc://{role}/pub"
        )
        self.services[role] = svc
        return {**eps, "pid": 0, "incarnation": svc.incarnation}

    async def stop(self, role: str, timeout_s: float) -> None:
        svc = self.services.pop(role, None)
        if svc is not None:
            await svc.close()


class SimMachine:
    """A booted in-process machine."""

    def __init__(
        self, transport: InMemoryTransport, sup: Supervisor, launcher: InprocLauncher, ram: Ram
    ) -> None:
        self.transport = transport
        self.sup = sup
        self.launcher = launcher
        self.ram = ram
        self.endpoint = sup.endpoints["user"]
        self.state_dir = ""
        self._kernel_peers: dict[str, Peer] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def boot(
        cls,
        seed: int = 0,
        ram_bytes: int = 4 << 20,
        *,
        lease_s: float = CLIENT_LEASE_S,
        state_dir: str = "",
        heartbeat_s: float = 1.0,
        panic_grace_s: float = 0.5,
        latency_s: tuple[float, float] = (20e-6, 200e-6),
        swap_bytes: int = 0,
        profile: str = "modern",
        limits: Limits | None = None,
        schedule: Schedule | None = None,
        record: bool = False,
    ) -> AsyncIterator[SimMachine]:
        """Boot every role in this process. state_dir "" means a temporary one
        (disk/ and swap.img, under SIM_TMP), removed afterwards. profile: a shipped name
        or a TOML path. schedule: the bus's delivery delays (default: seeded random
        within latency_s); record: the bus keeps every delivery (sim.transport.record)."""
        transport = InMemoryTransport(seed, latency_s, schedule=schedule, record=record)
        rng = random.Random(seed)
        ram = Ram.anonymous(ram_bytes)
        tmp = None if state_dir else tempfile.TemporaryDirectory(prefix="uvm-sim-", dir=SIM_TMP)
        state_dir = state_dir or (tmp.name if tmp is not None else "")
        launcher = InprocLauncher(
            transport, ram, rng, lease_s, state_dir, swap_bytes, profile, limits
        )
        sup = Supervisor(
            transport,
            launcher,
            nframes=ram_bytes // PAGE_SIZE,
            profile=profile,
            state_dir=state_dir,
            lease_s=lease_s,
            heartbeat_s=heartbeat_s,
            panic_grace_s=panic_grace_s,
            rng=rng,
            pid=0,
            key=launcher.key,
            dump_in_thread=False,  # a run stays a function of its seed
        )
        await sup.boot(
            "inproc://supervisor/router", "inproc://supervisor/pub", "inproc://supervisor/kernel"
        )
        sim = cls(transport, sup, launcher, ram)
        sim.state_dir = state_dir
        try:
            yield sim
        finally:
            for p in sim._kernel_peers.values():
                await p.close()
            if not sup.stopped.is_set():
                await sup.shutdown("simulation done")
            await sup.close()
            ram.close()
            if tmp is not None:
                tmp.cleanup()

    def attach(self, **kw: Any) -> contextlib.AbstractAsyncContextManager[Machine]:
        return Machine.attach(self.endpoint, transport=self.transport, **kw)

    def service(self, role: str) -> Service:
        return self.launcher.services[role]

    async def kcall(self, role: str, req: Request, timeout_s: float = 10.0) -> Reply:
        """A request on a role's kernel endpoint (the kernel debugger's view)."""
        peer = self._kernel_peers.get(role)
        if peer is None:
            peer = await Peer(self.sup.ident, f"inproc://{role}/kernel").open(self.transport)
            self._kernel_peers[role] = peer
        return await peer.call(req, timeout_s)

    @property
    def roles(self) -> tuple[str, ...]:
        return ROLE_NAMES


async def poll_for(
    pred: Callable[[], Awaitable[bool] | bool],
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    what: str = "condition",
) -> None:
    """Wait until pred() is true; raise TimeoutError after timeout_s (wall or virtual)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    wall_deadline = time.monotonic() + timeout_s * 4
    while True:
        r = pred()
        if not isinstance(r, bool):
            r = await r
        if r:
            return
        if loop.time() > deadline or time.monotonic() > wall_deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)
