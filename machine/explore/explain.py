"""Why a dump's machine failed: a panic's causal chain, a corruption's page and writer, a leak.

    ex = explain(read_dump(path), path)      # machine.dumpfile
    ex.to_json()    # {outcome, message, revoker, chain, frames, send, page, ...}
    ex.html(title)  # the sequence diagram page of `replay --html`, for the real run

The dump's flight recorders are merged into one causal history (machine.explore.flight)
and read as the explorer reads a simulated run (machine.explore.sequence), with the
frames' history beside it (machine.explore.frames). What the dump says happened:

  panic       a crash dump: the chain, as `replay --html` finds it in the messages (the
              loan, the kernel mapping, the revocation with who and why, the driver's
              read, its kernel fault, the panic); any other panic: the request the
              role was handling. `frames`: the chain's page, its last events.
  corruption  a live dump the stress harness took at its first corruption (reason
              "corruption: {detail}": session, sock, seq, offset): the send (net.send
              of that socket, its seq-th), the page that byte was read from, and every
              event that touched that frame between the send and the driver's read
              (`frames[0].between`): who wrote it (`writers`), revoked it, freed it or
              reused it; a kernel fault that entered a zero page there (LOAN_KVA
              kernel_object) is the chain.
  leak        a dump whose frames did not come back (reason "frames not back ...", or
              held frames with no process left): for each frame uvm still holds, its
              vm_page (uvm's dump, `held`), its last history (owner, loans and unloans,
              the page daemon's last action) and the process and session that last
              mapped it, and whether they ended.
  ok          nothing failed: the recording is shown, nothing is explained.

Invariants: explain() is total on what read_dump() returns (a dump without recorders
explains from the panic message alone, and says so in `notes`); everything in to_json()
is JSON; the page is bounded (machine.explore.diagram).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from machine.explore.diagram import render_html
from machine.explore.flight import Delivery, History, merge
from machine.explore.frames import FrameEvent, FrameHistory, Send, frame_history
from machine.explore.sequence import Arrow, Chain, arrows_of, chain_at_fault, find_chain
from machine.params import PAGE_SIZE

OUTCOMES = ("panic", "corruption", "leak", "ok")
#: Events of a frame shown (the last ones; `between` is shown whole, up to this many).
LAST_EVENTS = 12
_REVOKED = re.compile(r"was revoked by ([\w-]+)")
_PAGE = re.compile(r"\bpage (\d+)\b")


@dataclass
class Explanation:
    outcome: str
    message: str
    path: str = ""
    revoker: str = ""
    caption: str = ""
    chain: list[str] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    send: dict[str, Any] | None = None
    page: int | None = None
    writers: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    history: History | None = None
    marks: Chain | None = None  # what the diagram draws in red

    def to_json(self) -> dict[str, Any]:
        h = self.history
        return {
            "outcome": self.outcome,
            "message": self.message,
            "revoker": self.revoker,
            "caption": self.caption,
            "chain": self.chain,
            "frames": self.frames,
            "send": self.send,
            "page": self.page,
            "writers": self.writers,
            "notes": self.notes,
            "dump": self.path,
            "entries": len(h.deliveries) if h is not None else 0,
            "truncated": h.truncated() if h is not None else {},
        }

    @property
    def steps(self) -> list[str]:
        """The explanation in lines (`explain` prints them): the caption, the chain, then
        the details."""
        out = [self.caption] if self.caption else []
        out += [f"{i}. {s}" for i, s in enumerate(self.chain, 1)]
        return out + self.details

    @property
    def details(self) -> list[str]:
        """The frames' history and the notes, in lines (the page's list)."""
        out = []
        for f in self.frames:
            out.append(f"page {f['pfn']}: " + "; ".join(f.get("summary", [])))
            out += [f"  {e['t'] * 1e3:9.3f} ms  {e['who']:<18} {e['what']}" for e in f["shown"]]
        out += [f"note: {n}" for n in self.notes]
        return out

    def html(self, title: str) -> str:
        record = self.history.deliveries if self.history is not None else None
        return render_html(
            _Result(self.outcome, self.message, self.path, self.revoker, record),
            _Steps(self.details),
            title,
            chain=self.marks,
            steps_heading="What the recording shows of the page",
            time_label="ms (wall)",
            hash_label="dump",
        )


@dataclass(frozen=True)
class _Result:
    """What the diagram page needs of a run (diagram.ResultLike), for a dump."""

    outcome: str
    message: str
    trace_hash: str  # the dump's path (the page's `hash_label` says so)
    revoker: str
    record: list[Delivery] | None


@dataclass
class _Steps:
    lines: list[str]

    def steps(self) -> list[str]:
        return self.lines


# -- what the dump says happened ------------------------------------------------------------


def outcome_of(dump: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(outcome, message, detail) of a dump (module doc)."""
    panic = dump.get("panic")
    if isinstance(panic, dict) and panic.get("message"):
        return "panic", f"{panic.get('role') or '?'}: {panic['message']}", {}
    reason = str(dump.get("reason") or "")
    if reason.startswith("corruption:"):
        try:
            detail = json.loads(reason.split(":", 1)[1])
        except ValueError:
            detail = {}
        return "corruption", reason, detail if isinstance(detail, dict) else {}
    uvm = (dump.get("roles") or {}).get("uvm") or {}
    held = uvm.get("held") or {}
    if reason.startswith(("frames not back", "leak")) or (held and not uvm.get("spaces")):
        n = len(held)
        return "leak", reason or f"{n} frames neither free nor kernel-owned, no process left", {}
    return "ok", reason or "no failure recorded", {}


