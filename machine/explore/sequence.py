"""A recorded run as a message sequence, and the causal chain of its failure in it.

    arrows = arrows_of(result.record)        # one Arrow per delivery (events once)
    chain = find_chain(arrows, result.outcome, result.message)
    shown = select(arrows, chain)            # what machine.explore.diagram draws

The record is the bus's (`Delivery(t, kind, endpoint, data)` per delivery, kind "req" |
"rep" | "evt"). Each delivery is decoded with machine.proto's decoders (a user frame is
body || 16-byte tag: the body is decoded) and placed between two lifelines:

  * a request goes from its header's sender (a role, or a client session: one lifeline
    per session, by the header's incarnation; uvm.attach's reply binds the new session
    to the attacher's lifeline) to the role whose endpoint it reached;
  * a reply goes back on its connection: from the endpoint's role to the sender of the
    oldest unanswered request on that endpoint whose msg_id the reply's `re` names
    (per-connection order: replies come in the order made);
  * an event is an arrow from its publisher to "*", once (every subscriber's copy is the
    same message: same publisher, incarnation and msg_id).

The chain of a revoked kernel loan mapping (the 1999 thread) is read from the messages,
not from the panic text: the driver's `uvm.kfault` at kernel VA `va` (asid 0) names the
page; the last `pmap.kenter_chunks` before it that mapped `va` is the mapping, the
`uvm.loan_chunks` reply before that which handed out the page is the loan (or, for a
whole-send loan, where uvm sent that kenter before answering, the first one after it);
the first message between the kenter and the fault that removed the mapping
(`pmap.page_protect` NONE of the page, `pmap.kremove_ranges` of the VA: a later one finds
nothing left to remove) is the revocation, its header's sender the revoker
and its `why` the reason; the `pmap.kextract_ranges` reply carrying the fault VA is the
driver's read that found no translation (a cleared entry of the shared kernel page
table, machine.kpt, that the driver then asked the mmu about); the kfault's error reply
and the first ctl.panic after it are the panic. The panic text ("was revoked by X: ...
(why)") names the revoker only when no revocation was recorded. Any other panic: the
last request delivered to the panicking role before its ctl.panic, and the panic.

Invariants:
  * Total: bytes that do not decode become a "?" arrow; nothing here raises on a record.
  * select() keeps order: arrows are drawn in delivery order; a repeat folds into an
    earlier arrow only within FOLD_BACK arrows and never across a chain arrow.
  * Bounded: select() returns at most `limit` arrows plus the chain's (each with CONTEXT
    arrows before it).
  * Nothing after the first ctl.panic a role published is shown (the machine's teardown).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from machine.ipc.auth import TAG_LEN
from machine.params import PAGE_SIZE
from machine.proto import (
    BadMessage,
    CtlPanic,
    Msg,
    PmapKenter,
    PmapKenterChunks,
    PmapKextractRangesReply,
    PmapKremove,
    PmapKremoveRanges,
    PmapPageProtect,
    Reply,
    Request,
    UvmAttachReply,
    UvmKfault,
    UvmLoanChunksReply,
    UvmLoanReply,
    decode_event,
    decode_reply,
    decode_request,
    tag_of,
)

#: Arrows shown before the failure (the chain's are added wherever they lie).
MAX_ARROWS = 120
#: Client lifelines drawn at most (fold_clients: the others share one).
MAX_CLIENT_LANES = 3
#: Lifelines always drawn, in this order after the clients'.
ROLE_LANES = ("mmu", "uvm", "pdaemon", "net")
#: Lifelines folded away: their messages are not drawn.
FOLDED = frozenset({"supervisor"})
#: Housekeeping requests (and their replies) not drawn.
QUIET = frozenset(
    {"ctl.ping", "ctl.stats", "ctl.status", "ctl.dump", "ctl.directory", "ctl.hello"}
    | {"ctl.halt", "ctl.shutdown", "net.tap_listen", "net.tap_recv", "net.tap_unlisten"}
)
#: A repeat (same ends, same tag) folds into one of the last FOLD_BACK arrows ("x N"):
#: a fault's four messages (mmu.store, trapwait reply, trapwait, access reply) fold as one.
FOLD_BACK = 6
#: Arrows shown before each chain arrow that lies before the last MAX_ARROWS (what led to it).
CONTEXT = 2
_DECODE_ERRORS = (BadMessage, msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError)
_ROLE_RE = re.compile(r"\b(mmu|uvm|pdaemon|net|supervisor)\b")
_PD_PREFIX = re.compile(r"^page daemon \([^)]*\): ")
_REVOKED_RE = re.compile(r"was revoked by ([\w-]+): (\S+) \((.*)\)")


class DeliveryLike(Protocol):
    """One delivery of the bus's recording (machine.ipc.inmemory's Delivery), or of a
    dump's merged flight recorders (machine.explore.flight's, which also says `at`: the
    role that received it, and has kind "int" for a role's internal event, whose data
    is a dict of its fields)."""

    @property
    def t(self) -> float: ...
    @property
    def kind(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def data(self) -> Any: ...  # bytes; an "int" entry's dict


@dataclass
class Arrow:
    """One delivery between two lifelines (dst "*": an event on src's lifeline)."""

    index: int  # in the record
    t: float
    kind: str
    src: str
    dst: str
    tag: str
    msg: Msg | None
    request: int = -1  # a reply: the position (in arrows_of's list) of its request
    count: int = 1  # folded repeats
    mark: int = 0  # the chain's step number (1, 2, ...); 0: not in the chain
    pos: int = 0  # position among the drawable arrows (gaps are measured in it)
    note: dict[str, object] | None = None  # an internal event's fields (kind "int")


@dataclass
class Chain:
    """The causal chain found in a recording: the words and the arrows they name."""

    caption: str
    steps: list[str] = field(default_factory=list)  # step k+1's words
    marks: dict[int, int] = field(default_factory=dict)  # position in arrows -> step number
    revoker: str = ""


def _decode(kind: str, data: bytes) -> Msg | None:
    try:
        if kind == "rep":
            return decode_reply(data)
        if kind == "evt":
            return decode_event(data)
        try:
            return decode_request(data)
        except BadMessage:
            if len(data) <= TAG_LEN:
                raise
            return decode_request(data[:-TAG_LEN])  # a signed user frame: body || tag
    except _DECODE_ERRORS:
        return None


def _role_of(endpoint: str) -> str:
    m = _ROLE_RE.search(endpoint)
    return m.group(1) if m else endpoint


def arrows_of(record: Sequence[DeliveryLike]) -> list[Arrow]:
    """Every delivery as an arrow (its two ends resolved), each event once."""
    sessions: dict[int, str] = {}
    pending: dict[tuple[str, int], list[int]] = {}  # (endpoint, msg_id) -> request positions
    events: set[tuple[str, int, int]] = set()
    out: list[Arrow] = []

    def lane(sender: str, incarnation: int) -> str:
        if sender != "client":
            return sender or "?"
        if incarnation not in sessions:
            sessions[incarnation] = f"client {len(set(sessions.values())) + 1}"
        return sessions[incarnation]

    for i, d in enumerate(record):
        if d.kind == "int":  # a role's internal event: a mark on its own lifeline
            role = _role_of(d.endpoint)
            note = dict(d.data) if isinstance(d.data, dict) else {}
            out.append(Arrow(i, d.t, "int", role, role, str(note.get("what", "?")), None))
            out[-1].note = note
            continue
        m = _decode(d.kind, d.data)
        tag = tag_of(m) if m is not None else "?"
        server = _role_of(d.endpoint)
        a = Arrow(i, d.t, d.kind, "?", server, tag, m)
        if d.kind == "req" and m is not None:
            a.src = lane(m.h.sender, m.h.incarnation)
            if isinstance(m, Request) and not m.notice:
                pending.setdefault((d.endpoint, m.h.msg_id), []).append(len(out))
        elif d.kind == "rep":
            a.src, a.dst = server, "?"
            waiting = pending.get((d.endpoint, m.h.re), []) if m is not None else []
            at = getattr(d, "at", "")  # a flight record says who received the reply
            mine = [k for k in waiting if out[k].src == at] if at else []
            if waiting:
                a.request = (mine or waiting)[0]
                waiting.remove(a.request)
                a.dst = out[a.request].src
                if out[a.request].tag in QUIET:
                    a.tag = out[a.request].tag + ".reply"  # ctl.ack.reply of ctl.halt: quiet
                if isinstance(m, UvmAttachReply) and a.dst.startswith("client"):
                    sessions.setdefault(m.session, a.dst)
        elif d.kind == "evt":
            a.src, a.dst = server, "*"
            if m is not None:
                key = (d.endpoint, m.h.incarnation, m.h.msg_id)
                if key in events:
                    continue
                events.add(key)
        out.append(a)
    if len(set(sessions.values())) <= 1:  # one client: its lifeline is "client"
        for a in out:
            a.src = "client" if a.src.startswith("client ") else a.src
            a.dst = "client" if a.dst.startswith("client ") else a.dst
    return out


def _panic_at(arrows: list[Arrow]) -> int | None:
    """Position of the first ctl.panic a role published (not the supervisor's copy)."""
    for k, a in enumerate(arrows):
        if isinstance(a.msg, CtlPanic) and a.src not in FOLDED:
            return k
    return None


def _kenter_pfn(m: Msg | None, va: int) -> int | None:
    """The pfn a kenter message mapped at va, else None."""
    if isinstance(m, PmapKenterChunks):
        chunks = list(m.chunks)
    elif isinstance(m, PmapKenter):
        chunks = [(m.va, m.pfns)]
    else:
        return None
    for kva, pfns in chunks:
        if kva <= va < kva + len(pfns) * PAGE_SIZE:
            return int(pfns[(va - kva) // PAGE_SIZE])
    return None


def _loaned(m: Msg | None, pfn: int) -> bool:
    if isinstance(m, UvmLoanChunksReply):
        return any(pfn in pfns for pfns in m.pfns)
    return isinstance(m, UvmLoanReply) and pfn in m.pfns


def _removes(m: Msg | None, va: int, pfn: int) -> bool:
    """Whether the message removes the kernel mapping va -> pfn."""
    if isinstance(m, PmapPageProtect):
        return m.prot == 0 and pfn in m.pfns
    if isinstance(m, PmapKremoveRanges):
        return any(kva <= va < kva + n * PAGE_SIZE for kva, n in m.ranges)
    if isinstance(m, PmapKremove):
        return m.va <= va < m.va + m.npages * PAGE_SIZE
    return False


def short_why(why: str) -> str:
    """A revocation's reason in a few words: the page daemon's policy prefix dropped
    ("page daemon (scan1999): deactivate" -> "deactivate"; "loan break: ..." stays)."""
    return _PD_PREFIX.sub("", why)


def _last(arrows: list[Arrow], lo: int, hi: int, pred: Callable[[Msg | None], bool]) -> int | None:
    """The last position k in [lo, hi) with pred(arrows[k].msg)."""
    return next((k for k in range(hi - 1, lo - 1, -1) if pred(arrows[k].msg)), None)


def _first(arrows: list[Arrow], lo: int, hi: int, pred: Callable[[Msg | None], bool]) -> int | None:
    """The first position k in [lo, hi) with pred(arrows[k].msg)."""
    return next((k for k in range(lo, hi) if pred(arrows[k].msg)), None)


def find_chain(arrows: list[Arrow], outcome: str, message: str) -> Chain | None:
    """The causal chain of the failure (see the module doc); None for an ok run or none found."""
    if outcome == "ok":
        return None
    end = _panic_at(arrows)
    stop = end if end is not None else len(arrows)
    fault = _last(arrows, 0, stop, lambda m: isinstance(m, UvmKfault) and m.asid == 0)
    if fault is not None:
        return _loan_chain(arrows, fault, end, message)
    if end is None:
        return None
    p = arrows[end]
    assert isinstance(p.msg, CtlPanic)
    cause = next(
        (k for k in range(end - 1, -1, -1) if arrows[k].dst == p.src and arrows[k].kind == "req"),
        None,
    )
    if cause is None:
        ch = Chain(f"{p.src} panicked.")
    else:
        c = arrows[cause]
        ch = Chain(f"{p.src} panicked handling {c.tag} from {c.src}.")
        _step(ch, arrows, cause, f"{c.src} sent {c.tag} to {p.src}")
    _step(ch, arrows, end, f"{p.src} panicked: " + p.msg.message.split(";", 1)[0])
    return ch


def chain_at_fault(arrows: list[Arrow], fault: int, message: str = "") -> Chain:
    """The loan chain of the kernel fault at arrows[fault] (a uvm.kfault): the loan, the
    kernel mapping, its revocation, the driver's read, the fault, and the panic if one
    followed it. For a corruption, where the fault was not the last one recorded."""
    end = _panic_at(arrows)
    return _loan_chain(arrows, fault, end if end is not None and end > fault else None, message)


def _step(ch: Chain, arrows: list[Arrow], k: int | None, words: str) -> None:
    """Step len(ch.steps) + 1: words, the arrow at k and, for a reply, its request."""
    if k is None:
        return
    ch.steps.append(words)
    ch.marks[k] = len(ch.steps)
    if arrows[k].request >= 0:
        ch.marks[arrows[k].request] = len(ch.steps)


def _loan_chain(arrows: list[Arrow], fault: int, end: int | None, message: str) -> Chain:
    kf = arrows[fault].msg
    assert isinstance(kf, UvmKfault)
    va, pfn = kf.va, kf.pfn
    kenter = None
    for k in range(fault - 1, -1, -1):
        got = _kenter_pfn(arrows[k].msg, va)
        if got is not None and (pfn < 0 or got == pfn):
            kenter, pfn = k, got
            break
    first = kenter if kenter is not None else 0
    loan = _last(arrows, 0, first, lambda m: _loaned(m, pfn))
    if loan is None:  # a whole-send loan: uvm entered the mapping before it answered
        loan = _first(arrows, first, fault, lambda m: _loaned(m, pfn))
    # the first removal after the kenter is the one that took the mapping away (a later
    # page_protect of the page finds no kernel mapping left to remove)
    revoke = _first(arrows, first + 1, fault, lambda m: _removes(m, va, pfn))
    read = _last(
        arrows,
        first + 1,
        fault,
        lambda m: isinstance(m, PmapKextractRangesReply) and va in m.fault_vas,
    )
    answer = next((k for k in range(fault + 1, len(arrows)) if arrows[k].request == fault), None)
    failed = answer is not None and isinstance(r := arrows[answer].msg, Reply) and r.errno
    revoker, why = "", ""
    rm = arrows[revoke].msg if revoke is not None else None
    if revoke is not None:
        revoker = arrows[revoke].src
        why = rm.why if isinstance(rm, PmapPageProtect) else arrows[revoke].tag
    elif (found := _REVOKED_RE.search(message)) is not None:
        revoker, why = found.group(1), found.group(3)
    who = revoker or "an unrecorded message"
    reason = f" ({short_why(why)})" if why else ""
    ended = "uvm panicked" if end is not None or failed else "uvm entered a zero page there"
    ch = Chain(
        f"{who} revoked the kernel's mapping of page {pfn}{reason} while net's driver still"
        f" had it loaned; the driver's next read faulted and {ended}.",
        revoker=revoker,
    )
    hva = f"{va:#x}"
    _step(ch, arrows, loan, f"uvm loaned page {pfn} to net (uvm.loan_chunks)")
    who_k = arrows[kenter].src if kenter is not None else "net"
    _step(
        ch, arrows, kenter, f"{who_k} entered the kernel mapping {hva} -> page {pfn} (pmap.kenter)"
    )
    how = f"pmap.page_protect(NONE): {why}" if isinstance(rm, PmapPageProtect) else why
    _step(ch, arrows, revoke, f"{who} revoked that mapping: {how}")
    _step(ch, arrows, read, f"net's driver read the mbuf: no translation at {hva} (pmap.kextract)")
    _step(ch, arrows, fault, f"net's driver took a kernel page fault: uvm.kfault({hva})")
    if answer is not None:
        ch.marks[answer] = len(ch.steps)
    if end is not None and end > fault:
        pm = arrows[end].msg
        said = pm.message if isinstance(pm, CtlPanic) else message
        _step(ch, arrows, end, f"{arrows[end].src} panicked: " + said.split(";", 1)[0])
    return ch


def fold_clients(arrows: list[Arrow], chain: Chain | None, keep: int = MAX_CLIENT_LANES) -> None:
    """More than `keep` client lifelines (a real run's many sessions): every client not in
    the chain shares one lifeline, "clients", so the roles' stay in view."""
    lanes = list(dict.fromkeys(x for a in arrows for x in (a.src, a.dst) if x.startswith("client")))
    if len(lanes) <= keep:
        return
    marks = chain.marks if chain is not None else {}
    mine = {x for k in marks for x in (arrows[k].src, arrows[k].dst) if x.startswith("client")}
    for a in arrows:
        if a.src.startswith("client") and a.src not in mine:
            a.src = "clients"
        if a.dst.startswith("client") and a.dst not in mine:
            a.dst = "clients"


def select(arrows: list[Arrow], chain: Chain | None, limit: int = MAX_ARROWS) -> list[Arrow]:
    """The arrows to draw, in order: up to the failure, folded, the last `limit` + the chain's."""
    marks = chain.marks if chain is not None else {}
    end = _panic_at(arrows)
    folded: list[Arrow] = []
    for k, a in enumerate(arrows[: end + 1 if end is not None else len(arrows)]):
        a.mark = marks.get(k, 0)
        quiet = a.tag in QUIET or (a.tag.endswith(".reply") and a.tag[:-6] in QUIET)
        if not a.mark and (quiet or a.src in FOLDED or a.dst in FOLDED):
            continue
        if not a.mark:
            same = None
            for b in reversed(folded[-FOLD_BACK:]):
                if b.mark:  # never fold across the chain: the order around it matters
                    break
                if (b.src, b.dst, b.tag) == (a.src, a.dst, a.tag):
                    same = b
                    break
            if same is not None:
                same.count += 1
                continue
        a.pos = len(folded)
        folded.append(a)
    tail = folded[-limit:] if limit > 0 else []
    first_tail = tail[0].pos if tail else len(folded)
    near = {a.pos - k for a in folded if a.mark for k in range(CONTEXT + 1)}
    return [a for a in folded[:first_tail] if a.pos in near] + tail
