"""The CLI's argument types and the option groups several commands share.

An argument type turns text into a checked value or raises
argparse.ArgumentTypeError (argparse then prints the usage and exits 2); no
type has a side effect. Every default that an environment variable can set
is read here, once, when the parser is built (`env` adds the UVM_MACHINE_
prefix), so a command sees only the parsed namespace.
"""

from __future__ import annotations

import argparse
import os

from machine.config import (
    CLIENT_LEASE_S,
    DEFAULT_BASE_PORT,
    DEFAULT_HOST,
    DEFAULT_RAM,
    env,
)
from machine.limits import Limits
from machine.params import MAX_RAM_BYTES, MIN_RAM_BYTES, parse_size
from machine.profile import DEFAULT_PROFILE, SHIPPED, ProfileError, load_profile

DEFAULT_ENDPOINT = f"tcp://{DEFAULT_HOST}:{DEFAULT_BASE_PORT}"


def ram(text: str) -> int:
    try:
        n = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not MIN_RAM_BYTES <= n <= MAX_RAM_BYTES:
        raise argparse.ArgumentTypeError(
            f"RAM must be between {MIN_RAM_BYTES} bytes and {MAX_RAM_BYTES >> 30} GiB"
        )
    return n


def endpoint(text: str) -> str:
    if not (text.startswith("tcp://") and ":" in text[6:]) and not text.startswith("ipc://"):
        raise argparse.ArgumentTypeError(f"endpoint {text!r}: use tcp://HOST:PORT or ipc://PATH")
    return text


def profile(text: str) -> str:
    try:
        load_profile(text)
    except ProfileError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def limits(text: str) -> Limits:
    try:
        return Limits().with_text(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class LimitAction(argparse.Action):
    """--limit NAME=VALUE[,...], repeatable: each one applies on top of the limits so far
    (the defaults, then UVM_MACHINE_LIMITS, then every --limit in order)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest)
        try:
            setattr(namespace, self.dest, current.with_text(str(values)))
        except ValueError as e:
            parser.error(f"{option_string}: {e}")


def kernel_dir(text: str) -> str:
    """An absolute directory (every role must name the same sockets), or "" for TCP."""
    return os.path.abspath(text) if text else ""


def fixed_args(p: argparse.ArgumentParser) -> None:
    """The fixed port layout (docker compose): --host, --base-port, --kernel-dir."""
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
        type=kernel_dir,
        default=kernel_dir(env("KERNEL_DIR", "")),
        help="kernel endpoints as ipc sockets DIR/ROLE.kernel, no kernel TCP port "
        "(env UVM_MACHINE_KERNEL_DIR; compose sets it)",
    )


def key_file_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key-file",
        default=env("KEY_FILE", ""),
        help="the machine key (env UVM_MACHINE_KEY_FILE; default <state>/run/machine.key)",
    )


def machine_args(p: argparse.ArgumentParser) -> None:
    """What a machine is made of: --ram, --state, --profile, --swap, --lease, --limit."""
    p.add_argument(
        "--ram",
        type=ram,
        default=ram(env("RAM", DEFAULT_RAM)),
        help="RAM size, e.g. 16M, 1G (env UVM_MACHINE_RAM; default 64M)",
    )
    p.add_argument(
        "--state",
        default=os.environ.get("UVM_MACHINE_STATE"),
        help="state directory: disk/, swap, dump/ (default: a temporary one)",
    )
    p.add_argument(
        "--profile",
        type=profile,
        default=env("PROFILE", DEFAULT_PROFILE),
        help=f"policy profile: {', '.join(SHIPPED)} or a TOML file",
    )
    p.add_argument(
        "--swap",
        type=ram,
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
        action=LimitAction,
        default=limits(env("LIMITS", "")),
        metavar="NAME=VALUE[,...]",
        help="resource limits, e.g. procs=64,vsize=1G (repeatable; env UVM_MACHINE_LIMITS); "
        "names: " + ", ".join(Limits().to_dict()),
    )