def explain(dump: dict[str, Any], path: str = "") -> Explanation:
    """The dump explained (module doc)."""
    outcome, message, detail = outcome_of(dump)
    ex = Explanation(outcome, message, path)
    if not dump.get("flight"):
        ex.notes.append("the dump holds no flight recorder: only its message explains it")
        m = _REVOKED.search(message)
        ex.revoker = m.group(1) if m else ""
        return ex
    h = ex.history = merge(dump)
    fh = frame_history(h)
    for role, n in h.truncated().items():
        ex.notes.append(
            f"{role}'s recorder let its {n} oldest entries go (its history starts later)"
        )
    if outcome == "panic":
        _panic(ex, h, fh)
    elif outcome == "corruption":
        _corruption(ex, h, fh, detail)
    elif outcome == "leak":
        _leak(ex, fh, dump)
    return ex


def _frame(fh: FrameHistory, pfn: int, lo: int = 0, hi: int | None = None) -> dict[str, Any]:
    events = fh.of(pfn)
    between = fh.of(pfn, lo, hi) if lo or hi is not None else []
    shown = between[-4 * LAST_EVENTS :] if between else events[-LAST_EVENTS:]
    return {
        "pfn": pfn,
        "events": len(events),
        "last": [e.to_json() for e in events[-LAST_EVENTS:]],
        "between": [e.to_json() for e in between],
        "shown": [e.to_json() for e in shown],
        "holders": [{"asid": a, "va": va, "session": fh.owner.get(a)} for a, va in fh.holders(pfn)],
    }


def _chain_of(ex: Explanation, h: History) -> Chain | None:
    arrows = arrows_of(h.deliveries)
    ch = find_chain(arrows, ex.outcome, ex.message)
    if ch is not None:
        ex.caption, ex.chain, ex.marks = ch.caption, list(ch.steps), ch
        ex.revoker = ch.revoker
    return ch


def _panic(ex: Explanation, h: History, fh: FrameHistory) -> None:
    _chain_of(ex, h)
    if not ex.revoker:
        m = _REVOKED.search(ex.message)
        ex.revoker = m.group(1) if m else ""
    pages = [int(p) for p in _PAGE.findall(ex.caption) or _PAGE.findall(ex.message)]
    if pages:
        ex.page = pages[0]
        f = _frame(fh, pages[0])
        f["summary"] = [f"{f['events']} events recorded", "the last ones:"]
        ex.frames.append(f)


