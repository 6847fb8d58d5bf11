"""Operator tools: `panic`, `ping` and `dump` (the kernel debugger's requests), `profile`.

`panic` and `ping` send one request to a role's kernel endpoint, found in
<state>/machine.json under `up` or at the fixed layout (compose); `ping
supervisor` asks the supervisor's attach endpoint, unsigned, as no session.
`dump` asks the supervisor's kernel endpoint for ctl.dumpsys: a dump of the
live machine with every flight recorder (machine.dumpfile), the machine
running on. Exit codes: `ping` 0 if the role answered OK, 1 otherwise;
`panic` 0 once the role answered (its reply printed); `dump` 0 and the dump's
path, 1 if none could be written; `profile show` 2 for an unknown profile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from machine.profile import SHIPPED, ProfileError, load_profile
from machine.roles import fixed_layout


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
    """A role's (or the supervisor's) kernel endpoint: from <state>/machine.json under
    `up`, else the fixed layout."""
    if a.state:
        info = json.loads((Path(a.state) / "machine.json").read_text())
        if role == "supervisor":
            return str(info["supervisor"]["kernel"])
        return str(info["roles"][role]["kernel"])
    return fixed_layout(a.host, a.base_port, a.kernel_dir)[role]["kernel"]


def cmd_dump(a: argparse.Namespace) -> int:
    """A dump of the live machine (ctl.dumpsys): every role's state and flight recorder,
    written by the supervisor into <state>/dump/ (and copied to --out). The machine runs
    on. => 0 and the path on stdout; 1 when the machine could not dump."""
    from machine.ipc.peer import RemoteError
    from machine.proto import CtlDumpsys, CtlDumpsysReply, Header

    try:
        ep = _kernel_endpoint(a, "supervisor")
    except (OSError, ValueError, KeyError) as e:
        print(f"uvm-machine dump: no machine to dump ({e!r})", file=sys.stderr)
        return 1
    req = CtlDumpsys(h=Header(msg_id=0, sender="", incarnation=0), reason=a.reason)
    try:
        rep = asyncio.run(_kernel_call(ep, req, a.timeout))
    except RemoteError as e:
        print(f"uvm-machine dump: {e}", file=sys.stderr)
        return 1
    if not isinstance(rep, CtlDumpsysReply):
        print(f"uvm-machine dump: {rep.errno}: {rep.detail}", file=sys.stderr)
        return 1
    path = rep.path
    if a.out:
        from machine.dumpfile import copy_private

        path = str(copy_private(rep.path, a.out))
    print(path)
    return 0


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
