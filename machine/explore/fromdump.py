"""A dump's client operations as an explorer workload, and its roles' recorded order.

    ex = extract(read_dump(path))           # ex.workload: a Workload of call ops
    run_workload(ex.workload, profile_for(dump, where), rs, follow=ex.follow())

From the flight recorders merged into one history (machine.explore.flight):

  * every request a client session sent (a user endpoint's request whose header
    names a session) becomes a `call` op of that session's client, in the
    session's own msg_id order (its send order); its body is kept whole with
    the header blanked (the signing tag stripped). Not taken: ctl.* (hello,
    directory, keepalives, status), uvm.attach (the replay's own session
    attaches), requests that do not decode (a body the recorder cut: counted
    in `skipped`); a uvm.detach is kept (the replay's session detaches
    there); a run of net.recv long polls is one op (the player waits for the
    session's sends there);
  * every kernel-side request of a tool (a sender that is no role: the
    stress nemesis's net.link, pd.wakeup; not ctl.*, not net.tap_*) becomes a
    `kcall` op of one last client, at its place: `after` (its position in
    the merged history) and `at_us`;
  * a spawn, fork, net.socket or uvm.open op carries `makes`, the recorded id it
    created: an asid from the mmu's pmap.create(asid, owner) of that session,
    in order (else the order the session's requests first name new asids), a
    socket or handle from the first later request that names an unclaimed one;
  * `at_us` is the request's arrival on the roles' clock (mono: one monotonic
    clock for every process of a host, virtual in a simulation) after the
    first op's; the workload is "paced" (machine.explore.calls);
  * RAM is the dump's nframes pages, swap uvm's swpages (else twice RAM), the
    link as net starts it (the tools' net.link ops change it).

The follow plan: each followed role's recorded inputs (mmu, uvm, pdaemon,
net; the supervisor is not followed) as machine.ipc.follow Expected keys,
(lane kind, lane, tag), and classify(), the same keys for the simulator's
deliveries: a user request's lane is its recorded session (the player maps
the replay's sessions to them), a kernel request's its sender role ("tool"
for any other sender), a reply's the peer's role, an event's the
publisher's. Not followed on either side (their number is the timing's, not
the run's): ctl.* requests and events and their replies (ctl.ack.reply
excepted: pmap.* are acked with it), net.recv, net.tap_*, uvm.attach and
uvm.detach, and lanes of sessions the workload does not have.

Invariants: extract() is a pure function of the dump; the workload it returns
round-trips through JSON (workload.py) and names every recorded session it
took; classify() never raises (a message it cannot place is not followed).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machine.dumpfile import DumpError
from machine.explore.calls import MAKES
from machine.explore.flight import History, header_of, merge
from machine.explore.workload import RECORDED_FEATURES, Op, Workload
from machine.ipc.follow import STALL_S, Classify, Expected, FollowGate, Key
from machine.ipc.recorder import FlightRecorder
from machine.ipc.trace import tag_bytes
from machine.params import PAGE_SIZE
from machine.profile import SHIPPED, ProfileError, load_profile, with_overrides
from machine.proto import NO_HEADER, Msg, Request, encode, tag_of, with_header

#: The roles whose recorded order a replay follows.
FOLLOWED = ("mmu", "uvm", "pdaemon", "net")
_ROLES = frozenset(FOLLOWED)
_REVOKED = re.compile(r"was revoked by (\w+)")  # as machine.explore.run reads a panic
#: Requests a replay does not take from the recording (its own sessions make them).
_SESSION_TAGS = frozenset({"uvm.attach", "uvm.detach"})
#: ... though a uvm.detach is an op: the player's session detaches there.
_KEPT = frozenset({"uvm.detach"})
#: Long polls: how many a run makes (and what each reply carries) is its timing's.
_LONG_POLLS = frozenset({"net.recv", "pmap.trapwait", "pmap.trapwait.reply"})


def unfollowed(kind: str, tag: str) -> bool:
    """=> whether messages of `kind` and `tag` are left out of following (module doc)."""
    if tag == "?" or tag in _SESSION_TAGS or tag in _LONG_POLLS or tag.startswith("net.tap_"):
        return True
    return tag.startswith("ctl.") and tag != "ctl.ack.reply"


@dataclass
class Extracted:
    """A dump's workload and what the replay needs besides (module doc)."""

    workload: Workload
    sessions: list[str]  # recorded session ids, in client order
    origin: float  # the roles' clock (mono) that at_us 0 is
    dump: dict[str, Any]
    skipped: dict[str, int] = field(default_factory=dict)
    #: role -> entries its recorder let go: the sessions' oldest requests may be missing
    truncated: dict[str, int] = field(default_factory=dict)

    def follow(self, w: Workload | None = None) -> FollowPlan:
        """=> the follow plan for `w` (default: the extracted workload)."""
        return FollowPlan(self.dump, self.origin, lanes_of(w or self.workload))


