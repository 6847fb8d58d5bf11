"""A dump's flight recorders merged into one causal history of the machine.

    h = merge(read_dump(path))          # machine.dumpfile
    for d in h.deliveries: ...         # Delivery(t, kind, endpoint, data, at), merged order
    h.messages[k]                       # the k-th delivery's message, decoded (or None)

Each role's recorder (machine.ipc.recorder) holds its inputs in the order it
handled them. The merge orders them all by happens-before, as Lamport's clocks
would, with no clock shared between the processes:

  * a role's own entries in recorded order (seq);
  * a message with sender S and msg_id m (read from its header) was stamped by S
    after S's last entry whose `last_id` < m (and before S's next entry); so its
    delivery happened after that entry of S. Only messages from a role's own
    Identity count: the incarnation in the header must be S's (a client's header
    says "client" and its session id, and carries no edge: client requests are
    ordered by their own msg_ids, at the roles that received them);
  * wall time (then role order, then seq) only breaks ties between entries
    neither of those orders (Kahn's algorithm, the ready entry with the
    smallest wall time first).
The requests a role received on a user endpoint name no role as sender (a client
could name any), so they never make an edge: a forged header cannot reorder the
history. Should the edges still form a cycle (they cannot for honest roles), the
merge breaks it at the earliest entry by wall time: it always returns every entry.

Each delivery becomes a machine.explore.sequence DeliveryLike: t (seconds since the
first entry, wall time), kind ("req", "rep", "evt", "int"), endpoint (the recorder's
label: "uvm/kernel", "mmu/kernel" for a reply from the mmu, "uvm/pub", "net/int"),
data (the message's bytes; an "int" entry's fields, a dict) and `at`, the role whose
recorder it is (who received it). The sequence diagram and the causal chain of
machine.explore.sequence read it as they read the simulator's bus record.

Invariants: merge() is total on any dump read_dump() accepts (entries that do not
decode are kept, with message None); it keeps every entry exactly once; within one
role the order is the recorded one.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from machine.ipc.auth import TAG_LEN
from machine.proto import Header, Msg, decode_event, decode_reply, decode_request

#: The order of the recorders in ties (then any other, by name).
ROLE_ORDER = ("supervisor", "mmu", "uvm", "pdaemon", "net")


class _HeaderOnly(msgspec.Struct):
    h: Header


_header_decoder = msgspec.msgpack.Decoder(_HeaderOnly)
_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError)


def header_of(data: bytes) -> Header | None:
    """The header of a recorded message (a signed user frame: body || tag), or None."""
    try:
        return _header_decoder.decode(data).h
    except _ERRORS:
        pass
    if len(data) > TAG_LEN:
        try:
            return _header_decoder.decode(data[:-TAG_LEN]).h
        except _ERRORS:
            pass
    return None


def decode(kind: str, data: Any) -> Msg | None:
    """The recorded message, decoded (None for a note or bytes that do not decode)."""
    if not isinstance(data, bytes):
        return None
    for body in (data, data[:-TAG_LEN] if len(data) > TAG_LEN else None):
        if body is None:
            continue
        try:
            if kind == "rep":
                return decode_reply(body)
            if kind == "evt":
                return decode_event(body)
            return decode_request(body)
        except Exception:
            continue
    return None


@dataclass(frozen=True)
class Delivery:
    """One recorded input, placed in the merged history (a sequence.DeliveryLike)."""

    t: float  # seconds since the history's first entry (wall time)
    kind: str
    endpoint: str
    data: Any  # bytes; a note's dict
    at: str  # the role that recorded it
    seq: int  # its seq in that role's recorder
    wall_ns: int
    mono: float
    conn: int
    size: int


@dataclass
class History:
    """Every recorded input of a dump, in causal order (see the module doc)."""

    deliveries: list[Delivery]
    messages: list[Msg | None]
    headers: list[Header | None]
    #: role -> its recorder's export minus the entries (bounds, recorded, dropped, ...)
    recorders: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: how many entries were placed only by breaking a cycle (0 for honest roles)
    forced: int = 0

    def of_role(self, role: str) -> Iterable[int]:
        """Positions of the role's own entries, in its order."""
        return (k for k, d in enumerate(self.deliveries) if d.at == role)

    def truncated(self) -> dict[str, int]:
        """role -> entries its recorder let go (the history starts later there)."""
        return {r: int(x.get("dropped", 0)) for r, x in self.recorders.items() if x.get("dropped")}


