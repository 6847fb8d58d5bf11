"""The picture of a failure (machine.explore.diagram, machine.explore.sequence).

The 1999 chain is recorded from the hand-written scenario `reclaim-while-loaned` run in
process (the bus records when asked: the scenario runner's SimMachine is given a recording
transport); the other tests build their records from messages encoded here.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import pytest

import machine.testing
from machine.explore.diagram import RED, render_html
from machine.explore.sequence import MAX_ARROWS, arrows_of, find_chain, select
from machine.ipc.inmemory import InMemoryTransport, run_simulation
from machine.ipc.trace import Delivery
from machine.proto import (
    CtlPanic,
    Errno,
    ErrorReply,
    Header,
    Msg,
    PmapAttrs,
    PmapKenterChunks,
    PmapKextractRanges,
    PmapKextractRangesReply,
    PmapPageProtect,
    Status,
    UvmKfault,
    UvmLoanChunks,
    UvmLoanChunksReply,
    UvmOpen,
    encode,
)
from machine.scenarios.runner import Outcome, run_scenario

SVG_NS = "{http://www.w3.org/2000/svg}"
KVA = 0x4000010000000000


@dataclass
class Result:
    outcome: str
    message: str
    trace_hash: str = "cafe"
    revoker: str = ""
    record: list[Delivery] | None = field(default=None)


class Steps:
    def __init__(self, *steps: str) -> None:
        self._steps = list(steps)

    def steps(self) -> list[str]:
        return self._steps


def _scenario(profile: str) -> tuple[Outcome, InMemoryTransport]:
    """Run reclaim-while-loaned in process with a recording bus."""
    made: list[InMemoryTransport] = []

    class Recording(InMemoryTransport):
        def __init__(self, *args: Any, **kw: Any) -> None:
            kw["record"] = True
            super().__init__(*args, **kw)
            made.append(self)

    mp = pytest.MonkeyPatch()
    mp.setattr(machine.testing, "InMemoryTransport", Recording)
    try:
        out = run_simulation(run_scenario("reclaim-while-loaned", profile, inprocess=True))
    finally:
        mp.undo()
    assert len(made) == 1
    assert made[0].record
    return out, made[0]


def _svg(page: str) -> ET.Element:
    """The page's SVG, parsed as XML (so it is well formed)."""
    m = re.search(r"<svg .*</svg>", page, re.S)
    assert m is not None
    return ET.fromstring(m.group(0))


def _groups(svg: ET.Element, cls: str) -> list[tuple[str, str]]:
    """(tooltip, label) of every arrow group of class cls."""
    out = []
    for g in svg.iter(f"{SVG_NS}g"):
        if g.get("class") == cls:
            title = g.find(f"{SVG_NS}title")
            labels = [t.text or "" for t in g.iter(f"{SVG_NS}text") if t.get("class") == "lbl"]
            out.append((title.text or "" if title is not None else "", " ".join(labels)))
    return out