def _body(msg: Msg) -> str:
    return base64.b64encode(encode(with_header(msg, NO_HEADER))).decode()


def extract(dump: dict[str, Any]) -> Extracted:
    """=> the dump's client and tool requests as a paced workload (module doc)."""
    h = merge(dump)
    skipped: dict[str, int] = {}
    per: dict[int, list[tuple[int, int, str, Request]]] = {}  # session -> (msg_id, k, role, req)
    tools: list[tuple[int, str, Request]] = []
    for k, (d, msg, hd) in enumerate(zip(h.deliveries, h.messages, h.headers, strict=True)):
        if d.kind != "req" or hd is None:
            continue
        user = d.endpoint.endswith("/user")
        if not user and (hd.sender in _ROLES or hd.sender == "supervisor"):
            continue
        if not isinstance(msg, Request):
            skipped["undecodable"] = skipped.get("undecodable", 0) + 1
            continue
        tag = tag_of(msg)
        if tag.startswith(("ctl.", "net.tap_")) or (tag in _SESSION_TAGS and tag not in _KEPT):
            continue
        if user and hd.incarnation:
            per.setdefault(hd.incarnation, []).append((hd.msg_id, k, d.at, msg))
        elif not user:
            tools.append((k, d.at, msg))
    monos = [h.deliveries[k].mono for reqs in per.values() for _, k, _, _ in reqs]
    monos += [h.deliveries[k].mono for k, _, _ in tools]
    origin = min(monos, default=0.0)
    created = _created_asids(h)
    order = sorted(per, key=lambda s: min(k for _, k, _, _ in per[s]))
    clients: list[tuple[Op, ...]] = []
    for s in order:
        reqs = sorted(per[s], key=lambda r: r[0])
        ops = _session_ops(s, reqs, h, origin, created.get(s, []))
        clients.append(tuple(ops))
    if tools:
        clients.append(
            tuple(
                Op("kcall", _args(k, role, msg, h.deliveries[k].mono - origin) | {"after": k})
                for k, role, msg in tools
            )
        )
    ram = int(dump.get("machine", {}).get("nframes", 1024)) * PAGE_SIZE
    frames = (dump.get("roles", {}).get("uvm") or {}).get("frames") or {}
    swap = int(frames.get("swpages", 0)) * PAGE_SIZE or 2 * ram
    w = Workload(ram, swap, RECORDED_FEATURES, 0, 0, tuple(c for c in clients if c))
    return Extracted(w, [str(s) for s in order], origin, dump, skipped, h.truncated())


def _args(k: int, role: str, msg: Request, at_s: float) -> dict[str, int | str | bool]:
    return {"role": role, "t": tag_of(msg), "body": _body(msg), "at_us": int(at_s * 1e6), "seq": k}


