"""The machine's life: `up`, `status`, `role` and `supervise`.

Exit codes: 0 a clean stop (or status shown); 1 the machine could not be
started or reached (the reason on stderr, prefixed `uvm-machine CMD:`); 3 the
machine panicked (`up`/`supervise` then name the newest crash dump on
stderr); `role` returns what its role's service returned. `up` prints
`attach: ENDPOINT` on stdout once the machine is ready, and nothing else.

Each command imports what it runs when it runs: `status` does not load the
supervisor, and a role's process does not load the scenarios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from machine.config import RoleConfig, discard_temp_state
from machine.ipc import eventloop
from machine.roles import ROLE_NAMES, fixed_layout


def _report_panic(panicked: bool, state: Path) -> None:
    if panicked:
        dumps = sorted((state / "dump").glob("*.json"))
        print(
            f"machine panicked; crash dump: {dumps[-1] if dumps else '(none)'}",
            file=sys.stderr,
            flush=True,
        )


def cmd_up(a: argparse.Namespace) -> int:
    from machine.supervisor.arbiter import EXIT_PANIC
    from machine.supervisor.boot import run_up
    from machine.supervisor.launcher import LaunchError

    temp = a.state is None
    state = Path(a.state or tempfile.mkdtemp(prefix="uvm-machine-")).resolve()

    def ready(attach: str) -> None:
        print(f"attach: {attach}", flush=True)
        if a.verbose:
            print(f"state: {state}", file=sys.stderr, flush=True)

    try:
        status = eventloop.run(
            run_up(
                ram_bytes=a.ram,
                state_dir=state,
                temp_state=temp,
                endpoint=a.endpoint,
                profile=a.profile,
                on_ready=ready,
                lease_s=a.lease,
                swap_bytes=a.swap or 0,
                limits=a.limit,
                record_dir=str(Path(a.record).resolve()) if a.record else "",
            )
        )
    except (LaunchError, OSError) as e:
        print(f"uvm-machine up: {e}", file=sys.stderr)
        return 1
    _report_panic(status == EXIT_PANIC, state)
    if temp:
        discard_temp_state(state)
    return status


async def _status(endpoint: str, timeout_s: float) -> dict[str, Any]:
    from machine.client import Machine

    async with Machine.attach(endpoint, timeout_s=timeout_s, keepalive=False) as m:
        return await m.stats()


def _print_status(st: dict[str, Any]) -> None:
    print(f"machine: {st['state']}  profile: {st['profile']}")
    if st.get("panic"):
        print(f"panic: {st['panic']}")
    print(f"{'role':<9}{'pid':>8}  {'incarnation':<18}{'alive':<7}state")
    for r, s in st["roles"].items():
        print(
            f"{r:<9}{s['pid']:>8}  {s['incarnation']:<18x}{'yes' if s['alive'] else 'NO':<7}"
            f"{s['state']}"
        )
    f = st["frames"]
    if f:
        print(
            "frames: "
            + "  ".join(f"{k} {f[k]}" for k in ("total", "free", "active", "inactive", "wired"))
        )
    if "swpages" in f:
        print("swap: " + "  ".join(f"{k} {f[k]}" for k in ("swpages", "swpginuse", "swpgonly")))
    for r, s in st["roles"].items():
        if s["counters"]:
            print(f"{r}: " + " ".join(f"{k}={v}" for k, v in s["counters"].items()))


def cmd_status(a: argparse.Namespace) -> int:
    from machine.client import MachineError

    try:
        st = asyncio.run(_status(a.endpoint, a.timeout))
    except MachineError as e:
        print(f"uvm-machine status: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(st, indent=1))
    else:
        _print_status(st)
    return 0


def cmd_role(a: argparse.Namespace) -> int:
    from machine.rolemain import serve_role

    layout = fixed_layout(a.host, a.base_port, a.kernel_dir)
    bind_host = a.bind or a.host
    binds = fixed_layout(bind_host, a.base_port, a.kernel_dir)[a.name]
    cfg = RoleConfig(
        role=a.name,
        ram_name=a.ram_name,
        ram_bytes=a.ram,
        kernel=binds["kernel"],
        user=binds["user"],
        pub=binds["pub"],
        advertise=a.host,
        peers={r: layout[r] for r in ROLE_NAMES},
        profile=a.profile,
        state_dir=a.state or "",
        lease_s=a.lease,
        swap_bytes=a.swap or 0,
        key_file=a.key_file or _default_key_file(a.state),
        limits=a.limit.to_dict(),
    )
    return eventloop.run(serve_role(cfg, None, standalone=True))


def _default_key_file(state: str | None) -> str:
    """Where `supervise` writes the machine key: <state>/run/machine.key."""
    return str(Path(state) / "run" / "machine.key") if state else ""


def cmd_supervise(a: argparse.Namespace) -> int:
    from machine.supervisor.arbiter import EXIT_PANIC
    from machine.supervisor.boot import run_external
    from machine.supervisor.launcher import LaunchError

    state = Path(a.state or tempfile.mkdtemp(prefix="uvm-machine-"))
    try:
        status = eventloop.run(
            run_external(
                host=a.host,
                base_port=a.base_port,
                ram_name=a.ram_name,
                ram_bytes=a.ram,
                state_dir=state,
                profile=a.profile,
                on_ready=lambda e: print(f"attach: {e}", flush=True),
                lease_s=a.lease,
                key_file=Path(a.key_file or _default_key_file(str(state))),
                kernel_dir=a.kernel_dir,
                limits=a.limit,
            )
        )
    except (LaunchError, OSError) as e:
        print(f"uvm-machine supervise: {e}", file=sys.stderr)
        return 1
    _report_panic(status == EXIT_PANIC, state)
    return status
