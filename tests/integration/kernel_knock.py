"""An outsider knocking on a fixed-layout machine's kernel: it must find no door.

    python kernel_knock.py HOST BASE [--no-dir DIR]

Sends the two kernel requests that end a machine at once, ctl.kpanic and
ctl.shutdown, to every TCP port B .. B+49 of HOST, unsigned, once as an
anonymous sender (incarnation 0) and once with a made-up session id. With --no-dir DIR it
also checks that DIR (the kernel socket directory of the machine's services)
is not reachable from here: no socket file in it, and no Unix-socket connect
to DIR/ROLE.kernel succeeds.

Prints one JSON object {"replies": {port: [outcome, ...]}, "obeyed": [...],
"reachable": [...]} and exits 1 if any kernel request was obeyed (ctl.kpanic
answered EPANIC, ctl.shutdown answered ok) or a kernel socket was reachable.
Whether the machine is still whole is for the caller to check (`status`).

Runs with the machine package alone (no test dependency): .ci/compose-smoke.sh
pipes it to python in a client container; tests/integration imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from typing import Any

from machine.ipc.peer import CallTimeout, Identity, Peer
from machine.ipc.zmqtransport import ZmqTransport
from machine.proto import NO_HEADER, CtlKpanic, CtlShutdown, Errno, Request, tag_of
from machine.roles import ROLE_NAMES

PORTS = 50  # B .. B+49: the whole fixed layout and then some


def _obeyed(req: Request, rep: Any) -> bool:
    if isinstance(req, CtlKpanic):
        return bool(getattr(rep, "errno", None) == Errno.EPANIC)
    return getattr(rep, "errno", None) is None  # ctl.shutdown: an ok reply


async def _knock(transport: ZmqTransport, ep: str, timeout_s: float) -> tuple[list[str], bool]:
    outcomes: list[str] = []
    obeyed = False
    for incarnation in (0, 0x5EC2E7):
        peer = await Peer(Identity("outsider", incarnation), ep).open(transport)
        try:
            for req in (CtlKpanic(h=NO_HEADER, message="knock"), CtlShutdown(h=NO_HEADER)):
                try:
                    rep = await peer.call(req, timeout_s)
                except CallTimeout:
                    outcomes.append(f"{tag_of(req)}: no reply")
                    continue
                errno = getattr(rep, "errno", None)
                outcomes.append(f"{tag_of(req)}: {errno or 'ok'}")
                obeyed |= _obeyed(req, rep)
        finally:
            await peer.close()
    return outcomes, obeyed


async def knock_ports(host: str, base: int, timeout_s: float = 1.0) -> dict[str, Any]:
    """=> {"replies": {port: outcomes}, "obeyed": [ports]} for ports base .. base+PORTS-1."""
    transport = ZmqTransport()
    try:
        ports = range(base, base + PORTS)
        results = await asyncio.gather(
            *(_knock(transport, f"tcp://{host}:{p}", timeout_s) for p in ports)
        )
    finally:
        await transport.close()
    replies = {str(p): r[0] for p, r in zip(ports, results, strict=True)}
    return {"replies": replies, "obeyed": [p for p, r in zip(ports, results, strict=True) if r[1]]}


def reachable_sockets(kernel_dir: str) -> list[str]:
    """=> what of `kernel_dir` this process can see or connect to (empty: nothing)."""
    found: list[str] = []
    try:
        found += [f"listed {n}" for n in os.listdir(kernel_dir)]
    except OSError:
        pass
    for role in ROLE_NAMES:
        path = os.path.join(kernel_dir, f"{role}.kernel")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
            except OSError:
                continue
            found.append(f"connected {path}")
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kernel_knock")
    ap.add_argument("host")
    ap.add_argument("base", type=int)
    ap.add_argument("--no-dir", default="", help="a kernel socket directory that must be unseen")
    ap.add_argument("--timeout", type=float, default=1.0)
    a = ap.parse_args(argv)
    report = asyncio.run(knock_ports(a.host, a.base, a.timeout))
    report["reachable"] = reachable_sockets(a.no_dir) if a.no_dir else []
    print(json.dumps(report, indent=1))
    return 1 if report["obeyed"] or report["reachable"] else 0


if __name__ == "__main__":
    sys.exit(main())