@pytest.mark.timeout(60)
def test_bug1999_page_names_the_revoker_and_the_faulting_access() -> None:
    out, bus = _scenario("bug1999")
    assert out.outcome == "panic", out.detail
    res = Result("panic", out.evidence["message"], bus.digest(), record=bus.record)
    page = render_html(res, Steps("1. p1: send 16384 B (loaned)", "2. hog: 1 MiB"), "bug1999")
    svg = _svg(page)
    lanes = [t.text for t in svg.iter(f"{SVG_NS}text") if t.get("class") == "lane"]
    assert lanes == ["client", "mmu", "uvm", "pdaemon", "net"]
    chain = _groups(svg, "chain")
    # The revocation: pdaemon's page_protect(NONE) to the mmu, highlighted.
    revoke = [(tip, lbl) for tip, lbl in chain if "pmap.page_protect" in lbl]
    assert len(revoke) == 1
    assert "pdaemon -> mmu" in revoke[0][0]
    assert "prot=NONE" in revoke[0][1]
    assert "deactivate" in revoke[0][1]
    # The loan and the kernel mapping it revoked, net's driver's read, its fault, the panic.
    labels = " | ".join(lbl for _, lbl in chain)
    for what in ("uvm.loan_chunks", "pmap.kenter_chunks", "pmap.kextract_ranges", "uvm.kfault"):
        assert what in labels, what
    assert any("net -> uvm" in tip and "uvm.kfault" in lbl for tip, lbl in chain)
    assert any(lbl.startswith("PANIC ctl.panic") for _, lbl in chain)
    # Highlighted: the chain's lines are drawn in the strong colour, the others are not.
    red = [ln for g in svg.iter(f"{SVG_NS}g") for ln in g.iter(f"{SVG_NS}line")]
    assert {ln.get("stroke") for ln in red if ln.get("stroke") == RED}
    assert all(
        ln.get("stroke") != RED
        for g in svg.iter(f"{SVG_NS}g")
        if g.get("class") == "m"
        for ln in g.iter(f"{SVG_NS}line")
    )
    assert (
        "pdaemon revoked the kernel&#x27;s mapping of page 0 (deactivate) while net&#x27;s"
        " driver still had it loaned; the driver&#x27;s next read faulted" in page
    )
    assert bus.digest() in page
    assert "1. p1: send 16384 B (loaned)" in page
    # Nothing after the panic (the teardown) is drawn.
    assert "ctl.shutdown" not in page
    assert "ctl.halt" not in page


@pytest.mark.timeout(60)
def test_an_ok_run_renders_without_a_chain() -> None:
    out, bus = _scenario("modern")
    assert out.outcome == "ok", out.detail
    page = render_html(Result("ok", out.detail, bus.digest(), record=bus.record), Steps(), "ok")
    svg = _svg(page)
    assert not _groups(svg, "chain")
    assert 'class="caption"' not in page
    assert len(_groups(svg, "m")) > 20
    lanes = [t.text for t in svg.iter(f"{SVG_NS}text") if t.get("class") == "lane"]
    assert lanes[:5] == ["client", "mmu", "uvm", "pdaemon", "net"]
    assert "<script" not in page
    assert "http://" not in page.replace(SVG_NS[1:-1], "")  # no external asset


def _d(t: float, kind: str, ep: str, m: Msg, tail: bytes = b"") -> Delivery:
    return Delivery(t, kind, ep, encode(m) + tail)


def _h(sender: str, msg_id: int, re_: int = 0, inc: int = 7) -> Header:
    return Header(msg_id=msg_id, sender=sender, incarnation=inc, re=re_)


def _loan_record(revoker: str, why: str, *, panic: bool = True) -> list[Delivery]:
    """A hand-made 1999 chain: loan page 24, kenter, revocation, read, fault, panic."""
    uk, mk = "inproc://uvm/kernel", "inproc://mmu/kernel"
    chunks = [(4096, 1)]
    rec = [
        _d(0.001, "req", uk, UvmLoanChunks(h=_h("net", 1), asid=1, owner=5, chunks=chunks)),
        _d(0.002, "rep", uk, UvmLoanChunksReply(h=_h("uvm", 9, 1), pfns=[[24]], errnos=[None])),
        _d(0.003, "req", mk, PmapKenterChunks(h=_h("net", 2), chunks=[(KVA, [24])], prot=1)),
        _d(0.004, "req", mk, PmapPageProtect(h=_h(revoker, 3), pfns=[23, 24], prot=0, why=why)),
        _d(0.005, "req", mk, PmapKextractRanges(h=_h("net", 4), ranges=[(KVA, 1)])),
        _d(0.006, "rep", mk, PmapKextractRangesReply(h=_h("mmu", 1, 4), fault_vas=[KVA])),
        _d(0.007, "req", uk, UvmKfault(h=_h("net", 5), va=KVA, access=1, pfn=24)),
    ]
    if panic:
        err = ErrorReply(h=_h("uvm", 10, 5), status=Status.ERROR, errno=Errno.EPANIC, detail="x")
        rec.append(_d(0.008, "rep", uk, err))
        rec.append(
            _d(
                0.009,
                "evt",
                "inproc://uvm/pub",
                CtlPanic(h=_h("uvm", 11), role="uvm", message="trap"),
            )
        )
    return rec


