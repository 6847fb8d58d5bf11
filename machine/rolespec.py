"""A role's spec: what the rest of the machine needs to know to build, start and wire it.

Each role package exports one RoleSpec as `machine.<role>.spec.SPEC`; machine.roles
lists them in start order (ROLES), and everything that used to name the roles by
hand iterates that list: the supervisor's start and stop order, the fixed port
layout (config, compose), the CLI's choices, the layering test.

Life of a role, the same in a process of its own and in the in-process machine:
  1. `build(ctx)`: the Service with its core complete (no attribute is filled in
     later); peers are named, by endpoint, but not yet opened.
  2. `await svc.connect()`: open the channels to the roles in `connects_to`
     (which were started before it and serve already) and subscribe to their
     events.
  3. `await svc.start(...)`: bind its own endpoints and serve.
Invariant: a role never serves a request before its core exists and its peers are
open.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # names only: a spec is light to import (the CLI lists the roles)
    from machine.ipc.service import Service
    from machine.ipc.transport import Transport
    from machine.limits import Limits
    from machine.profile import Profile
    from machine.ram import Ram


@dataclass(frozen=True)
class RoleContext:
    """Everything a role is built from (known before it serves)."""

    transport: Transport
    ram: Ram
    rng: random.Random
    profile: Profile
    limits: Limits
    peers: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> channel -> ep
    key: bytes | None = None  # the machine key (machine.ipc.auth); None: made up (tests)
    pid: int | None = None
    lease_s: float = 10.0
    state_dir: str = ""
    swap_bytes: int = 0  # 0: twice the RAM

    def service_args(self) -> dict[str, Any]:
        """What every role's Service takes alike (machine.ipc.service.Service)."""
        return {"limits": self.limits, "rng": self.rng, "pid": self.pid, "key": self.key}

    def endpoint(self, role: str, channel: str = "kernel") -> str:
        """The endpoint of a role this one connects to."""
        return self.peers[role][channel]


@dataclass(frozen=True)
class RoleSpec:
    """One role, as the machine sees it from outside."""

    name: str
    #: The fixed layout's ports (machine.roles.fixed_layout): kernel B + port_offset,
    #: user B + port_offset + 1, pub B + port_offset + 2.
    port_offset: int
    #: Builds the role's service, its core complete (step 1 of the module doc).
    build: Callable[[RoleContext], Service]
    #: The roles it calls: they start before it (ROLES is in an order that keeps this).
    connects_to: tuple[str, ...] = ()
    #: The profile knobs it acts on (docs/design.md "Profiles").
    knobs: tuple[str, ...] = ()
