"""The nemesis' schedule and what its faults share (pure: no gevent, no I/O but
reading machine.json).

Slot i of the schedule starts at i * period_s and applies names[i mod k] for its
window: WINDOW_FRACTION of the period unless given, never beyond the period, at
most HOLD_MAX_S for link-hold (loans pile up while held) and at most
ROLE_STOP_MAX_S for role-stop: half of HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS,
so the supervisor never declares a stopped role missing. Names are checked here:
unknown ones are refused with the known ones listed, and the kernel-side faults
(KERNEL_SIDE) are refused without the machine's state dir, by name.

machine.stress.nemesis (the runner) and machine.stress.nemesis_faults (the
faults' bodies) both import this module; it imports neither.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from machine.config import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS

KNOWN = ("link-slow", "link-hold", "pdaemon-kick", "squeeze", "client-kill", "role-stop")
KERNEL_SIDE = ("link-slow", "link-hold", "pdaemon-kick", "role-stop")
STOP_ROLES = ("mmu", "uvm", "pdaemon", "net")  # role-stop's rotation
WINDOW_FRACTION = 0.4  # of the period, when no window is given
HOLD_MAX_S = 2.0  # link-hold: loans outstanding pile up while held
ROLE_STOP_MAX_S = HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS / 2  # half the heartbeat limit


class Marker(Protocol):
    """What the nemesis records its windows in (machine.stress.vmstats.VmSeries)."""

    def mark(self, name: str, start: float, end: float | None = None, detail: str = "") -> Any:
        """Record a window; end None: still in effect; the same (name, start) updates it."""


# -- the schedule (pure) -----------------------------------------------------------


def parse_names(spec: str | list[str]) -> list[str]:
    """`a,b,c` (or a list of such) -> the names, in order, empty items dropped."""
    items = spec.split(",") if isinstance(spec, str) else [x for s in spec for x in s.split(",")]
    return [x.strip() for x in items if x.strip()]


def check_names(names: list[str], state_dir: str | None) -> list[str]:
    """=> the names, checked. ValueError for an unknown name (listing the known ones), for
    no name at all, and for kernel-side faults without a state dir (naming them)."""
    if not names:
        raise ValueError(f"no nemesis fault selected; known: {', '.join(KNOWN)}")
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise ValueError(
            f"unknown nemesis fault(s): {', '.join(unknown)}; known: {', '.join(KNOWN)}"
        )
    kernel = [n for n in dict.fromkeys(names) if n in KERNEL_SIDE]
    if kernel and not state_dir:
        raise ValueError(
            f"nemesis fault(s) {', '.join(kernel)} need the machine's state dir "
            "(--state: machine.json names the kernel endpoints and role pids)"
        )
    return list(names)


def window_for(name: str, period_s: float, window_s: float | None = None) -> float:
    """How long one window of `name` lasts: `window_s` (default WINDOW_FRACTION of the
    period), at most the period, at most HOLD_MAX_S for link-hold and ROLE_STOP_MAX_S
    for role-stop."""
    if period_s <= 0:
        raise ValueError(f"the nemesis period must be positive, not {period_s}")
    w = period_s * WINDOW_FRACTION if window_s is None else window_s
    w = min(max(w, 0.0), period_s)
    if name == "link-hold":
        w = min(w, HOLD_MAX_S)
    if name == "role-stop":
        w = min(w, ROLE_STOP_MAX_S)
    return w


@dataclass(frozen=True)
class Slot:
    """One scheduled window: fault `name` from start_s to end_s (seconds after start)."""

    index: int
    name: str
    start_s: float
    end_s: float


def plan(names: list[str], period_s: float, window_s: float | None = None) -> Iterator[Slot]:
    """The schedule, forever: slot i at i * period_s, fault names[i % len(names)]."""
    check_names(names, "-")  # names only; the state dir is the Nemesis' business
    i = 0
    while True:
        name = names[i % len(names)]
        start = i * period_s
        yield Slot(i, name, start, start + window_for(name, period_s, window_s))
        i += 1


@dataclass
class Window:
    """One fault's window as it happened (times on the Nemesis' clock)."""

    name: str
    start: float
    end: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def detail_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.detail.items())


def kernel_roles(state_dir: str) -> dict[str, dict[str, Any]]:
    """The roles of <state_dir>/machine.json ({role: {pid, kernel, ...}}), as the
    operator's tools read it (machine.cli.tools). ValueError when it is missing."""
    path = Path(state_dir) / "machine.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"nemesis: cannot read {path} (is the machine up?): {e}") from e
    roles: dict[str, dict[str, Any]] = info["roles"]
    return roles


@dataclass
class Options:
    """The faults' settings."""

    slow_bps: int = 8_000_000  # link-slow: 1 MB/s
    slow_latency_us: int = 2_000
    kick_every_s: float = 0.25  # pdaemon-kick: 4 wake-ups a second
    squeeze_fraction: float = 0.25  # of RAM wired by the balloon
    victim_pages: int = 32  # client-kill: what the victim keeps mapped
    reap_grace_s: float = 5.0  # client-kill: lease_s + this to see the reap


class FaultHost(Protocol):
    """What a fault needs of the nemesis that runs it (machine.stress.nemesis.Nemesis)."""

    endpoint: str
    roles: dict[str, dict[str, Any]]  # machine.json's roles: {role: {pid, kernel, ...}}
    options: Options