def _the_send(fh: FrameHistory, detail: dict[str, Any]) -> Send | None:
    session, sock, seq = (_int(detail.get(k)) for k in ("session", "sock", "seq"))
    sends = [s for s in fh.sends if s.sock == sock and (not session or s.session == session)]
    for s in sends:
        if s.seq == seq and (not session or s.session == session):
            return s
    va = _int(detail.get("va"))
    return next((s for s in reversed(sends) if s.va == va), None)


def _int(v: Any) -> int:
    if isinstance(v, int):
        return v
    try:
        return int(str(v), 0)
    except ValueError:
        return 0


def _corruption(ex: Explanation, h: History, fh: FrameHistory, detail: dict[str, Any]) -> None:
    send = _the_send(fh, detail)
    if send is None:
        ex.notes.append(f"no recorded net.send matches the corruption's {detail}")
        return
    off = _int(detail.get("offset"))
    va = send.va + off
    ex.send = {
        "session": send.session,
        "asid": send.asid,
        "sock": send.sock,
        "seq": send.seq,
        "va": send.va,
        "n": send.n,
        "at": send.pos,
        "byte": off,
    }
    where = _where_read(fh, send, off)
    if where is None:
        ex.notes.append(f"no recorded loan, copy or transmit names the page of {va:#x}")
        return
    pfn, kva, read_at = where
    ex.page = pfn
    ex.send["kva"] = kva
    touched = fh.of(pfn, send.pos, read_at + 1)
    at_kva = [e for e in _events_at(fh, kva, send.pos, read_at + 1) if e not in touched]
    writes = [e for e in touched if e.kind == "write"]
    writes += [e for e in [*touched, *at_kva] if e.kind == "kfault"]
    revokes = [e for e in touched if e.kind == "revoke"]
    reused = [e for e in touched if e.kind == "map" and (e.asid, e.va) != (send.asid, va)]
    ex.writers = [e.to_json() for e in writes]
    f = _frame(fh, pfn, send.pos, read_at + 1)
    f["summary"] = [
        f"byte {off} of send {send.seq} on socket {send.sock} (at {va:#x} of asid {send.asid})"
        + (f", read by the driver at kernel address {kva:#x}" if kva else ", copied"),
        f"{len(writes)} writes, {len(revokes)} revocations, {len(reused)} new mappings "
        "between the send and the driver's read",
    ]
    f["at_kva"] = [e.to_json() for e in at_kva]
    ex.frames.append(f)
    if revokes:
        ex.revoker = revokes[0].who
    wrong = f"byte {off} of send {send.seq} on socket {send.sock} was loaned from page {pfn}"
    faults = [e for e in [*touched, *at_kva] if e.kind == "kfault"]
    arrows = arrows_of(h.deliveries)
    at = {a.index: k for k, a in enumerate(arrows)}
    if faults and faults[-1].pos in at:  # its kernel mapping was revoked: a zero fill
        ch = chain_at_fault(arrows, at[faults[-1].pos], ex.message)
        ex.caption, ex.chain, ex.marks = f"{wrong}: {ch.caption}", list(ch.steps), ch
        ex.revoker = ch.revoker or ex.revoker
        return
    who = writes[-1] if writes else (revokes[-1] if revokes else None)
    said = f"{who.who}: {who.what}" if who else "no recorded event touched it"
    ex.caption = f"{wrong}, which changed between the send and the driver's read: {said}"
    ex.marks = _marks(arrows, at, send, [*revokes, *writes], read_at)
    ex.chain = list(ex.marks.steps) if ex.marks is not None else []


