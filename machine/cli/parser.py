"""The `uvm-machine` argument parser and main(): one subcommand per command function.

Every subcommand sets `fn`, the function (in life.py, tools.py,
scenarios.py, stress.py or explore.py) that takes the parsed namespace and
returns the exit status; main() returns it. A parse error exits 2 (argparse). The role names a
command accepts are config.ROLE_NAMES.
"""

from __future__ import annotations

import argparse
import os
import sys

from machine.cli.args import (
    DEFAULT_ENDPOINT,
    endpoint,
    fixed_args,
    key_file_arg,
    machine_args,
    profile,
)
from machine.cli.explain import add_parser as add_explain_parser
from machine.cli.explore import add_parser as add_explore_parser
from machine.cli.life import cmd_role, cmd_status, cmd_supervise, cmd_up
from machine.cli.scenarios import cmd_matrix, cmd_scenario
from machine.cli.stress import add_parser as add_stress_parser
from machine.cli.tools import cmd_dump, cmd_panic, cmd_ping, cmd_profile
from machine.config import env
from machine.profile import DEFAULT_PROFILE
from machine.roles import ROLE_NAMES

#: The parser's description, shown by `uvm-machine --help`.
DESCRIPTION = """`uvm-machine` (also `python -m machine`): the command line.

up         boot the machine (supervisor + mmu, uvm, pdaemon, net as processes)
status     attach and show roles, frames and counters
role       run one role on its own (docker compose)
supervise  supervise roles someone else runs (docker compose)
panic      make a role panic through its kernel endpoint (kernel debugger)
dump       dump the live machine: every role's state and flight recorder (kernel debugger)
profile    list profiles or show one's knobs
ping       exit 0 if a role (or the supervisor) answers (healthchecks)
scenario   run one scenario on a fresh machine and report its outcome
matrix     run every scenario under every profile: outcome, expected, pass/fail
stress     run the Locust stress harness (verified users, VM metrics, a nemesis)
explore    seeded swarm exploration of the in-process machine: failures, shrunk, replayable
replay     replay one exploration run exactly (outcome, message, trace hash; --html diagram)
explain    explain a dump's failure from its flight recorders (chain, page, writer, leak)
"""

#: `up`'s epilog: each role's memory bound and what happens at it (machine.ipc.memwatch).
ROLE_MEMORY = """role memory (--limit role_memory=SIZE, default 2G; env UVM_MACHINE_LIMITS):
  each role process (mmu, uvm, pdaemon, net) gets RLIMIT_DATA = SIZE (private
  memory; the shared RAM segment is not counted) and a watchdog sampling its
  private resident memory every 50 ms:
    at SIZE/2    the role closes every connection to its user endpoint and binds
                 it again (frees what half-sent messages held), trims its heap,
                 counts it: `status` shows mem_resets, mem_kb, mem_peak_kb;
                 a client's call in flight then times out, its next call works
    at 3*SIZE/4  after a reset and a trim (the memory is the role's own): the
                 role panics, the machine writes a crash dump and stops (exit 3)
    at SIZE      allocation fails: the role panics or dies; the machine panics
                 either way (exit 3)
  The supervisor's attach endpoint is reset the same way (no rlimit, no panic).
"""


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="uvm-machine",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser(
        "up",
        help="boot the machine with every role as a local process",
        epilog=ROLE_MEMORY,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    machine_args(p)
    p.add_argument(
        "--endpoint",
        default=env("ENDPOINT", DEFAULT_ENDPOINT),
        help="attach endpoint (tcp://HOST:PORT, port 0 or * = any; or ipc://PATH)",
    )
    p.add_argument(
        "--record",
        metavar="DIR",
        help="when the machine stops, write a dump with every role's flight recorder to DIR "
        "(after a panic: the crash dump)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_up)

    p = sub.add_parser("status", help="show roles, frames and counters")
    p.add_argument("--endpoint", type=endpoint, default=env("ENDPOINT", DEFAULT_ENDPOINT))
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("role", help="run one role on its own (docker compose)")
    p.add_argument("name", choices=ROLE_NAMES)
    machine_args(p)
    fixed_args(p)
    p.add_argument("--bind", default=env("BIND", ""), help="host to bind (default --host)")
    p.add_argument("--ram-name", default=env("RAM_NAME", "uvm-machine"))
    key_file_arg(p)
    p.set_defaults(fn=cmd_role)

    p = sub.add_parser("supervise", help="supervise roles run elsewhere; own the RAM segment")
    machine_args(p)
    fixed_args(p)
    p.add_argument("--ram-name", default=env("RAM_NAME", "uvm-machine"))
    key_file_arg(p)
    p.set_defaults(fn=cmd_supervise)

    p = sub.add_parser("panic", help="make a role panic (kernel endpoint)")
    p.add_argument("role", choices=ROLE_NAMES)
    p.add_argument("message", nargs="?", default="panic requested by the kernel debugger")
    p.add_argument("--state", help="state directory of a machine started with `up`")
    fixed_args(p)
    p.set_defaults(fn=cmd_panic)

    p = sub.add_parser("dump", help="dump the live machine (every role's flight recorder)")
    p.add_argument("--state", help="state directory of a machine started with `up`")
    p.add_argument("--reason", default="live", help="said in the dump")
    p.add_argument("--out", metavar="FILE", help="also copy the dump here")
    p.add_argument("--timeout", type=float, default=60.0)
    fixed_args(p)
    p.set_defaults(fn=cmd_dump)

    p = sub.add_parser("ping", help="exit 0 if the role answers (healthchecks)")
    p.add_argument("role", choices=(*ROLE_NAMES, "supervisor"))
    p.add_argument("--state")
    p.add_argument("--timeout", type=float, default=2.0)
    fixed_args(p)
    p.set_defaults(fn=cmd_ping)

    p = sub.add_parser("scenario", help="run one scenario on a fresh machine")
    p.add_argument("name", nargs="?", help="scenario name (see --list)")
    p.add_argument("--list", action="store_true", help="list the scenarios")
    p.add_argument("--profile", type=profile, default=DEFAULT_PROFILE)
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

    add_stress_parser(sub)
    add_explore_parser(sub)
    add_explain_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]) and run its command. => its exit status."""
    a = parser().parse_args(argv)
    try:
        return int(a.fn(a))
    except BrokenPipeError:  # `uvm-machine explain ... | head`: the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
