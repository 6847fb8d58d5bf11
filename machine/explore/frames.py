"""What a recorded history did to each frame: a shadow of the mappings, every event per page.

    fh = frame_history(merge(read_dump(path)))      # machine.explore.flight
    fh.events[pfn]          # FrameEvent(pos, t, kind, who, what), in history order
    fh.sends                # every net.send recorded: Send(pos, session, asid, sock, seq, va, n)
    fh.owner[asid]          # the session that owns the address space (pmap.create)

The messages carry frame numbers (page bytes never travel in kernel messages), so a
frame's life can be read from them. A pass over the merged history keeps a shadow of
the translations, as the mmu holds them (user: (asid, vpn) -> pfn; kernel: kva page ->
pfn), from what uvm and net asked of the mmu, and notes for each frame what touched it:

  kind     message(s)                                   who
  map      pmap.enter, a trap's answer (trapwait/resolve)  uvm, for the fault of asid/va
  unmap    pmap.remove/protect NONE/destroy of a mapping  uvm
  kenter   pmap.kenter(_chunks): a kernel loan mapping    uvm (a whole-send loan)
  kremove  pmap.kremove(_ranges)                          net (sopendfree)
  revoke   pmap.page_protect NONE (with its why)          its sender: uvm or pdaemon
  protect  pmap.page_protect READ (a loan's write-protect) its sender
  write    mmu.store into a page mapped to the frame      the client's session, asid
  loan     uvm.loan_chunks' reply naming the frame        uvm, to net, for asid/va
  unloan   uvm.unloan_chunks                              net
  claim    uvm.pd_claim's reply (claimed for an op)       pdaemon
  daemon   uvm.pd_finish (deactivate, free, pageout ...)  pdaemon
  read     pmap.kextract_ranges' reply: a DMA that found   net's driver
           no translation in the shared table (machine.kpt) asked the mmu
  kfault   uvm.kfault at a kernel VA of the frame         net's driver
  hold     pmap.uhold's reply: a copy reads the frame     net (copy path)
  tx       net's note: an mbuf of the frame on the wire   net's driver

A store to a page the shadow has no mapping for (the mmu trapped it) is the frame's
that the next mapping of that page names (the trap's answer). What a reply reports (a
loan, a claim, a translation, a hold) is noted at its request's place: it was done when
the role handled the request. Processes that exited
(uvm.exit, the uvm.proc_exited event, a lease reap) are in `exited`.

Invariants: total (a message that does not decode, or names what the shadow does not
know, is skipped, never raised on); events of a frame are in history order; the
shadow only follows what was recorded (a recorder that dropped its oldest entries
starts the shadow late: History.truncated() says where).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from machine.explore.flight import History
from machine.params import PAGE_SHIFT, PAGE_SIZE
from machine.proto import (
    MmuStore,
    Msg,
    NetSend,
    PmapCreate,
    PmapDestroy,
    PmapEnter,
    PmapKenter,
    PmapKenterChunks,
    PmapKextractRanges,
    PmapKextractRangesReply,
    PmapKremove,
    PmapKremoveRanges,
    PmapPageProtect,
    PmapProtect,
    PmapRemove,
    PmapResolve,
    PmapTrapwait,
    PmapTrapwaitReply,
    PmapUhold,
    PmapUholdReply,
    Reply,
    Request,
    UvmDetach,
    UvmExit,
    UvmKfault,
    UvmLoanChunks,
    UvmLoanChunksReply,
    UvmPdClaim,
    UvmPdClaimReply,
    UvmPdFinish,
    UvmProcExited,
    UvmUnloanChunks,
)

#: Events kept per frame (the last ones; a frame touched more often loses its oldest).
MAX_EVENTS = 400


@dataclass(frozen=True)
class FrameEvent:
    pos: int  # the delivery's position in the history
    t: float
    kind: str
    who: str
    what: str
    asid: int = -1  # the address space a map, write, loan or hold names (-1: none)
    va: int = -1  # its page's address there

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pos": self.pos, "t": round(self.t, 6), "kind": self.kind}
        out |= {"who": self.who, "what": self.what}
        if self.asid >= 0:
            out |= {"asid": self.asid, "va": self.va}
        return out


@dataclass(frozen=True)
class Send:
    """One net.send a client made (seq: its number on its socket, from 1)."""

    pos: int
    t: float
    session: int
    asid: int
    sock: int
    seq: int
    va: int
    n: int


@dataclass(frozen=True)
class Tx:
    """One mbuf the driver put on the wire (net's "tx" note): bytes [off, off + n) of
    send `seq` on `sock`; a loaned one's storage at kva + pgoff over `pfns`."""

    pos: int
    session: int
    sock: int
    seq: int
    off: int
    n: int
    kva: int
    pgoff: int
    pfns: tuple[int, ...]


@dataclass
class FrameHistory:
    events: dict[int, collections.deque[FrameEvent]] = field(default_factory=dict)
    sends: list[Send] = field(default_factory=list)
    tx: list[Tx] = field(default_factory=list)
    owner: dict[int, int] = field(default_factory=dict)  # asid -> session
    exited: dict[int, str] = field(default_factory=dict)  # asid -> how it ended
    ended: dict[int, str] = field(default_factory=dict)  # session -> how it ended
    #: the shadow at the end: (asid, vpn) -> pfn, and kernel page -> pfn
    umap: dict[tuple[int, int], int] = field(default_factory=dict)
    kmap: dict[int, int] = field(default_factory=dict)

    def of(self, pfn: int, lo: int = 0, hi: int | None = None) -> list[FrameEvent]:
        """The frame's events with lo <= pos < hi."""
        return [e for e in self.events.get(pfn, ()) if e.pos >= lo and (hi is None or e.pos < hi)]

    def holders(self, pfn: int) -> list[tuple[int, int]]:
        """(asid, va) of every user mapping of the frame the shadow still has."""
        return sorted((a, v << PAGE_SHIFT) for (a, v), p in self.umap.items() if p == pfn)


def _who(h: Any) -> str:
    if h is None:
        return "?"
    return f"session {h.incarnation:x}" if h.sender == "client" else str(h.sender)


class _Pass:
    """One walk over the history (frame_history)."""

    def __init__(self, h: History) -> None:
        self.h = h
        self.fh = FrameHistory()
        self.rmap: dict[int, set[tuple[int, int]]] = collections.defaultdict(set)
        self.krmap: dict[int, set[int]] = collections.defaultdict(set)
        self.traps: dict[int, tuple[int, int, int]] = {}  # trap id -> (asid, va, owner)
        self.pending_stores: dict[tuple[int, int], list[tuple[int, str, int]]] = {}
        #: requests awaiting their replies: (endpoint, sender, msg_id) -> (pos, request)
        self.requests: dict[tuple[str, str, int], tuple[int, Request]] = {}
        self.sends_per_sock: collections.Counter[tuple[int, int]] = collections.Counter()
        self.pos = 0

    def note(self, pfn: int, kind: str, who: str, what: str, asid: int = -1, va: int = -1) -> None:
        q = self.fh.events.get(pfn)
        if q is None:
            q = self.fh.events[pfn] = collections.deque(maxlen=MAX_EVENTS)
        t = self.h.deliveries[self.pos].t
        page = va & ~(PAGE_SIZE - 1) if va >= 0 else -1
        q.append(FrameEvent(self.pos, t, kind, who, what, asid, page))

    # -- the shadow -----------------------------------------------------------------

    def map(self, asid: int, va: int, pfn: int, why: str) -> None:
        key = (asid, va >> PAGE_SHIFT)
        old = self.fh.umap.get(key)
        if old is not None and old != pfn:
            self.rmap[old].discard(key)
        self.fh.umap[key] = pfn
        self.rmap[pfn].add(key)
        self.note(pfn, "map", "uvm", f"mapped at {va:#x} of asid {asid} ({why})", asid, va)
        for pos, who, store_va in self.pending_stores.pop(key, []):
            self.note(
                pfn,
                "write",
                who,
                f"written at {store_va:#x} of asid {asid} (the store of #{pos}, after its trap)",
                asid,
                store_va,
            )

    def unmap(self, key: tuple[int, int], why: str) -> None:
        pfn = self.fh.umap.pop(key, None)
        if pfn is not None:
            self.rmap[pfn].discard(key)
            self.note(
                pfn,
                "unmap",
                "uvm",
                f"unmapped from {key[1] << PAGE_SHIFT:#x} of asid {key[0]} ({why})",
            )

    def kenter(self, kva: int, pfns: list[int], who: str) -> None:
        for i, pfn in enumerate(pfns):
            kvpn = (kva >> PAGE_SHIFT) + i
            self.fh.kmap[kvpn] = pfn
            self.krmap[pfn].add(kvpn)
            self.note(pfn, "kenter", who, f"kernel mapping {kvpn << PAGE_SHIFT:#x} entered")

    def kremove(self, kva: int, npages: int, who: str) -> None:
        for kvpn in range(kva >> PAGE_SHIFT, (kva >> PAGE_SHIFT) + npages):
            pfn = self.fh.kmap.pop(kvpn, None)
            if pfn is not None:
                self.krmap[pfn].discard(kvpn)
                self.note(pfn, "kremove", who, f"kernel mapping {kvpn << PAGE_SHIFT:#x} removed")

    # -- the walk -------------------------------------------------------------------

    def run(self) -> FrameHistory:
        h = self.h
        for k, d in enumerate(h.deliveries):
            self.pos = k
            if d.kind == "int":
                self.internal(d.at, d.data if isinstance(d.data, dict) else {})
                continue
            m = h.messages[k]
            if m is None:
                continue
            if d.kind == "req" and isinstance(m, Request):
                if not m.notice:
                    self.requests[(d.endpoint, m.h.sender, m.h.msg_id)] = (k, m)
                self.request(m, _who(h.headers[k]))
            elif d.kind == "rep" and isinstance(m, Reply):
                got = self.requests.pop((d.endpoint, d.at, m.h.re), None)
                if got is not None:
                    # what the reply reports was done when the request was handled
                    pos, self.pos = self.pos, got[0]
                    self.reply(got[1], m)
                    self.pos = pos
            elif d.kind == "evt" and isinstance(m, UvmProcExited):
                self.fh.exited.setdefault(m.asid, m.reason)
        for pfn, q in self.fh.events.items():  # a reply's events sit at their request's place
            self.fh.events[pfn] = collections.deque(
                sorted(q, key=lambda e: e.pos), maxlen=MAX_EVENTS
            )
        return self.fh

    def request(self, m: Msg, who: str) -> None:
        fh = self.fh
        if isinstance(m, PmapCreate):
            fh.owner[m.asid] = m.owner
        elif isinstance(m, PmapEnter):
            self.map(m.asid, m.va, m.pfn, "pmap.enter")
        elif isinstance(m, PmapTrapwait | PmapResolve):
            for a in m.answers:
                trap = self.traps.get(a.id)
                if trap is None:
                    continue
                for mp in a.mappings:
                    self.map(trap[0], mp.va, mp.pfn, f"the fault at {trap[1]:#x}")
        elif isinstance(m, PmapKenterChunks):
            for kva, pfns in m.chunks:
                self.kenter(kva, list(pfns), who)
        elif isinstance(m, PmapKenter):
            self.kenter(m.va, list(m.pfns), who)
        elif isinstance(m, PmapKremoveRanges):
            for kva, n in m.ranges:
                self.kremove(kva, n, who)
        elif isinstance(m, PmapKremove):
            self.kremove(m.va, m.npages, who)
        elif isinstance(m, PmapPageProtect):
            self.page_protect(m, who)
        elif isinstance(m, PmapRemove) or (isinstance(m, PmapProtect) and m.prot == 0):
            lo, hi = m.sva >> PAGE_SHIFT, m.eva >> PAGE_SHIFT
            for key in [k for k in fh.umap if k[0] == m.asid and lo <= k[1] < hi]:
                self.unmap(key, "pmap.remove" if isinstance(m, PmapRemove) else "pmap.protect")
        elif isinstance(m, PmapDestroy):
            for key in [k for k in fh.umap if k[0] == m.asid]:
                self.unmap(key, "pmap.destroy: the process is gone")
        elif isinstance(m, MmuStore):
            self.store(m, who)
        elif isinstance(m, UvmUnloanChunks):
            for pfns, kva, _ in m.chunks:
                for pfn in pfns:
                    self.note(pfn, "unloan", who, f"unloaned (its kernel mapping at {kva:#x})")
        elif isinstance(m, UvmPdFinish):
            for op, pfn in m.items:
                self.note(pfn, "daemon", who, f"the page daemon's {op} carried out")
        elif isinstance(m, UvmKfault) and m.asid == 0:
            pfn = m.pfn if m.pfn >= 0 else fh.kmap.get(m.va >> PAGE_SHIFT, -1)
            if pfn >= 0:
                what = f"kernel page fault at {m.va:#x} (the driver's read)"
                self.note(pfn, "kfault", who, what, 0, m.va)
        elif isinstance(m, UvmExit):
            fh.exited.setdefault(m.asid, "exit")
        elif isinstance(m, UvmDetach):
            fh.ended.setdefault(m.h.incarnation, "detached")
        elif isinstance(m, NetSend):
            h = self.h.headers[self.pos]
            session = h.incarnation if h is not None else 0
            self.sends_per_sock[(session, m.sock)] += 1
            seq = self.sends_per_sock[(session, m.sock)]
            d = self.h.deliveries[self.pos]
            fh.sends.append(Send(self.pos, d.t, session, m.asid, m.sock, seq, m.va, m.n))

    def page_protect(self, m: PmapPageProtect, who: str) -> None:
        for pfn in m.pfns:
            if m.prot == 0:
                for key in list(self.rmap.get(pfn, ())):
                    self.fh.umap.pop(key, None)
                self.rmap.pop(pfn, None)
                kvas = self.krmap.pop(pfn, set())
                for kvpn in kvas:
                    self.fh.kmap.pop(kvpn, None)
                where = f" (and its kernel mapping at {min(kvas) << PAGE_SHIFT:#x})" if kvas else ""
                self.note(
                    pfn,
                    "revoke",
                    who,
                    f"every mapping revoked{where}: pmap_page_protect(NONE): {m.why or '?'}",
                )
            else:
                self.note(pfn, "protect", who, f"write-protected: {m.why or '?'}")

    def store(self, m: MmuStore, who: str) -> None:
        va, end = m.va, m.va + len(m.data)
        while va < end:
            key = (m.asid, va >> PAGE_SHIFT)
            pfn = self.fh.umap.get(key)
            if pfn is None:
                self.pending_stores.setdefault(key, []).append((self.pos, who, va))
            else:
                self.note(pfn, "write", who, f"written at {va:#x} of asid {m.asid}", m.asid, va)
            va = (va & ~(PAGE_SIZE - 1)) + PAGE_SIZE

    def reply(self, req: Request, m: Reply) -> None:
        if isinstance(m, PmapTrapwaitReply):
            for t in m.traps:
                self.traps[t.id] = (t.asid, t.va, t.owner)
        elif isinstance(req, UvmLoanChunks) and isinstance(m, UvmLoanChunksReply):
            for (va, _), pfns in zip(req.chunks, m.pfns, strict=False):
                for i, pfn in enumerate(pfns):
                    self.note(
                        pfn,
                        "loan",
                        "uvm",
                        f"loaned to net: {va + i * PAGE_SIZE:#x} of "
                        f"asid {req.asid} (session {req.owner:x})",
                        req.asid,
                        va + i * PAGE_SIZE,
                    )
        elif isinstance(req, UvmPdClaim) and isinstance(m, UvmPdClaimReply):
            ops = {pfn: op for op, pfn in req.items}
            for pfn in m.claimed:
                self.note(pfn, "claim", "pdaemon", f"claimed by the page daemon ({ops.get(pfn)})")
        elif isinstance(req, PmapKextractRanges) and isinstance(m, PmapKextractRangesReply):
            for (kva, _), pfns in zip(req.ranges, m.pfns, strict=False):
                for i, pfn in enumerate(pfns):
                    at = kva + i * PAGE_SIZE
                    self.note(pfn, "read", "net", f"the driver's DMA of {at:#x}", 0, at)
        elif isinstance(req, PmapUhold) and isinstance(m, PmapUholdReply):
            for i, pfn in enumerate(m.pfns):
                self.note(
                    pfn,
                    "hold",
                    "net",
                    f"copied from {req.va + i * PAGE_SIZE:#x} of asid {req.asid} (the copy path)",
                    req.asid,
                    req.va + i * PAGE_SIZE,
                )

    def internal(self, role: str, note: dict[str, Any]) -> None:
        what = note.get("what")
        if what == "tx":
            try:
                session, sock, seq, off, n, kva, pgoff = (
                    int(note[k]) for k in ("session", "sock", "seq", "off", "n", "kva", "pgoff")
                )
                pfns = tuple(int(p) for p in note.get("pfns") or ())
            except (KeyError, TypeError, ValueError, OverflowError):
                return
            tx = Tx(self.pos, session, sock, seq, off, n, kva, pgoff, pfns)
            self.fh.tx.append(tx)
            for i, pfn in enumerate(tx.pfns):
                self.note(
                    pfn,
                    "tx",
                    role,
                    f"on the wire: session {tx.session:x} socket {tx.sock} send {tx.seq} "
                    f"bytes {tx.off}..{tx.off + tx.n}",
                    0,
                    tx.kva + i * PAGE_SIZE,
                )
        elif what == "lease reap" and isinstance(reaped := note.get("session"), int):
            self.fh.ended.setdefault(reaped, "reaped: lease expired")


def frame_history(h: History) -> FrameHistory:
    """The frames' history and the mapping shadow of a merged recording (module doc)."""
    return _Pass(h).run()
