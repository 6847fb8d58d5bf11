"""The locustfile: Locust's users, web UI and master/worker runs against a machine.

    locust -f machine/stress/locustfile.py --host tcp://127.0.0.1:7700
    locust -f machine/stress/locustfile.py --host tcp://HOST:7700 --headless -u 16 -r 4 -t 30s \\
        --mix pattern=3,sender=1 --nemesis link-slow,squeeze --uvm-report out/
    locust -f machine/stress/locustfile.py --worker --master-host HOST   # on other hosts

`uvm-machine stress` runs it for you (boots the machine, starts local
workers, reads the verdict). The options below are Locust's own custom
arguments: they show in the web UI's start form and reach every worker.

Roles: in every process the users get a Harness (base.py); the master (or
the one process of a local run) also gets the Controller (control.py: the VM
series and tab, the nemesis, panic and corruption records, the verdict and
summary.json). `--mix` is applied on the master, which chooses whom workers spawn.
"""

from __future__ import annotations

import sys
from typing import Any

from locust import events
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import WorkerRunner

from machine.stress.base import Harness, MachineUser
from machine.stress.nemesis_plan import check_names, parse_names
from machine.stress.users import (
    USERS,
    ChurnUser,
    FilesUser,
    ForkerUser,
    HogUser,
    PatternUser,
    SenderUser,
)

__all__ = ["ChurnUser", "FilesUser", "ForkerUser", "HogUser", "PatternUser", "SenderUser"]

DEFAULT_MIX = "pattern=3,forker=1,hog=1,sender=2,files=1,churn=1"


def parse_mix(spec: str) -> dict[str, int]:
    """`name=weight,...` (a bare name: weight 1). => {user name: weight}; ValueError if bad."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, _, w = part.partition("=")
        if name not in USERS:
            raise ValueError(f"unknown user {name!r} in --mix (known: {', '.join(USERS)})")
        weight = int(w) if w else 1
        if weight < 0:
            raise ValueError(f"--mix {name}: a weight is >= 0")
        out[name] = weight
    if not any(out.values()):
        raise ValueError("--mix names no user with a weight above 0")
    return out


#: The harness's options: flag, type, default, help (each also LOCUST_<FLAG> in the environment).
OPTIONS: tuple[tuple[str, type, Any, str], ...] = (
    ("--mix", str, DEFAULT_MIX, "users and weights: name=weight,..."),
    ("--nemesis", str, "", "faults on a schedule: link-slow,link-hold,squeeze,..."),
    ("--nemesis-period", float, 10.0, "seconds per fault of the nemesis"),
    ("--rate", float, 0.0, "operations/s per user (open model; 0: closed)"),
    ("--max-p99-ms", float, None, "threshold: the p99 of every operation (ms)"),
    ("--max-fail-ratio", float, 0.0, "threshold: failures / operations"),
    ("--min-ops-per-s", float, None, "threshold: operations per second"),
    ("--uvm-report", str, "", "directory for summary.json and vm.csv"),
    ("--uvm-state", str, "", "the machine's state dir, when on this host (kernel faults, files)"),
)


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _options(parser: LocustArgumentParser, **_: Any) -> None:
    g = parser.add_argument_group("uvm-machine")
    for flag, kind, default, text in OPTIONS:
        env = "LOCUST_" + flag[2:].upper().replace("-", "_")
        g.add_argument(flag, env_var=env, type=kind, default=default, help=text)


@events.init.add_listener  # type: ignore[untyped-decorator]
def _init(environment: Environment, **_: Any) -> None:
    MachineUser.harness = h = Harness(environment)
    environment.events.quitting.add_listener(lambda **_: h.close())  # type: ignore[no-untyped-call]
    if isinstance(environment.runner, WorkerRunner):
        return
    opts = environment.parsed_options
    try:  # refused here, before a user starts, with a clear message
        mix = parse_mix(getattr(opts, "mix", DEFAULT_MIX) or DEFAULT_MIX)
        if names := parse_names(getattr(opts, "nemesis", "") or ""):
            check_names(names, getattr(opts, "uvm_state", "") or None)
    except ValueError as e:
        sys.exit(f"uvm-machine stress: {e}")
    chosen = []
    for name, weight in mix.items():
        cls = USERS[name]
        cls.weight = weight
        if weight > 0:
            chosen.append(cls)
    environment.user_classes[:] = chosen
    if environment.runner is not None:
        from machine.stress.control import Controller

        Controller(environment)
