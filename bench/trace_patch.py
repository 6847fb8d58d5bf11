"""Timestamps for bench_machine.py's fault breakdown (monkeypatches; machine/ is not edited).

  * `Service.handle` records, for every request a role serves, when the transport handed it
    over (t_in) and when its reply was ready (t_done; a plain handler's reply is sent right
    after, a coroutine handler's by its task).
  * `Peer.call` records, for every call, when it started (before encoding) and when the caller
    got the reply back.

Role processes run install_roles() at start-up (bench/_rolepatch/sitecustomize.py, in a machine
the bench booted with UVM_BENCH_TRACE=1) and hand their records back in ctl.dump's
state["bench_trace"]. The bench process installs the same patches for its own calls, and for
the in-memory machine (every role in its process), whose records it reads with drain().

Every timestamp is time.monotonic_ns(): CLOCK_MONOTONIC, one clock for all processes of a host.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable
from typing import Any

import msgspec

from machine.ipc.auth import TAG_LEN
from machine.ipc.peer import Peer
from machine.ipc.service import Service
from machine.proto import (
    BadMessage,
    CtlDump,
    CtlDumpReply,
    Reply,
    Request,
    Scope,
    decode_request,
    tag_of,
)

ENV_VAR = "UVM_BENCH_TRACE"
_now = time.monotonic_ns

#: (request bytes, t_in, t_done) per request served; decoded only when drained
HANDLED: collections.deque[tuple[bytes, int, int]] = collections.deque(maxlen=200_000)
#: (sender, tag, msg_id, t_call, t_return) per Peer.call
CALLS: list[tuple[str, str, int, int, int]] = []

_handle, _on_dump, _call = Service.handle, Service.on_dump, Peer.call


def _traced_handle(self: Service, raw: bytes, endpoint: Scope) -> bytes | Awaitable[bytes]:
    t_in = _now()
    out = _handle(self, raw, endpoint)
    if isinstance(out, bytes):
        HANDLED.append((raw, t_in, _now()))
        return out
    return _traced_finish(out, raw, t_in)


async def _traced_finish(out: Awaitable[bytes], raw: bytes, t_in: int) -> bytes:
    rep = await out
    HANDLED.append((raw, t_in, _now()))
    return rep


async def _traced_call(self: Peer, req: Request, timeout_s: float | None = None) -> Reply:
    t0 = _now()
    rep = await _call(self, req, timeout_s)
    CALLS.append((self.ident.sender, tag_of(req), rep.h.re, t0, _now()))
    return rep


def drain() -> dict[str, list[list[Any]]]:
    """The records so far (then forgotten): handled [tag, sender, msg_id, t_in, t_done] and
    calls [sender, tag, msg_id, t_call, t_return]."""
    handled = []
    while HANDLED:
        raw, t_in, t_done = HANDLED.popleft()
        try:
            req = decode_request(raw)
        except BadMessage:  # a session's signed frame: body || 16-byte tag
            req = decode_request(raw[:-TAG_LEN])
        handled.append([tag_of(req), req.h.sender, req.h.msg_id, t_in, t_done])
    calls = [list(c) for c in CALLS]
    CALLS.clear()
    return {"handled": handled, "calls": calls}


def _traced_dump(self: Service, msg: CtlDump) -> Reply:
    rep = _on_dump(self, msg)
    if not isinstance(rep, CtlDumpReply):
        return rep
    return msgspec.structs.replace(rep, state={**rep.state, "bench_trace": drain()})


def install_roles(on: bool = True) -> None:
    """Patch Service and Peer (before the services are built: they bind on_dump then)."""
    setattr(Service, "handle", _traced_handle if on else _handle)  # noqa: B010 (mypy)
    setattr(Service, "on_dump", _traced_dump if on else _on_dump)  # noqa: B010
    install_client(on)


def install_client(on: bool = True) -> None:
    setattr(Peer, "call", _traced_call if on else _call)  # noqa: B010