def _session_ops(
    s: int,
    reqs: list[tuple[int, int, str, Request]],
    h: History,
    origin: float,
    asids: list[int],
) -> list[Op]:
    """One session's requests as ops: net.recv runs made one, `makes` filled in."""
    kept = [r for i, r in enumerate(reqs) if not (i and _t(r) == _t(reqs[i - 1]) == "net.recv")]
    spawns = [i for i, r in enumerate(kept) if _t(r) in ("uvm.spawn", "uvm.fork")]
    if len(asids) != len(spawns):  # the mmu's ring lost some: first appearances instead
        asids = _first_seen(kept, "asid", set())
    made: dict[int, int] = dict(zip(spawns, asids, strict=False))
    claimed: dict[str, set[int]] = {"sock": set(), "handle": set()}
    for i, r in enumerate(kept):
        what = MAKES.get(_t(r))
        if what in claimed:
            asid = getattr(r[3], "asid", None)
            later = [
                x for x in kept[i + 1 :] if asid is None or getattr(x[3], "asid", asid) == asid
            ]
            ids = _first_seen(later, what, claimed[what]) or _first_seen(
                kept[i + 1 :], what, claimed[what]
            )
            if ids:
                made[i] = ids[0]
                claimed[what].add(ids[0])
    ops = []
    for i, (_, k, role, msg) in enumerate(kept):
        args = _args(k, role, msg, h.deliveries[k].mono - origin) | {"session": str(s)}
        if i in made:
            args["makes"] = made[i]
        ops.append(Op("call", args))
    return ops


def _t(r: tuple[int, int, str, Request]) -> str:
    return tag_of(r[3])


def _first_seen(
    reqs: Iterable[tuple[int, int, str, Request]], name: str, not_in: set[int]
) -> list[int]:
    """=> the ids of field `name` the requests name, new ones in order of first naming."""
    out: list[int] = []
    for r in reqs:
        v = getattr(r[3], name, None)
        if isinstance(v, int) and v and v not in not_in and v not in out:
            out.append(v)
    return out


def _created_asids(h: History) -> dict[int, list[int]]:
    """session -> the asids the mmu created for it (pmap.create's owner), in order."""
    out: dict[int, list[int]] = {}
    for d, msg in zip(h.deliveries, h.messages, strict=True):
        if d.at == "mmu" and msg is not None and tag_of(msg) == "pmap.create":
            out.setdefault(int(getattr(msg, "owner", 0)), []).append(int(getattr(msg, "asid", 0)))
    return out


# -- the follow plan -----------------------------------------------------------------


def lanes_of(w: Workload) -> frozenset[str]:
    """=> the lanes a workload plays: its recorded sessions, and "tool" if it has kcalls."""
    out = {str(op.args["session"]) for ops in w.clients for op in ops if "session" in op.args}
    if any(op.kind == "kcall" for ops in w.clients for op in ops):
        out.add("tool")
    return frozenset(out)


def recorded_key(kind: str, ep: str, data: bytes, lanes: frozenset[str]) -> Key | None:
    """=> the key of a recorded input (module doc), or None if it is not followed."""
    tag = tag_bytes(data).decode(errors="replace")
    if unfollowed(kind, tag):
        return None
    src, _, which = ep.partition("/")
    if kind != "req":
        return (kind, src, tag)
    hd = header_of(data)
    if hd is None:
        return None
    if which == "user":
        s = str(hd.incarnation)
        return ("user", s, tag) if s in lanes else None
    sender = hd.sender if hd.sender in _ROLES else "tool"
    return ("kernel", sender, tag) if sender != "tool" or "tool" in lanes else None


@dataclass
class FollowPlan:
    """Each followed role's recorded inputs, and the gate that follows them (a GateMaker)."""

    dump: dict[str, Any]
    origin: float
    lanes: frozenset[str]
    stall_s: float = STALL_S

    def expected(self) -> dict[str, list[Expected]]:
        out: dict[str, list[Expected]] = {}
        flight = self.dump.get("flight") or {}
        for role in FOLLOWED:
            es = out[role] = []
            for e in (flight.get(role) or {}).get("entries", ()):
                seq, kind, ep, data, mono = e[0], e[1], e[2], e[8], e[5]
                if kind == "int" or not isinstance(data, bytes):
                    continue
                key = recorded_key(kind, str(ep), data, self.lanes)
                if key is not None and float(mono) >= self.origin:
                    es.append(Expected(key, float(mono) - self.origin, int(seq)))
        return out

    def __call__(self, sessions: dict[int, str]) -> FollowGate:
        return FollowGate(self.expected(), classifier(sessions), self.stall_s)