def _where_read(fh: FrameHistory, send: Send, off: int) -> tuple[int, int, int] | None:
    """(the frame byte `off` of the send was loaned or copied from, the kernel address the
    driver read it at (0: a copy), the position of that read). The mbuf that carried the
    byte (net's tx note) names both; without it, the first loan or copy of the page."""
    for tx in fh.tx:
        if (tx.session, tx.sock, tx.seq) != (send.session, send.sock, send.seq) or not (
            tx.off <= off < tx.off + tx.n
        ):
            continue
        if not tx.pfns:  # copied: read when the send copied it (pmap.uhold)
            break
        i = (tx.pgoff + off - tx.off) // PAGE_SIZE
        kva = tx.kva + i * PAGE_SIZE
        reads = [e for e in _events_at(fh, kva, send.pos, tx.pos + 1) if e.kind == "read"]
        return tx.pfns[i], kva, (reads[-1].pos if reads else tx.pos)
    pfn, read_at = _page_read(fh, send, send.va + off)
    return (pfn, 0, read_at if read_at is not None else send.pos) if pfn is not None else None


def _events_at(fh: FrameHistory, kva: int, lo: int, hi: int) -> list[FrameEvent]:
    """Every frame's events at kernel address `kva`'s page (asid 0) with lo <= pos < hi."""
    page = kva & ~(PAGE_SIZE - 1)
    out = [e for evs in fh.events.values() for e in evs if e.asid == 0 and e.va == page]
    return sorted((e for e in out if lo <= e.pos < hi), key=lambda e: e.pos)


def _page_read(fh: FrameHistory, send: Send, va: int) -> tuple[int | None, int | None]:
    """The frame that held `va` of the send when it was loaned or copied (the first loan
    or hold of that page after the send), and the position of the driver's read of it
    (its DMA or kernel fault; for a copy, the copy itself)."""
    page = va & ~(PAGE_SIZE - 1)
    best: FrameEvent | None = None
    for events in fh.events.values():
        for e in events:
            if (
                e.pos >= send.pos
                and e.kind in ("loan", "hold")
                and (e.asid, e.va) == (send.asid, page)
                and (best is None or e.pos < best.pos)
            ):
                best = e
    if best is None:
        return None, None
    pfn = next(p for p, evs in fh.events.items() if best in evs)
    if best.kind == "hold":
        return pfn, best.pos
    read = next(
        (x.pos for x in fh.of(pfn, best.pos + 1) if x.kind in ("read", "kfault", "tx")), None
    )
    return pfn, read


def _marks(
    arrows: list[Arrow],
    at: dict[int, int],
    send: Send,
    events: list[FrameEvent],
    read_at: int | None,
) -> Chain | None:
    """A chain for the diagram: the send, what touched the page, the driver's read."""
    ch = Chain("")
    picks = [(send.pos, f"session {send.session:x} sent {send.n} B from {send.va:#x} (net.send)")]
    picks += [(e.pos, f"{e.who}: {e.what}") for e in sorted(events, key=lambda e: e.pos)]
    if read_at is not None:
        picks.append((read_at, "net's driver read the page"))
    for pos, words in picks:
        k = at.get(pos)
        if k is not None:
            ch.steps.append(words)
            ch.marks[k] = len(ch.steps)
    return ch if ch.steps else None


def _leak(ex: Explanation, fh: FrameHistory, dump: dict[str, Any]) -> None:
    uvm = (dump.get("roles") or {}).get("uvm") or {}
    held: dict[str, dict[str, Any]] = uvm.get("held") or {}
    if not held:
        ex.notes.append("uvm's dump names no held frame (a dump from before held frames)")
    if uvm.get("audit"):
        ex.notes.append("uvm's auditor at the dump: " + "; ".join(uvm["audit"][:4]))
    owners = _owners_now(uvm.get("spaces") or {})
    left: dict[int, dict[str, Any]] = {}  # processes still holding a leaked frame
    for key, page in sorted(held.items(), key=lambda kv: int(kv[0])):
        pfn = int(key)
        f = _frame(fh, pfn)
        f["vm_page"] = page
        f["holder"] = _last_holder(fh, pfn)
        f["held_by"] = [
            _process(fh, asid, owner) | {"va": va}
            for asid, va, owner in owners.get(("anon", page.get("anon")), [])
            + owners.get(("object", page.get("object")), [])
        ]
        for p in f["held_by"]:
            left[p["asid"]] = p
        f["summary"] = _leak_summary(fh, pfn, page, f["holder"], f["held_by"])
        ex.frames.append(f)
    ex.page = int(next(iter(held))) if held else None
    n = len(held)
    ex.caption = f"{n} frame{'s' if n != 1 else ''} still held after every client was gone" + (
        f": page {ex.page}" if n == 1 else ""
    )
    orphans = [p for p in left.values() if p["session_state"] != "live"]
    if orphans:
        who = ", ".join(
            f"asid {p['asid']} of session {p['session'] or 0:x} ({p['session_state']})"
            for p in orphans[:4]
        )
        ex.caption += f", by processes that outlived their sessions: {who}"


