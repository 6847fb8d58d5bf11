"""Request timing: when each request reached a role and when its reply was ready, and when
each call a peer made started and returned. The bench's per-hop breakdown is built from it.

Turned on by UVM_MACHINE_TIMING=1 in a role process's environment, read once at role start
(machine.rolemain.serve_role), or in-process by setting the class attribute `Service.timing`
and/or `Peer.timing` to a Timing before the services start (the in-memory machine; the
bench's own client). Off (the default, None) it costs nothing per request: `Service.start`
binds the plain handlers, and `Peer.call` pays one attribute test.

What is recorded, every timestamp `time.monotonic_ns()` (CLOCK_MONOTONIC: one clock for
every process of a host, so records from different roles line up):
  * handled: per request served, [tag, sender, msg_id, t_in, t_done, role]: t_in when the
    transport handed the bytes to the role, t_done when its reply was ready (a plain
    handler's reply is sent right then, a coroutine handler's by its task);
  * calls: per `Peer.call`, [sender, tag, msg_id, t_call, t_return]: t_call before the
    request is encoded, t_return when the caller has the reply.
The records are bounded (the last MAX_RECORDS of each kind); the request bytes are decoded
only when drained. A role hands its records over, and forgets them, in ctl.dump's
state["timings"] (Service.on_dump).
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Awaitable, Mapping
from typing import Any

from machine.ipc.auth import TAG_LEN
from machine.ipc.pending import Pending
from machine.ipc.transport import Handler
from machine.proto import BadMessage, decode_request, tag_of

ENV_VAR = "UVM_MACHINE_TIMING"
MAX_RECORDS = 200_000
now_ns = time.monotonic_ns


class Timing:
    """Collects request and call timestamps (see the module docstring)."""

    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        self.handled: collections.deque[tuple[str, bytes, int, int]] = collections.deque(
            maxlen=max_records
        )
        self.calls: collections.deque[tuple[str, str, int, int, int]] = collections.deque(
            maxlen=max_records
        )

    def on_request(self, role: str, raw: bytes, t_in: int, t_out: int) -> None:
        """A request `raw` reached `role` at t_in; its reply was ready at t_out."""
        self.handled.append((role, raw, t_in, t_out))

    def on_call(self, sender: str, tag: str, msg_id: int, t_call: int, t_return: int) -> None:
        """`sender` called `tag` (its msg_id) at t_call and had the reply at t_return."""
        self.calls.append((sender, tag, msg_id, t_call, t_return))

    def wrap(self, role: str, handler: Handler) -> Handler:
        """`handler` (a transport's request callback), timing every request it serves."""

        def traced(raw: bytes) -> bytes | Awaitable[bytes | None] | None:
            t_in = now_ns()
            out = handler(raw)
            if out is None or isinstance(out, bytes):
                self.on_request(role, raw, t_in, now_ns())
                return out
            if isinstance(out, Pending):
                out.then(lambda _: self.on_request(role, raw, t_in, now_ns()))
                return out
            return self._finish(role, raw, t_in, out)

        return traced

    async def _finish(
        self, role: str, raw: bytes, t_in: int, out: Awaitable[bytes | None]
    ) -> bytes | None:
        rep = await out
        self.on_request(role, raw, t_in, now_ns())
        return rep

    def drain(self) -> dict[str, list[list[Any]]]:
        """The records so far, then forgotten: {"handled": [...], "calls": [...]}."""
        handled: list[list[Any]] = []
        while self.handled:
            role, raw, t_in, t_out = self.handled.popleft()
            try:
                req = decode_request(raw)
            except BadMessage:
                try:  # a session's signed frame: body || tag
                    req = decode_request(raw[:-TAG_LEN])
                except BadMessage:
                    continue  # refused by the role's checks too: not a timed request
            handled.append([tag_of(req), req.h.sender, req.h.msg_id, t_in, t_out, role])
        calls = [list(c) for c in self.calls]
        self.calls.clear()
        return {"handled": handled, "calls": calls}


def from_env(environ: Mapping[str, str] = os.environ) -> Timing | None:
    """A Timing when UVM_MACHINE_TIMING=1, else None (off)."""
    return Timing() if environ.get(ENV_VAR) == "1" else None
