"""The flight recorder: a role's inputs, in the order it handled them, in a bounded ring.

Every role (and the supervisor) keeps one (`Service.recorder`). What it records, as
each arrives, before anything else is done with it:

  kind  what                                              ep (where it came in)
  req   a request (or notice) delivered to the role       "<role>/kernel" | "<role>/user"
  rep   a reply delivered on one of the role's peers      "<peer role>/kernel" (or user)
  evt   an event delivered to one of its subscriptions    "<publisher role>/pub"
  int   an internal event that changes state: a timer     "<role>/int"
        (lease reap, the daemon's wake-up and passes, an
        allocation wait that timed out, the driver's link
        timing) -- a name and a few fields, no bytes

Each entry is a tuple (see FIELDS): a per-role sequence number (`seq`, 1, 2, ...),
the kind, the endpoint label, the connection it came in on (`conn`: the transport's
number for the sending socket, 0 when there is none), wall time (`time.time_ns`), the
role's clock (`mono`, seconds: the loop's monotonic clock, virtual in a simulation),
`last_id` (the last msg_id the role's own Identity had stamped when the entry was
made: every message the role sends carries a later id, see below), the message's
size, and its bytes: every request, reply and event in full up to `body` bytes (a
longer one keeps its first `body` bytes and its true `size`; a large ctl.dump, stats
or status reply only its first 64: a dump's reply holds the role's own recorder; a
request the role's checks refused only its first REFUSED_KEEP, so junk a client
sends never fills the ring), or, for `int`, its fields msgpack-encoded (a dict once
exported).
Header ids are not decoded here (that costs; `explain` decodes): the bytes hold them.

Why `last_id`: it places the role's outputs among its inputs. A message the role sent
with msg_id m was stamped after the last entry whose last_id < m and before the next:
so a receiver's entry of that message happened after that entry of the sender. That,
with each role's own order, is the happens-before `explain` merges the rings by
(machine.explore.flight), with no clock shared between processes.

Bounds (machine.limits: record_events, record_bytes, record_body; `up --limit`):
at most `events` entries and `nbytes` bytes of bodies (plus RECORD_OVERHEAD per
entry); the oldest go first (`dropped` counts them, `recorded` counts every entry
ever made, so `recorded - dropped` are kept). Recording costs a tuple and a deque
append per message (~1 us); UVM_MACHINE_RECORD=0 switches it off (benchmarks).

Invariants:
  * seq is strictly increasing in the ring; the ring is contiguous (the entries
    dropped are always the oldest), so the first entry's seq - 1 == dropped;
  * len(ring) <= events and the bodies' bytes + RECORD_OVERHEAD each <= nbytes (one
    entry larger than nbytes alone is kept: the newest always is);
  * nothing a client sends grows the ring beyond its bounds.
"""

from __future__ import annotations

import base64
import collections
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from machine.ipc.trace import tag_bytes
from machine.limits import Limits

#: An entry's fields, in order.
FIELDS = ("seq", "kind", "ep", "conn", "wall_ns", "mono", "last_id", "size", "data")
KINDS = ("req", "rep", "evt", "int")
#: What an entry costs beyond its body's bytes, for the byte bound (a tuple, its ints).
RECORD_OVERHEAD = 256
#: Bytes kept of a request the checks refused (its tag and header are in them).
REFUSED_KEEP = 256
#: The export's format version (dumps carry it; `explain` checks it).
FORMAT = 1

Entry = tuple[int, str, str, int, int, float, int, int, Any]
#: Replies whose bodies are not kept when large (a dump's reply holds the role's own
#: recorder: the supervisor would keep every role's history twice): their first bytes.
_QUIET_BODIES = frozenset({b"ctl.dump.reply", b"ctl.status.reply", b"ctl.stats.reply"})
_QUIET_OVER = 4096
#: A note is kept msgpack-encoded (bytes: its size is what the byte bound counts, where a
#: dict of a dozen fields would cost a kilobyte and count as nothing); export decodes it.
_notes = msgspec.msgpack.Encoder()
_note_decoder = msgspec.msgpack.Decoder(dict[str, Any])


class HasLastId(Protocol):
    """What the recorder reads of the role's Identity (machine.ipc.peer)."""

    @property
    def last_id(self) -> int: ...


def enabled_by_env() -> bool:
    """UVM_MACHINE_RECORD=0 switches every recorder of the process off (benchmarks)."""
    return os.environ.get("UVM_MACHINE_RECORD", "1") != "0"


