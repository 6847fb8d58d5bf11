"""The roles of the machine: their specs in start order, and building one.

ROLES lists every role's spec (machine.rolespec) in start order. make_service()
builds a role's Service from its spec, its core complete; `await svc.connect()`
opens its peers (uvm -> mmu; pdaemon -> uvm, mmu and uvm's events; net -> uvm,
mmu, uvm's exits, link up); then it binds and serves.
Running a role in a process of its own is machine.rolemain.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from machine.config import CHANNELS
from machine.limits import Limits
from machine.mmu import spec as mmu_spec
from machine.net import spec as net_spec
from machine.pdaemon import spec as pdaemon_spec
from machine.profile import load_profile
from machine.rolespec import RoleContext, RoleSpec
from machine.uvm import spec as uvm_spec

if TYPE_CHECKING:  # names only: listing the roles stays light (the CLI imports this)
    from machine.ipc.service import Service
    from machine.ipc.transport import Transport
    from machine.ram import Ram

#: Every role, in start order: a role starts after the roles it connects to
#: (RoleSpec.connects_to) and stops before them. Adding a role is adding its spec here.
ROLES: tuple[RoleSpec, ...] = (mmu_spec.SPEC, uvm_spec.SPEC, pdaemon_spec.SPEC, net_spec.SPEC)
SPECS: dict[str, RoleSpec] = {s.name: s for s in ROLES}
ROLE_NAMES: tuple[str, ...] = tuple(SPECS)


def fixed_layout(host: str, base: int, kernel_dir: str = "") -> dict[str, dict[str, str]]:
    """Endpoints of every role (and the supervisor) under the fixed port layout: with
    base port B on host H, the supervisor's ROUTER B, PUB B+1 and kernel B+2 (its
    ctl.dumpsys; ipc://D/sup.kernel with a kernel directory); each role's kernel,
    user and pub B + port_offset + 0, 1, 2 (mmu 10, uvm 20, pdaemon 30, net 40).
    With a kernel directory D (compose: UVM_MACHINE_KERNEL_DIR), every kernel channel
    is instead the Unix socket ipc://D/ROLE.kernel (mode 0600, D mode 0700, on a volume
    only the machine's services mount): no kernel TCP port exists, so nothing outside
    the machine can reach a kernel endpoint.

    => with `kernel_dir`, each role's kernel channel is ipc://{kernel_dir}/{role}.kernel
       and its port (B+10, B+20, ...) is not used; user and pub stay TCP.
    """
    kernel = f"ipc://{kernel_dir.rstrip('/')}/sup.kernel" if kernel_dir else ""
    out = {
        "supervisor": {
            "router": f"tcp://{host}:{base}",
            "pub": f"tcp://{host}:{base + 1}",
            "kernel": kernel or f"tcp://{host}:{base + 2}",
        }
    }
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
