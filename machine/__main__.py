"""`uvm-machine` (also `python -m machine`): the command line.

up         boot the machine (supervisor + mmu, uvm, pdaemon, net as processes)
status     attach and show roles, frames and counters
role       run one role on its own (docker compose)
supervise  supervise roles someone else runs (docker compose)
panic      make a role panic through its kernel endpoint (kernel debugger)
profile    list profiles or show one's knobs
ping       exit 0 if a role (or the supervisor) answers (healthchecks)
scenario   run one scenario on a fresh machine and report its outcome
matrix     run every scenario under every profile: outcome, expected, pass/fail
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from machine.config import (
    CLIENT_LEASE_S,
    DEFAULT_BASE_PORT,
    DEFAULT_HOST,
    DEFAULT_RAM,
    ROLE_ORDER,
    RoleConfig,
    discard_temp_state,
    env,
    fixed_layout,
)
from machine.limits import Limits
from machine.params import MAX_RAM_BYTES, MIN_RAM_BYTES, parse_size
from machine.profile import DEFAULT_PROFILE, SHIPPED, ProfileError, load_profile

DEFAULT_ENDPOINT = f"tcp://{DEFAULT_HOST}:{DEFAULT_BASE_PORT}"


def _ram(text: str) -> int:
    try:
        n = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not MIN_RAM_BYTES <= n <= MAX_RAM_BYTES:
        raise argparse.ArgumentTypeError(
            f"RAM must be between {MIN_RAM_BYTES} bytes and {MAX_RAM_BYTES >> 30} GiB"
        )
    return n


def _endpoint(text: str) -> str:
    if not (text.startswith("tcp://") and ":" in text[6:]) and not text.startswith("ipc://"):
        raise argparse.ArgumentTypeError(f"endpoint {text!r}: use tcp://HOST:PORT or ipc://PATH")
    return text


def _profile(text: str) -> str:
    try:
        load_profile(text)
    except ProfileError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _report_panic(status: int, state: Path) -> None:
    if status == 3:
        dumps = sorted((state / "dump").glob("*.json"))
        print(
            f"machine panicked; crash dump: {dumps[-1] if dumps else '(none)'}",
            file=sys.stderr,
            flush=True,
        )


def cmd_up(a: argparse.Namespace) -> int:
    from machine.supervisor.boot import run_up
    from machine.supervisor.launcher import LaunchError

    temp = a.state is None
    state = Path(a.state or tempfile.mkdtemp(prefix="uvm-machine-")).resolve()

    def ready(attach: str) -> None:
        print(f"attach: {attach}", flush=True)
        if a.verbose:
            print(f"state: {state}", file=sys.stderr, flush=True)

    try:
        status = asyncio.run(
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
            )
        )
    except (LaunchError, OSError) as e:
        print(f"uvm-machine up: {e}", file=sys.stderr)
        return 1
    _report_panic(status, state)
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
    from machine.roles import serve_role

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
        peers={r: layout[r] for r in ROLE_ORDER},
        profile=a.profile,
        state_dir=a.state or "",
        lease_s=a.lease,
        swap_bytes=a.swap or 0,
        key_file=a.key_file or _default_key_file(a.state),
        limits=a.limit.to_dict(),
    )
    return asyncio.run(serve_role(cfg, None, standalone=True))


def _default_key_file(state: str | None) -> str:
    """Where `supervise` writes the machine key: <state>/run/machine.key."""
    return str(Path(state) / "run" / "machine.key") if state else ""


def cmd_supervise(a: argparse.Namespace) -> int:
    from machine.supervisor.boot import run_external
    from machine.supervisor.launcher import LaunchError

    state = Path(a.state or tempfile.mkdtemp(prefix="uvm-machine-"))
    try:
        status = asyncio.run(
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
            )
        )
    except (LaunchError, OSError) as e:
        print(f"uvm-machine supervise: {e}", file=sys.stderr)
        return 1
    _report_panic(status, state)
    return status


async def _kernel_call(endpoint: str, req: Any, timeout_s: float, session: bool = True) -> Any:
    """One request. `session=False`: as no session (incarnation 0), for a user endpoint's
    public requests (the supervisor's ctl.ping), which must otherwise be signed."""
    from machine.ipc.peer import Identity, Peer
    from machine.ipc.zmqtransport import ZmqTransport

    t = ZmqTransport()
    peer = await Peer(Identity("kdebug", os.getpid() if session else 0), endpoint).open(t)
    try:
        return await peer.call(req, timeout_s)
    finally:
        await peer.close()
        await t.close()


def _kernel_endpoint(a: argparse.Namespace, role: str) -> str:
    if a.state:
        info = json.loads((Path(a.state) / "machine.json").read_text())
        return str(info["roles"][role]["kernel"])
    return fixed_layout(a.host, a.base_port, a.kernel_dir)[role]["kernel"]


def cmd_panic(a: argparse.Namespace) -> int:
    from machine.proto import CtlKpanic, Header

    req = CtlKpanic(h=Header(msg_id=0, sender="", incarnation=0), message=a.message)
    rep = asyncio.run(_kernel_call(_kernel_endpoint(a, a.role), req, 5.0))
    print(f"{a.role}: {rep.errno}: {rep.detail}")
    return 0


def cmd_ping(a: argparse.Namespace) -> int:
    from machine.ipc.peer import RemoteError
    from machine.proto import CtlPing, Header

    ep = (
        fixed_layout(a.host, a.base_port)["supervisor"]["router"]
        if a.role == "supervisor"
        else _kernel_endpoint(a, a.role)
    )
    try:
        rep = asyncio.run(
            _kernel_call(
                ep,
                CtlPing(h=Header(msg_id=0, sender="", incarnation=0)),
                a.timeout,
                session=a.role != "supervisor",
            )
        )
    except RemoteError as e:
        print(f"{a.role}: {e}", file=sys.stderr)
        return 1
    ok = rep.status == "ok"
    print(f"{a.role}: {'alive' if ok else rep.detail}")
    return 0 if ok else 1


def cmd_profile(a: argparse.Namespace) -> int:
    if a.action == "list":
        for n in SHIPPED:
            print(f"{n:<10}{load_profile(n).description}")
        return 0
    try:
        p = load_profile(a.name)
    except ProfileError as e:
        print(f"uvm-machine profile: {e}", file=sys.stderr)
        return 2
    print(f"# {p.name}: {p.description}")
    for k, v in p.knobs.items():
        print(f"{k} = {json.dumps(v)}")
    return 0


def _run_scenarios(coro: Any, inprocess: bool) -> Any:
    if inprocess:
        from machine.ipc.inmemory import run_simulation

        return run_simulation(coro)
    return asyncio.run(coro)


def _print_row(o: Any, width: int = 22) -> None:
    mark = "PASS" if o.passed else "FAIL"
    print(
        f"{o.scenario:<{width}} {o.profile:<9} {o.outcome:<11} {o.expected:<11} {mark}  {o.detail}",
        flush=True,
    )


def cmd_scenario(a: argparse.Namespace) -> int:
    from machine.scenarios import SCENARIOS, run_scenario
    from machine.scenarios.runner import outcome_json

    if a.list or not a.name:
        for sc in SCENARIOS.values():
            print(f"{sc.name:<22} [{sc.section}] {sc.summary}")
        return 0
    if a.name not in SCENARIOS:
        print(f"uvm-machine scenario: no scenario {a.name!r} (see --list)", file=sys.stderr)
        return 2
    o = _run_scenarios(
        run_scenario(a.name, a.profile, inprocess=a.inprocess, seed=a.seed), a.inprocess
    )
    if a.json:
        print(json.dumps(outcome_json(o), indent=1))
    else:
        print(f"{'scenario':<22} {'profile':<9} {'outcome':<11} {'expected':<11} pass")
        _print_row(o)
        for k, v in o.evidence.items():
            print(f"  {k}: {v}")
    return 0 if o.passed else 1


def cmd_matrix(a: argparse.Namespace) -> int:
    from machine.scenarios import run_matrix

    profiles = a.profiles.split(",") if a.profiles else list(SHIPPED)
    names = a.scenarios.split(",") if a.scenarios else None
    if not a.json:
        print(f"{'scenario':<22} {'profile':<9} {'outcome':<11} {'expected':<11} pass", flush=True)
    rows = _run_scenarios(
        run_matrix(
            profiles,
            names,
            inprocess=a.inprocess,
            seed=a.seed,
            on_row=None if a.json else _print_row,
        ),
        a.inprocess,
    )
    failed = [o for o in rows if not o.passed]
    if a.json:
        print(json.dumps({"rows": [o.row() for o in rows]}, indent=1))
    else:
        print(f"{len(rows) - len(failed)}/{len(rows)} rows as expected")
    return 1 if failed else 0


def _limits(text: str) -> Limits:
    try:
        return Limits().with_text(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _kernel_dir(text: str) -> str:
    """An absolute directory (every role must name the same sockets), or "" for TCP."""
    return os.path.abspath(text) if text else ""


def _fixed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default=env("HOST", DEFAULT_HOST),
        help="host clients and peers dial (env UVM_MACHINE_HOST)",
    )
    p.add_argument(
        "--base-port",
        type=int,
        default=int(env("BASE_PORT", str(DEFAULT_BASE_PORT))),
        help="port layout base (env UVM_MACHINE_BASE_PORT)",
    )
    p.add_argument(
        "--kernel-dir",
        type=_kernel_dir,
        default=_kernel_dir(env("KERNEL_DIR", "")),
        help="kernel endpoints as ipc sockets DIR/ROLE.kernel, no kernel TCP port "
        "(env UVM_MACHINE_KERNEL_DIR; compose sets it)",
    )


def _key_file_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key-file",
        default=env("KEY_FILE", ""),
        help="the machine key (env UVM_MACHINE_KEY_FILE; default <state>/run/machine.key)",
    )


