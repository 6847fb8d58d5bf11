"""Operator tools: `panic` and `ping` (the kernel debugger's requests) and `profile`.

`panic` and `ping` send one request to a role's kernel endpoint, found in
<state>/machine.json under `up` or at the fixed layout (compose); `ping
supervisor` asks the supervisor's attach endpoint, unsigned, as no session.
Exit codes: `ping` 0 if the role answered OK, 1 otherwise; `panic` 0 once the
role answered (its reply printed); `profile show` 2 for an unknown profile.
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
