"""Building and running one role: the same code in a real process and in simulation.

make_service() builds a role's Service on a transport; connect_role() wires
it to its peers (uvm -> mmu; pdaemon -> uvm's events; net -> uvm's exits, link up).
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
from machine.config import RoleConfig, advertised
from machine.ipc.auth import read_key_file
from machine.ipc.service import Service
from machine.ipc.transport import Transport
from machine.limits import Limits
from machine.mmu.pmap import Mmu
from machine.mmu.service import MmuService
from machine.net.service import NetService
from machine.pdaemon.service import PdaemonService
from machine.profile import load_profile
from machine.ram import Ram
from machine.uvm.service import UvmService


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
) -> Service:
    """=> the role's Service. `key`: the machine key (signed user requests);
    `limits`: what one process and one session may hold (machine.limits)."""
    kw: dict[str, Any] = {"rng": rng, "pid": pid, "key": key}
    limits = limits or Limits()
    knobs = load_profile(profile).knobs
    if role == "mmu":
        mmu = Mmu(ram, str(knobs["KENTER_MODE"]), str(knobs["PPP_WIRED"]))
        return MmuService(transport, mmu=mmu, limits=limits, **kw)
    if role == "uvm":
        return UvmService(
            transport,
            ram=ram,
            lease_s=lease_s,
            state_dir=state_dir,
            swap_bytes=swap_bytes,
            profile=profile,
            limits=limits,
            **kw,
        )
    if role == "pdaemon":
        return PdaemonService(transport, profile=profile, limits=limits, **kw)
    if role == "net":
        return NetService(transport, ram=ram, profile=profile, limits=limits, **kw)
    raise ValueError(f"unknown role {role!r}")


async def connect_role(svc: Service, peers: dict[str, dict[str, str]]) -> None:
    """Wire a started role to the roles it depends on (which must already serve)."""
    if isinstance(svc, UvmService):
        await svc.attach_mmu(peers["mmu"]["kernel"])
    elif isinstance(svc, PdaemonService):
        await svc.connect_peer("uvm", peers["uvm"]["kernel"])
        await svc.connect_peer("mmu", peers["mmu"]["kernel"])
        await svc.watch_uvm(peers["uvm"]["pub"])
    elif isinstance(svc, NetService):
        await svc.connect_peer("uvm", peers["uvm"]["kernel"])
        await svc.connect_peer("mmu", peers["mmu"]["kernel"])
        await svc.watch_uvm(peers["uvm"]["pub"])  # sockets close when processes exit
        await svc.link_up()


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
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, svc.stopped.set)
    if standalone:
        loop.add_signal_handler(signal.SIGINT, svc.stopped.set)
    orphaned = False
    try:
        eps = await svc.start(cfg.kernel, cfg.user, cfg.pub)
        eps = {k: advertised(v, cfg.advertise) for k, v in eps.items()}
        await connect_role(svc, cfg.peers)
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