def _machine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ram",
        type=_ram,
        default=_ram(env("RAM", DEFAULT_RAM)),
        help="RAM size, e.g. 16M, 1G (env UVM_MACHINE_RAM; default 64M)",
    )
    p.add_argument(
        "--state",
        default=os.environ.get("UVM_MACHINE_STATE"),
        help="state directory: disk/, swap, dump/ (default: a temporary one)",
    )
    p.add_argument(
        "--profile",
        type=_profile,
        default=env("PROFILE", DEFAULT_PROFILE),
        help=f"policy profile: {', '.join(SHIPPED)} or a TOML file",
    )
    p.add_argument(
        "--swap",
        type=_ram,
        default=None,
        help="swap device size (<state>/swap.img; default twice the RAM)",
    )
    p.add_argument(
        "--lease",
        type=float,
        default=float(env("LEASE_S", str(CLIENT_LEASE_S))),
        help="seconds a silent client session lives before it is reaped",
    )
    p.add_argument(
        "--limit",
        type=_limits,
        default=_limits(env("LIMITS", "")),
        metavar="NAME=VALUE[,...]",
        help="resource limits, e.g. procs=64,vsize=1G (env UVM_MACHINE_LIMITS); "
        "names: " + ", ".join(Limits().to_dict()),
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="uvm-machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("up", help="boot the machine with every role as a local process")
    _machine_args(p)
    p.add_argument(
        "--endpoint",
        default=env("ENDPOINT", DEFAULT_ENDPOINT),
        help="attach endpoint (tcp://HOST:PORT, port 0 or * = any; or ipc://PATH)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_up)

    p = sub.add_parser("status", help="show roles, frames and counters")
    p.add_argument("--endpoint", type=_endpoint, default=env("ENDPOINT", DEFAULT_ENDPOINT))
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("role", help="run one role on its own (docker compose)")
    p.add_argument("name", choices=ROLE_ORDER)
    _machine_args(p)
    _fixed_args(p)
    p.add_argument("--bind", default=env("BIND", ""), help="host to bind (default --host)")
    p.add_argument("--ram-name", default=env("RAM_NAME", "uvm-machine"))
    _key_file_arg(p)
    p.set_defaults(fn=cmd_role)

    p = sub.add_parser("supervise", help="supervise roles run elsewhere; own the RAM segment")
    _machine_args(p)
    _fixed_args(p)
    p.add_argument("--ram-name", default=env("RAM_NAME", "uvm-machine"))
    _key_file_arg(p)
    p.set_defaults(fn=cmd_supervise)

    p = sub.add_parser("panic", help="make a role panic (kernel endpoint)")
    p.add_argument("role", choices=ROLE_ORDER)
    p.add_argument("message", nargs="?", default="panic requested by the kernel debugger")
    p.add_argument("--state", help="state directory of a machine started with `up`")
    _fixed_args(p)
    p.set_defaults(fn=cmd_panic)

    p = sub.add_parser("ping", help="exit 0 if the role answers (healthchecks)")
    p.add_argument("role", choices=(*ROLE_ORDER, "supervisor"))
    p.add_argument("--state")
    p.add_argument("--timeout", type=float, default=2.0)
    _fixed_args(p)
    p.set_defaults(fn=cmd_ping)

    p = sub.add_parser("scenario", help="run one scenario on a fresh machine")
    p.add_argument("name", nargs="?", help="scenario name (see --list)")
    p.add_argument("--list", action="store_true", help="list the scenarios")
    p.add_argument("--profile", type=_profile, default=DEFAULT_PROFILE)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--inprocess", action="store_true", help="in-memory transport, virtual time (seeded)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_scenario)

    p = sub.add_parser("matrix", help="every scenario under every profile")
    p.add_argument("--json", action="store_true")
    p.add_argument("--inprocess", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profiles", default="", help="comma-separated (default: the shipped ones)")
    p.add_argument("--scenarios", default="", help="comma-separated (default: all)")
    p.set_defaults(fn=cmd_matrix)

    p = sub.add_parser("profile", help="list profiles or show one")
    p.add_argument("action", choices=("list", "show"))
    p.add_argument("name", nargs="?", default=DEFAULT_PROFILE)
    p.set_defaults(fn=cmd_profile)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    return int(a.fn(a))


if __name__ == "__main__":
    sys.exit(main())