@pytest.mark.timeout(10)
def test_the_chain_names_whoever_revoked_and_why() -> None:
    rec = _loan_record("uvm", "loan break")
    arrows = arrows_of(rec)
    assert [(a.src, a.dst) for a in arrows[:2]] == [("net", "uvm"), ("uvm", "net")]
    chain = find_chain(arrows, "panic", "trap")
    assert chain is not None
    assert chain.revoker == "uvm"
    assert chain.caption.startswith("uvm revoked the kernel's mapping of page 24 (loan break)")
    assert sorted(set(chain.marks.values())) == [1, 2, 3, 4, 5, 6]
    assert chain.marks[3] == 3  # the page_protect is step 3
    # A revocation before the recording began: the panic text names the revoker.
    msg = "... was revoked by pdaemon: pmap_page_protect(NONE) (page daemon (scan1999): deactivate)"
    chain = find_chain(arrows_of(rec[:3] + rec[4:]), "panic", msg)
    assert chain is not None
    assert chain.revoker == "pdaemon"
    assert "(deactivate)" in chain.caption


@pytest.mark.timeout(10)
def test_text_from_the_run_is_escaped() -> None:
    evil = '<script>alert("x")</script>&'
    rec = [
        _d(0.001, "req", "inproc://uvm/user", UvmOpen(h=_h("client", 1), name=evil), b"t" * 16),
        _d(
            0.002,
            "rep",
            "inproc://uvm/user",
            ErrorReply(h=_h("uvm", 2, 1), status=Status.ERROR, errno=Errno.EINVAL, detail=evil),
        ),
        Delivery(0.003, "req", "inproc://mmu/kernel", b"\xc1\x00garbage"),
    ]
    page = render_html(
        Result("error", evil + "\x00", revoker=evil, record=rec), Steps(evil), "<b>" + evil
    )
    assert "<script" not in page
    assert "\x00" not in page
    assert "<title>&lt;b&gt;&lt;script&gt;alert(&quot;x&quot;)" in page
    svg = _svg(page)  # well formed despite the text
    tips = [tip for tip, _ in _groups(svg, "m")]
    assert any("uvm.open name=" in lbl for _, lbl in _groups(svg, "m"))
    assert any(": None" in t for t in tips)  # the undecodable bytes: a "?" arrow


@pytest.mark.timeout(30)
def test_a_long_run_makes_a_bounded_page() -> None:
    base = _loan_record("pdaemon", "page daemon (scan1999): deactivate", panic=False)
    noise = []
    for i in range(20000):  # the kernel traffic of a long run, between revocation and read
        who = ("uvm", "pdaemon", "net")[i % 3]
        kind = (i // 3) % 3  # 9 kinds of arrow in turn: nothing folds
        m: Msg = (
            PmapPageProtect(h=_h(who, 100 + i), pfns=list(range(i % 50)), prot=1)
            if kind == 0
            else PmapKextractRanges(h=_h(who, 100 + i), ranges=[(KVA + i * 4096, 1)])
            if kind == 1
            else PmapAttrs(h=_h(who, 100 + i), pfns=[i])
        )
        noise.append(_d(0.004 + i * 1e-7, "req", "inproc://mmu/kernel", m))
    rec = base[:4] + noise + base[4:]
    page = render_html(Result("corruption", "x" * 100000, record=rec), Steps(*["s"] * 5000), "long")
    assert len(page) < 250_000
    svg = _svg(page)
    drawn = _groups(svg, "m") + _groups(svg, "chain")
    assert len(drawn) <= MAX_ARROWS + 20
    # loan and its reply, kenter, revocation, read and its reply, fault
    assert len(_groups(svg, "chain")) == 7
    assert "arrows not shown" in page
    shown = select(arrows_of(rec), None, limit=10)
    assert len(shown) == 10


@pytest.mark.timeout(10)
def test_no_record_still_renders() -> None:
    page = render_html(Result("hang", "SimulationDeadlock"), Steps("1. p1: exit"), "hang")
    assert "No messages were recorded" in page
    assert "SimulationDeadlock" in page
