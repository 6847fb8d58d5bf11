"""Configuration: one place for endpoints, timing knobs and seeds; env overrides.

RoleConfig is everything one role process needs to start; it is plain data
(picklable) so the supervisor can hand it to a child process, and every
field can also come from the environment (UVM_MACHINE_*) for compose.

The port layout of fixed deployments (compose, `uvm-machine role`) is
machine.roles.fixed_layout, from each role's spec (RoleSpec.port_offset).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CHANNELS = ("kernel", "user", "pub")
DEFAULT_BASE_PORT = 7700
DEFAULT_HOST = "127.0.0.1"
DEFAULT_RAM = "64M"

HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_LIVENESS = 3
PANIC_GRACE_S = 1.5
ROLE_START_TIMEOUT_S = 20.0
CLIENT_LEASE_S = 10.0
CALL_TIMEOUT_S = 30.0


def env(name: str, default: str) -> str:
    return os.environ.get("UVM_MACHINE_" + name, default)


@dataclass
class RoleConfig:
    """What one role process needs: its binds, its peers, RAM, profile, knobs."""

    role: str
    ram_name: str
    ram_bytes: int
    kernel: str
    user: str
    pub: str
    advertise: str = ""  # host to report instead of 0.0.0.0/* in bound endpoints
    peers: dict[str, dict[str, str]] = field(default_factory=dict)
    profile: str = "modern"
    state_dir: str = ""
    lease_s: float = CLIENT_LEASE_S
    seed: int | None = None
    swap_bytes: int = 0  # 0: twice the RAM
    key_file: str = ""  # the machine key (hex, mode 0600): roles check signed user requests
    limits: dict[str, int] = field(default_factory=dict)  # machine.limits.Limits fields
    supervisor_pid: int = 0  # watched (machine.orphan); 0: watch its heartbeat instead
    temp_state: bool = False  # state_dir is `up`'s temporary one (an orphan removes it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoleConfig:
        return cls(**d)


def advertised(endpoint: str, host: str) -> str:
    """Replace a wildcard bind host with the host clients should dial."""
    if not host:
        return endpoint
    for wild in ("0.0.0.0", "*", "[::]"):
        prefix = f"tcp://{wild}:"
        if endpoint.startswith(prefix):
            return f"tcp://{host}:" + endpoint[len(prefix) :]
    return endpoint


def discard_temp_state(state: Path) -> None:
    """Remove a state directory `up` made for itself (no --state), unless it holds a
    crash dump, which the user will want to read. Done by `up` on its way out, or by an
    orphaned uvm when the supervisor died (machine.orphan)."""
    if not any((state / "dump").glob("*.json")):
        shutil.rmtree(state, ignore_errors=True)