def _owners_now(spaces: dict[str, Any]) -> dict[tuple[str, Any], list[tuple[int, int, int]]]:
    """("anon", id) or ("object", id) -> (asid, va, owner) of every process of uvm's dump
    whose map still holds it (an anon in an entry's amap, or the entry's object)."""
    out: dict[tuple[str, Any], list[tuple[int, int, int]]] = {}
    for asid, sp in spaces.items():
        for e in sp.get("entries", ()):
            for va, (anon, _ref, _page) in (e.get("anons") or {}).items():
                out.setdefault(("anon", anon), []).append((int(asid), int(va), sp.get("owner", 0)))
            if e.get("object") is not None:
                key = ("object", e["object"])
                out.setdefault(key, []).append((int(asid), int(e["start"]), sp.get("owner", 0)))
    return out


def _process(fh: FrameHistory, asid: int, owner: int) -> dict[str, Any]:
    """A process the leak's dump still holds: its session and how the recording ended it."""
    return {
        "asid": asid,
        "session": owner,
        "process": fh.exited.get(asid, "never exited"),
        "session_state": fh.ended.get(owner, "live"),
    }


def _last_holder(fh: FrameHistory, pfn: int) -> dict[str, Any]:
    """The process that last mapped the frame in the recording, and how it ended."""
    last_map = next((e for e in reversed(fh.of(pfn)) if e.kind == "map"), None)
    if last_map is None:
        return {}
    session = fh.owner.get(last_map.asid)
    return {
        "asid": last_map.asid,
        "session": session,
        "mapped": last_map.to_json(),
        "process": fh.exited.get(last_map.asid, "alive at the end"),
        "session_state": fh.ended.get(session or 0, "not seen to end"),
    }


def _leak_summary(
    fh: FrameHistory,
    pfn: int,
    page: dict[str, Any],
    holder: dict[str, Any],
    held_by: list[dict[str, Any]],
) -> list[str]:
    loans = sum(1 for e in fh.of(pfn) if e.kind == "loan")
    unloans = sum(1 for e in fh.of(pfn) if e.kind == "unloan")
    daemon = next((e for e in reversed(fh.of(pfn)) if e.kind in ("claim", "daemon")), None)
    out = [
        f"{', '.join(page.get('flags') or []) or 'no flags'}, queue {page.get('queue')}, "
        f"wire_count {page.get('wire_count')}, loan_count {page.get('loan_count')}, "
        f"anon {page.get('anon')}"
        + (f" (ref {page['anon_ref']})" if "anon_ref" in page else "")
        + f", object {page.get('object')}",
        f"{loans} loans and {unloans} unloans recorded",
        f"the page daemon's last: {daemon.what if daemon else 'none recorded'}",
        (
            f"last {holder['mapped']['what']}, by session {holder['session'] or 0:x} "
            f"(process: {holder['process']}; session: {holder['session_state']})"
            if holder
            else "never mapped in the recording"
        ),
    ]
    for p in held_by:
        out.append(
            f"still held by asid {p['asid']} at {p['va']:#x}, a process of session "
            f"{p['session'] or 0:x} (process: {p['process']}; session: {p['session_state']})"
        )
    if not held_by:
        out.append("no process holds it any more (its owner is gone: a stray)")
    return out
