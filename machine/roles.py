"""Building and running one role: the same code in a real process and in simulation.

ROLES lists every role's spec (machine.rolespec) in start order. make_service()
builds a role's Service from its spec, its core complete; `await svc.connect()`
opens its peers (uvm -> mmu; pdaemon -> uvm, mmu and uvm's events; net -> uvm,
mmu, uvm's exits, link up); then it binds and serves.
role_main() is a role process's entry point (multiprocess target and
`uvm-machine role NAME`): it maps RAM, binds, reports its endpoints through
the ready pipe (or stdout), and serves until ctl.shutdown or a signal — or
until the supervisor dies (machine.orphan: it then stops as ctl.shutdown would).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
from typing import Any

from machine import orphan
from machine.config import CHANNELS, RoleConfig, advertised
from machine.ipc import timing
from machine.ipc.auth import read_key_file
from machine.ipc.peer import Peer
from machine.ipc.service import Service
from machine.ipc.transport import Transport
from machine.limits import Limits
from machine.mmu import spec as mmu_spec
from machine.net import spec as net_spec
from machine.pdaemon import spec as pdaemon_spec
from machine.profile import load_profile
from machine.ram import Ram
from machine.rolespec import RoleContext, RoleSpec
from machine.uvm import spec as uvm_spec

#: Every role, in start order: a role starts after the roles it connects to
#: (RoleSpec.connects_to) and stops before them. Adding a role is adding its spec here.
ROLES: tuple[RoleSpec, ...] = (mmu_spec.SPEC, uvm_spec.SPEC, pdaemon_spec.SPEC, net_spec.SPEC)
SPECS: dict[str, RoleSpec] = {s.name: s for s in ROLES}
ROLE_NAMES: tuple[str, ...] = tuple(SPECS)


def fixed_layout(host: str, base: int, kernel_dir: str = "") -> dict[str, dict[str, str]]:
    """Endpoints of every role (and the supervisor) under the fixed port layout: with
    base port B on host H, the supervisor's ROUTER B and PUB B+1; each role's kernel,
    user and pub B + port_offset + 0, 1, 2 (mmu 10, uvm 20, pdaemon 30, net 40).
    With a kernel directory D (compose: UVM_MACHINE_KERNEL_DIR), every kernel channel
    is instead the Unix socket ipc://D/ROLE.kernel (mode 0600, D mode 0700, on a volume
    only the machine's services mount): no kernel TCP port exists, so nothing outside
    the machine can reach a kernel endpoint.

    => with `kernel_dir`, each role's kernel channel is ipc://{kernel_dir}/{role}.kernel
       and its port (B+10, B+20, ...) is not used; user and pub stay TCP.
    """
    out = {"supervisor": {"router": f"tcp://{host}:{base}", "pub": f"tcp://{host}:{base + 1}"}}
    for spec in ROLES:
        role, off = spec.name, spec.port_offset
        out[role] = {ch: f"tcp://{host}:{base + off + j}" for j, ch in enumerate(CHANNELS)}
        if kernel_dir:
            out[role]["kernel"] = f"ipc://{kernel_dir.rstrip('/')}/{role}.kernel"
    return out


def make_service(
    role: str,
    transport: Transport,
    ram: Ram,
    rng: random.Random,
    lease_s: float,
    pid: int | None = None,
    state_dir: str = "",
    swap_bytes: int = 0,
    profile: str = "modern",
    *,
    key: bytes | None = None,
    limits: Limits | None = None,
    peers: dict[str, dict[str, str]] | None = None,
) -> Service:
    """=> the role's Service, its core complete (machine.rolespec, step 1). `peers`: the
    endpoints of the roles it connects to; `key`: the machine key (signed user
    requests); `limits`: what one process and one session may hold (machine.limits)."""
    spec = SPECS.get(role)
    if spec is None:
        raise ValueError(f"unknown role {role!r}")
    ctx = RoleContext(
        transport=transport,
        ram=ram,
        rng=rng,
        profile=load_profile(profile),
        limits=limits or Limits(),
        peers=peers or {},
        key=key,
        pid=pid,
        lease_s=lease_s,
        state_dir=state_dir,
        swap_bytes=swap_bytes,
    )
    return spec.build(ctx)


async def serve_role(cfg: RoleConfig, ready: Any = None, standalone: bool = False) -> int:
    """Run one role over ZeroMQ until ctl.shutdown or SIGTERM (and SIGINT if standalone).

    => exit status: 0, or orphan.EXIT_ORPHANED when the supervisor died first.
       A supervised role ignores SIGINT: a terminal's Ctrl-C reaches the whole
       process group, and the supervisor stops roles in order.
    """
    from machine.ipc.zmqtransport import ZmqTransport

    ram = Ram.attach(cfg.ram_name, cfg.ram_bytes)
    transport = ZmqTransport()
    rng = random.Random(cfg.seed)
    # Request timing (machine.ipc.timing): UVM_MACHINE_TIMING=1, read once, for the process.
    Service.timing = Peer.timing = timing.from_env()
    svc = make_service(
        cfg.role,
        transport,
        ram,
        rng,
        cfg.lease_s,
        None,
        cfg.state_dir,
        cfg.swap_bytes,
        cfg.profile,
        key=read_key_file(cfg.key_file) if cfg.key_file else None,
        limits=Limits.from_dict(cfg.limits),
        peers=cfg.peers,
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, svc.stopped.set)
    if standalone:
        loop.add_signal_handler(signal.SIGINT, svc.stopped.set)
    orphaned = False
    try:
        await svc.connect()  # its peers serve already; it serves only once they are open
        eps = await svc.start(cfg.kernel, cfg.user, cfg.pub)
        eps = {k: advertised(v, cfg.advertise) for k, v in eps.items()}
        info = {"role": cfg.role, "pid": os.getpid(), "incarnation": svc.incarnation, **eps}
        if ready is not None:
            ready.send(info)
            ready.close()
        else:
            print(json.dumps(info), flush=True)
        orphaned = await orphan.until_stopped(svc, cfg)
    except Exception as e:
        if ready is not None:
            with contextlib.suppress(Exception):
                ready.send({"error": f"{type(e).__name__}: {e}"})
        raise
    finally:
        await svc.close()
        await transport.close()
        ram.close()
        if orphaned:
            orphan.remove_leftovers(cfg, ram)
    return orphan.EXIT_ORPHANED if orphaned else 0


def role_main(cfg_dict: dict[str, Any], ready: Any = None) -> None:
    """Process entry point (picklable): run the role, exit with its status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor stops us, not the terminal
    cfg = RoleConfig.from_dict(cfg_dict)
    status = asyncio.run(serve_role(cfg, ready))
    os._exit(status)