class FlightRecorder:
    """One role's ring of inputs (see the module doc)."""

    def __init__(
        self,
        role: str,
        last_id: Callable[[], int],
        now_s: Callable[[], float],
        *,
        events: int,
        nbytes: int,
        body: int,
        on: bool = True,
    ) -> None:
        self.role = role
        self.on = on and events > 0
        self.events, self.nbytes, self.body = events, nbytes, body
        self._last_id = last_id
        self._now_s = now_s
        self.ring: collections.deque[Entry] = collections.deque()
        self.seq = 0  # entries ever made (the last one's seq)
        self.dropped = 0  # the oldest, let go for the bounds
        self.held = 0  # bytes the ring holds (bodies + RECORD_OVERHEAD each)
        self.cut = 0  # bodies kept only in part (longer than `body`)
        self._ep_int = f"{role}/int"

    @classmethod
    def bounded(
        cls, role: str, ident: HasLastId, now_s: Callable[[], float], limits: Limits
    ) -> FlightRecorder:
        """The recorder of a role whose Identity is `ident`, within `limits`' record_*
        bounds (on unless UVM_MACHINE_RECORD=0)."""
        return cls(
            role,
            lambda: ident.last_id,
            now_s,
            events=limits.record_events,
            nbytes=limits.record_bytes,
            body=limits.record_body,
            on=enabled_by_env(),
        )

    # -- recording -------------------------------------------------------------------

    def record(self, kind: str, ep: str, conn: int, data: bytes) -> None:
        """One message delivered to the role (kind "req", "rep" or "evt")."""
        if not self.on:
            return
        size = len(data)
        if size > self.body or size > _QUIET_OVER:
            keep = 64 if size > _QUIET_OVER and tag_bytes(data) in _QUIET_BODIES else self.body
            if size > keep:
                data = bytes(data[:keep])
                self.cut += 1
        self.seq += 1
        self.ring.append(
            (
                self.seq,
                kind,
                ep,
                conn,
                time.time_ns(),
                self._now_s(),
                self._last_id(),
                size,
                data,
            )
        )
        self.held += len(data) + RECORD_OVERHEAD
        if self.held > self.nbytes or len(self.ring) > self.events:
            self._evict()

    def refused(self, data: bytes) -> None:
        """The newest entry, `data`, was refused by the checks (it changed nothing): keep
        only its first REFUSED_KEEP bytes, so bad input fills no ring with its bytes."""
        if not self.ring or self.ring[-1][8] is not data or len(data) <= REFUSED_KEEP:
            return
        e = self.ring.pop()
        self.ring.append((*e[:8], bytes(data[:REFUSED_KEEP])))
        self.held -= len(data) - REFUSED_KEEP
        self.cut += 1

    def note(self, what: str, **fields: Any) -> None:
        """An internal event (kind "int"): `what` happened, with a few plain fields."""
        if not self.on:
            return
        self.seq += 1
        body = _notes.encode({"what": what, **fields})  # its real size, not a dict's
        self.ring.append(
            (
                self.seq,
                "int",
                self._ep_int,
                0,
                time.time_ns(),
                self._now_s(),
                self._last_id(),
                len(body),
                body,
            )
        )
        self.held += len(body) + RECORD_OVERHEAD
        if self.held > self.nbytes or len(self.ring) > self.events:
            self._evict()

    def _evict(self) -> None:
        ring = self.ring
        while len(ring) > 1 and (self.held > self.nbytes or len(ring) > self.events):
            e = ring.popleft()
            self.dropped += 1
            self.held -= len(e[8]) + RECORD_OVERHEAD

    # -- reading -----------------------------------------------------------------------

    def export(self, incarnation: int = 0, pid: int = 0) -> dict[str, Any]:
        """The ring and its bounds as plain data (msgpack-ready: bodies stay bytes), with
        the role's incarnation (the merge matches headers to it) and pid."""
        return {
            "format": FORMAT,
            "role": self.role,
            "incarnation": incarnation,
            "pid": pid,
            "on": self.on,
            "bounds": {"events": self.events, "bytes": self.nbytes, "body": self.body},
            "recorded": self.seq,
            "dropped": self.dropped,
            "cut": self.cut,
            "held_bytes": self.held,
            "clock": {"wall_ns": time.time_ns(), "mono": self._now_s()},
            "fields": list(FIELDS),
            "entries": [
                [*e[:8], _note_decoder.decode(e[8])] if e[1] == "int" else list(e)
                for e in self.ring
            ],
        }


def to_json(export: dict[str, Any]) -> dict[str, Any]:
    """An export with every body as base64 text (a JSON dump); `from_json` undoes it."""
    out = dict(export)
    out["entries"] = [
        [*e[:8], {"b64": base64.b64encode(e[8]).decode()} if isinstance(e[8], bytes) else e[8]]
        for e in export.get("entries", ())
    ]
    return out


def from_json(export: dict[str, Any]) -> dict[str, Any]:
    """A JSON dump's export with its bodies as bytes again."""
    out = dict(export)
    out["entries"] = [
        [
            *e[:8],
            base64.b64decode(e[8]["b64"])
            if isinstance(e[8], dict) and set(e[8]) == {"b64"}
            else e[8],
        ]
        for e in export.get("entries", ())
    ]
    return out
