"""Running one role in a process of its own: the same code as the in-process machine.

role_main() is a role process's entry point (multiprocess target and
`uvm-machine role NAME`): it maps RAM, builds the role from its spec
(machine.roles.make_service), opens its peers, binds, reports its endpoints
through the ready pipe (or stdout), and serves until ctl.shutdown or a signal —
or until the supervisor dies (machine.orphan: it then stops as ctl.shutdown
would). Its private memory is bounded by Limits.role_memory: RLIMIT_DATA, and
the memory watchdog below it (machine.ipc.memwatch).
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
from machine.ipc import eventloop, memwatch, timing
from machine.ipc.auth import read_key_file
from machine.ipc.peer import Peer
from machine.ipc.service import Service
from machine.ipc.zmqtransport import ZmqTransport
from machine.limits import Limits
from machine.ram import Ram
from machine.roles import make_service


async def serve_role(cfg: RoleConfig, ready: Any = None, standalone: bool = False) -> int:
    """Run one role over ZeroMQ until ctl.shutdown or SIGTERM (and SIGINT if standalone).

    => exit status: 0, or orphan.EXIT_ORPHANED when the supervisor died first.
       A supervised role ignores SIGINT: a terminal's Ctrl-C reaches the whole
       process group, and the supervisor stops roles in order.
    """
    limits = Limits.from_dict(cfg.limits)
    # The wall (machine.ipc.memwatch): private writable memory, not the shared RAM segment.
    memwatch.set_data_limit(limits.role_memory)
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
        limits=limits,
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
        svc.watch_memory(limits.role_memory)
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
    status = eventloop.run(serve_role(cfg, ready))
    os._exit(status)