def _split(endpoint: str) -> tuple[str, str]:
    """ "inproc://uvm/user" -> ("uvm", "user")."""
    parts = endpoint.split("/")
    return (parts[-2], parts[-1]) if len(parts) >= 2 else ("", "")


def _receiver(kind: str, pair: object) -> str | None:
    """The role a reply (its connection's Peer) or an event (its subscription's
    recording callback, machine.ipc.service) goes to; None for a client's."""
    if kind == "rep":
        ident = getattr(getattr(getattr(pair, "on_reply", None), "__self__", None), "ident", None)
        rec = getattr(ident, "recorder", None)
        return rec.role if isinstance(rec, FlightRecorder) else None
    for cell in getattr(getattr(pair, "cb", None), "__closure__", None) or ():
        v = cell.cell_contents
        if isinstance(v, FlightRecorder):
            return v.role
    return None


def classifier(sessions: dict[int, str]) -> Classify:
    """=> classify() for the simulator's deliveries (module doc); `sessions` maps the
    replay's session ids to the recorded ones (the player fills it as it attaches)."""

    def classify(kind: str, pair: object, data: bytes) -> tuple[str, Key] | None:
        try:
            tag = tag_bytes(data).decode(errors="replace")
            if unfollowed(kind, tag):
                return None
            src, which = _split(str(getattr(pair, "endpoint", "")))
            if kind == "req":
                hd = header_of(data)
                if src not in _ROLES or hd is None:
                    return None
                if which == "user":
                    return src, ("user", sessions.get(hd.incarnation, "?"), tag)
                return src, ("kernel", hd.sender if hd.sender in _ROLES else "tool", tag)
            role = _receiver(kind, pair)
            return (role, (kind, src, tag)) if role in _ROLES else None
        except Exception:
            return None

    return classify


# -- the machine and the target --------------------------------------------------------


def profile_for(dump: dict[str, Any], where: Path) -> str:
    """=> what --profile takes for the dump's profile: its shipped name (or its TOML file)
    when that still has the dump's knobs, else a TOML written in `where` from the knobs."""
    name = str(dump.get("profile") or "modern")
    knobs = dump.get("knobs")
    if not isinstance(knobs, dict) or not knobs:  # unknown (a dump from before knobs)
        knobs = None
    try:
        p = load_profile(name)
        if knobs is None or p.knobs == knobs:
            return name if name in SHIPPED else p.source
    except ProfileError as e:
        if knobs is None:
            raise DumpError(f"the dump's profile is gone and it holds no knobs: {e}") from None
    base = load_profile("modern")
    stem = Path(name).stem if name.endswith(".toml") else name
    where.mkdir(parents=True, exist_ok=True)
    path = with_overrides(base, dict(knobs), where, name=f"{stem}-from-dump")
    try:
        load_profile(path)  # refused knobs fail here, with the file named
    except ProfileError as e:
        raise DumpError(f"the dump's knobs do not make a profile: {e}") from None
    return path


#: A live dump's reasons that name a leak: the stress harness's "frames not back: ..."
#: (machine.stress.control) and a tool's "leak ...", as explain reads them.
_LEAK_REASONS = ("leak", "frames not back")


def target_of(dump: dict[str, Any]) -> tuple[str, str, str]:
    """=> (outcome, message, revoker) the dump records: a crash is a panic ("role:
    message", as a run's); a live dump's reason names corruption or a leak; else ok."""
    p = dump.get("panic")
    if isinstance(p, dict):
        msg = f"{p.get('role') or '?'}: {p.get('message', '')}"
        m = _REVOKED.search(msg)
        return ("panic", msg, m.group(1) if m else "")
    reason = str(dump.get("reason") or "")
    for outcome, prefixes in (("corruption", ("corruption",)), ("leak", _LEAK_REASONS)):
        if reason.startswith(prefixes):
            return (outcome, reason, "")
    return ("ok", reason, "")


def write_workload(w: Workload, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(w.to_json()) + "\n")
    return path