@dataclass
class _Node:
    role: str
    rank: int
    entry: list[Any]
    header: Header | None
    preds: int = 0
    succ: list[int] = field(default_factory=list)


def _rank(role: str) -> int:
    return ROLE_ORDER.index(role) if role in ROLE_ORDER else len(ROLE_ORDER)


def merge(dump: dict[str, Any]) -> History:
    """The dump's recorders (read_dump's `flight`) as one history in causal order."""
    flight: dict[str, dict[str, Any]] = dump.get("flight") or {}
    roles = sorted(flight, key=lambda r: (_rank(r), r))
    nodes: list[_Node] = []
    first: dict[str, int] = {}  # role -> index of its first node
    last_ids: dict[str, list[int]] = {}
    incarnations: dict[str, int] = {}
    for r in roles:
        rec = flight[r]
        inc = rec.get("incarnation")
        if isinstance(inc, int):
            incarnations[r] = inc
        first[r] = len(nodes)
        ids: list[int] = []
        for e in rec.get("entries", ()):
            kind = e[1]
            nodes.append(_Node(r, _rank(r), e, header_of(e[8]) if kind != "int" else None))
            ids.append(int(e[6]))
        last_ids[r] = ids
    for r in roles:  # a role's own order
        for k in range(first[r] + 1, first[r] + len(last_ids[r])):
            _edge(nodes, k - 1, k)
    for k, n in enumerate(nodes):  # a message after its sender's entry that stamped it
        h = n.header
        kind, ep = n.entry[1], n.entry[2]
        if h is None or (kind == "req" and not str(ep).endswith("/kernel")):
            continue
        s = h.sender
        if s not in last_ids or s == n.role or incarnations.get(s) != h.incarnation:
            continue
        i = bisect.bisect_left(last_ids[s], h.msg_id) - 1  # the last with last_id < msg_id
        if i >= 0:
            _edge(nodes, first[s] + i, k)
    order, forced = _kahn(nodes)
    t0 = min((int(n.entry[4]) for n in nodes), default=0)
    deliveries, messages, headers = [], [], []
    for k in order:
        n = nodes[k]
        e = n.entry
        deliveries.append(
            Delivery(
                t=(int(e[4]) - t0) / 1e9,
                kind=e[1],
                endpoint=str(e[2]),
                data=e[8],
                at=n.role,
                seq=int(e[0]),
                wall_ns=int(e[4]),
                mono=float(e[5]),
                conn=int(e[3]),
                size=int(e[7]),
            )
        )
        messages.append(decode(e[1], e[8]))
        headers.append(n.header)
    recorders = {r: {k: v for k, v in flight[r].items() if k != "entries"} for r in roles}
    return History(deliveries, messages, headers, recorders, forced)


def _edge(nodes: list[_Node], a: int, b: int) -> None:
    nodes[a].succ.append(b)
    nodes[b].preds += 1


def _kahn(nodes: list[_Node]) -> tuple[list[int], int]:
    """A topological order, the ready node of smallest (wall, rank, seq) first. => (order,
    nodes placed by breaking a cycle)."""

    def key(k: int) -> tuple[int, int, int, int]:
        e = nodes[k].entry
        return (int(e[4]), nodes[k].rank, int(e[0]), k)

    ready = [key(k) for k, n in enumerate(nodes) if n.preds == 0]
    heapq.heapify(ready)
    done = [False] * len(nodes)
    order: list[int] = []
    forced = 0
    while len(order) < len(nodes):
        if not ready:  # a cycle (a dishonest header): the earliest entry left goes next
            rest = min(key(k) for k in range(len(nodes)) if not done[k])
            heapq.heappush(ready, rest)
            forced += 1
        k = heapq.heappop(ready)[-1]
        if done[k]:
            continue
        done[k] = True
        order.append(k)
        for s in nodes[k].succ:
            nodes[s].preds -= 1
            if nodes[s].preds == 0 and not done[s]:
                heapq.heappush(ready, key(s))
    return order, forced
