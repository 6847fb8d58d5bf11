"""The picture of a failure: a recorded run as a sequence diagram, in one HTML page.

    html = render_html(result, workload, "bug1999: seed 0, run 17")

What the page shows, top to bottom: the title; the outcome and its message; for a failure,
the causal chain in plain words (a caption, then numbered steps); the trace hash; the run's
steps (`workload.steps()`); a legend; and an SVG sequence diagram with one lifeline per
client session and per role (mmu, uvm, pdaemon, net; the supervisor folded away), time
running down (virtual ms on the left), one row per message (machine.explore.sequence
decodes the record, finds the chain and picks the rows). The chain's arrows are drawn thick
and red with their step's number; every other arrow grey (a reply dashed, an event a
diamond, the panic a red diamond). Each arrow is labelled with its tag and key fields (cut to
the arrow's span: labels sit above their arrow, on a white halo, so lifelines never cross
the words); the whole message is in the arrow's tooltip.

Invariants:
  * Standalone: no script, no external asset, inline CSS only.
  * Every text from the run (messages, names, steps, the title) goes through _esc: HTML
    escaped (quotes too) and control characters replaced, so no detail can inject markup.
  * Bounded: at most sequence.MAX_ARROWS rows plus the chain's and one gap row between
    them; labels, the message (4000 chars), steps (200 of 300 chars) and tooltips (800)
    cut: a run of any length makes a page of bounded size (~0.2 MB).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Protocol

from machine.explore.sequence import (
    ROLE_LANES,
    Arrow,
    Chain,
    DeliveryLike,
    arrows_of,
    find_chain,
    fold_clients,
    select,
    short_why,
)
from machine.proto import CtlPanic, Msg


class ResultLike(Protocol):
    """What the page needs of machine.explore.run.RunResult."""

    @property
    def outcome(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def trace_hash(self) -> str: ...
    @property
    def revoker(self) -> str: ...
    @property
    def record(self) -> Sequence[DeliveryLike] | None: ...


class WorkloadLike(Protocol):
    def steps(self) -> list[str]: ...


#: Fields never put in a label (noise, secrets, or long: the tooltip has the message).
_SKIP = frozenset({"owner", "key", "evidence", "details", "counters", "frames", "state", "trace"})
_TIMES = "\u00d7"  # the multiplication sign of "x N" (folded repeats)


# -- words ----------------------------------------------------------------------------------

_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _esc(text: str, limit: int = 0) -> str:
    """Escaped for HTML and inline SVG; control characters replaced; cut to limit chars."""
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return html.escape(_CTRL.sub("?", text), quote=True)


def _prot(bits: int) -> str:
    return (
        "NONE"
        if bits == 0
        else "".join(c if bits & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4)))
    )


def _value(name: str, v: object) -> str:
    if name == "prot" or name == "access":
        return _prot(int(v)) if isinstance(v, int) else str(v)
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:#x}" if name in ("va", "sva", "eva", "kva") or v >= 1 << 32 else str(v)
    if isinstance(v, list | tuple):
        if v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            ints = [int(str(x)) for x in v]
            if ints == list(range(ints[0], ints[0] + len(ints))) and len(ints) > 2:
                return f"[{ints[0]}..{ints[-1]}]"
            return (
                "["
                + ", ".join(_value(name, x) for x in ints[:4])
                + (f", … ({len(ints)})]" if len(ints) > 4 else "]")
            )
        inner = ", ".join(_value(name, x) for x in list(v)[:2])
        return f"[{inner}{', …' if len(v) > 2 else ''}]"
    if isinstance(v, str):
        return repr(v if len(v) <= 40 else v[:39] + "…")
    return type(v).__name__


def label(m: Msg | None) -> str:
    """The message's key fields in a few words (status ok, empty and noisy fields left out)."""
    if m is None:
        return ""
    parts: list[str] = []
    lists: list[str] = []  # lists last: the scalars (prot, why, va) are what a reader needs
    for name in m.__struct_fields__:
        v = getattr(m, name)
        if name == "h" or name in _SKIP or v in (None, "", b"") or (isinstance(v, list) and not v):
            continue
        if name == "status":
            if str(v) != "ok":
                parts.append(str(v))
            continue
        if name == "why":  # "page daemon (scan1999): deactivate": the tooltip has it all
            v = short_why(str(v))
        if name in ("errno", "detail"):
            parts.append(str(v) if name == "errno" else _value(name, v))
            continue
        (lists if isinstance(v, list | tuple) else parts).append(f"{name}={_value(name, v)}")
    return " ".join(parts + lists)


def note_label(note: dict[str, object]) -> str:
    """A role's internal event (a flight recorder's note) in a few words."""
    return " ".join(f"{k}={_value(k, v)}" for k, v in note.items() if k != "what")


# -- drawing --------------------------------------------------------------------------------

LANE_W, LEFT, TOP, ROW, RIGHT = 190, 96, 64, 26, 260
CHAR_W = 6.4  # px per character of the 11px label font (labels are cut to their span)
RED, GREY = "#d0021b", "#777"
_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:22px 0 6px}
.outcome{padding:8px 12px;border-radius:6px;background:#eef3ee}
.outcome.bad{background:#fbeaea}.outcome b{text-transform:uppercase}
.msg{font-family:ui-monospace,monospace;font-size:13px;white-space:pre-wrap;word-break:break-all}
.caption{font-size:18px;font-weight:600;color:#b00020;margin:14px 0 4px}
ol.chain li{margin:2px 0}
ol.steps{font-family:ui-monospace,monospace;font-size:13px;list-style:none;padding-left:0}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:13px}
dt{color:#666}dd{margin:0;font-family:ui-monospace,monospace}
.legend span{display:inline-block;margin-right:18px;font-size:13px}
.key{display:inline-block;width:28px;height:0;vertical-align:middle;margin-right:5px;
 border-top:2px solid #777}
.key.chain{border-top:4px solid #d0021b}.key.rep{border-top:2px dashed #777}
svg text{font-family:system-ui,sans-serif}
svg .lbl{font-size:11px;fill:#333;paint-order:stroke;stroke:#fff;stroke-width:3px}
svg .chain .lbl{fill:#b00020;font-weight:700}
svg .t{font-size:10px;fill:#888;font-family:ui-monospace,monospace}
svg .gap{font-size:11px;fill:#888;font-style:italic}
svg .lane{font-size:14px;font-weight:600}svg .badge{font-size:11px;font-weight:700;fill:#fff}
"""
_LEGEND_CHAIN = (
    '<span><i class="key chain"></i><b style="color:#b00020">red, numbered'
    "</b>: the causal chain (the numbered steps above)</span>"
)
_LEGEND = (
    '<p class="legend">{chain}<span><i class="key"></i>a request</span>'
    '<span><i class="key rep"></i>its reply</span>'
    "<span>&#9670; an event (red: the panic)</span>"
    f"<span>{_TIMES}N: N like messages close together, folded</span>"
    "<span>time runs down (virtual ms, left)</span>"
    "<span>hover an arrow for the whole message</span></p>"
)


def _marker(mid: str, colour: str, size: int) -> str:
    return (
        f'<marker id="{mid}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="{size}" '
        f'markerHeight="{size}" orient="auto-start-reverse">'
        f'<path d="M0,0L10,5L0,10z" fill="{colour}"/></marker>'
    )


def _text(x: float, y: float, words: str, cls: str, anchor: str = "start") -> str:
    """An SVG text; `words` must be escaped already."""
    return f'<text class="{cls}" x="{x}" y="{y}" text-anchor="{anchor}">{words}</text>'


def _lanes(shown: list[Arrow]) -> list[str]:
    seen = [x for a in shown for x in (a.src, a.dst) if x != "*"]
    clients = sorted({x for x in seen if x.startswith("client")}) or ["client"]
    others = [x for x in dict.fromkeys(seen) if x not in ROLE_LANES and x not in clients]
    return [*clients, *ROLE_LANES, *others]


def svg(shown: list[Arrow], time_label: str = "virtual ms") -> str:
    """The sequence diagram of the selected arrows (time runs down, one row per arrow)."""
    lanes = _lanes(shown)
    x = {name: LEFT + LANE_W * k + LANE_W // 2 for k, name in enumerate(lanes)}
    rows: list[str] = []
    y = TOP + 18
    last = -1
    for a in shown:
        if a.pos > last + 1:  # arrows left out: say how many
            rows.append(_text(LEFT, y + 4, f"⋯ {a.pos - last - 1} arrows not shown", "gap"))
            y += ROW
        last = a.pos
        rows.append(_row(a, x, y))
        y += ROW
    height, width = y + 10, LEFT + LANE_W * len(lanes) + RIGHT
    head = [
        f'<line x1="{x[n]}" y1="{TOP}" x2="{x[n]}" y2="{height}" stroke="#bbb" '
        f'stroke-dasharray="4 4"/><rect x="{x[n] - 62}" y="{TOP - 40}" width="124" height="28" '
        f'rx="5" fill="#f3f5f9" stroke="#8a94a6"/>'
        + _text(x[n], TOP - 21, _esc(n, 18), "lane", "middle")
        for n in lanes
    ]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="sequence diagram">'
        f"<defs>{_marker('ah', GREY, 7)}{_marker('ahc', RED, 4)}</defs>"
        + _text(4, TOP - 21, _esc(time_label, 20), "t")
        + "".join(head)
        + "".join(rows)
        + "</svg>"
    )


def _row(a: Arrow, x: dict[str, int], y: int) -> str:
    """One arrow (or an event's diamond) with its label, time and, in the chain, its number."""
    chain = a.mark > 0
    colour, width, head = (RED, 3.5, "ahc") if chain else (GREY, 1.4, "ah")
    said = label(a.msg) if a.note is None else note_label(a.note)
    words = f"{a.tag} {_TIMES}{a.count}" if a.count > 1 else f"{a.tag} {said}".strip()
    what = repr(a.msg) if a.note is None else repr(a.note)
    tip = _esc(f"#{a.index} t={a.t * 1e3:.3f} ms {a.src} -> {a.dst}: {what}", 800)
    out = [f'<g class="{"chain" if chain else "m"}"><title>{tip}</title>']
    out.append(_text(4, y + 4, f"{a.t * 1e3:.3f}", "t"))
    if chain:
        out.append(f'<circle cx="{LEFT - 14}" cy="{y}" r="9" fill="{RED}"/>')
        out.append(_text(LEFT - 14, y + 4, str(a.mark), "badge", "middle"))
    x0 = x.get(a.src, LEFT)
    if a.dst not in x or a.dst == a.src:  # an event: a diamond on its publisher's lifeline
        panic = isinstance(a.msg, CtlPanic)
        out.append(
            f'<path d="M{x0},{y - 7}L{x0 + 7},{y}L{x0},{y + 7}L{x0 - 7},{y}z" '
            f'fill="{RED if panic or chain else "#fff"}" stroke="{colour}" stroke-width="1.5"/>'
        )
        room = int((LANE_W + RIGHT - 20) / CHAR_W)
        out.append(_text(x0 + 12, y + 4, _esc(("PANIC " if panic else "") + words, room), "lbl"))
    else:
        x1 = x[a.dst]
        end = x1 - (3 if x1 > x0 else -3)
        dash = ' stroke-dasharray="6 4"' if a.kind == "rep" else ""
        out.append(
            f'<line x1="{x0}" y1="{y}" x2="{end}" y2="{y}" stroke="{colour}" '
            f'stroke-width="{width}"{dash} marker-end="url(#{head})"/>'
        )
        # A chain arrow's label may spread past its span (few, on a halo): its words matter.
        span = max(abs(x1 - x0), 2 * LANE_W) if chain else abs(x1 - x0)
        room = max(int((span - 12) / (CHAR_W * (1.12 if chain else 1))), 8)
        out.append(_text((x0 + x1) // 2, y - 6, _esc(words, room), "lbl", "middle"))
    out.append("</g>")
    return "".join(out)


def render_html(
    result: ResultLike,
    workload: WorkloadLike,
    title: str,
    *,
    chain: Chain | None = None,
    steps_heading: str = "The run's steps",
    time_label: str = "virtual ms",
    hash_label: str = "trace hash",
) -> str:
    """A standalone HTML page: the outcome, the chain in words, the steps, the diagram.
    `chain`: the arrows to mark (default: find_chain's, from the outcome and message)."""
    record = result.record or []
    arrows = arrows_of(record)
    if chain is None:
        chain = find_chain(arrows, result.outcome, result.message)
    fold_clients(arrows, chain)
    shown = select(arrows, chain)
    bad = " bad" if result.outcome != "ok" else ""
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title, 200)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_esc(title, 200)}</h1>",
        f'<p class="outcome{bad}"><b>{_esc(result.outcome, 40)}</b> '
        f'<span class="msg">{_esc(result.message, 4000)}</span></p>',
    ]
    if chain is not None:
        parts.append(f'<p class="caption">{_esc(chain.caption, 600)}</p><ol class="chain">')
        parts += [f"<li>{_esc(s, 400)}</li>" for s in chain.steps]
        parts.append("</ol>")
    revoker = result.revoker or (chain.revoker if chain is not None else "")
    facts = [(hash_label, result.trace_hash), ("deliveries", str(len(record)))]
    facts += [("revoker", revoker)] if revoker else []
    parts.append("<dl>" + "".join(f"<dt>{k}</dt><dd>{_esc(v, 200)}</dd>" for k, v in facts))
    steps = workload.steps()
    parts.append(f'</dl><h2>{_esc(steps_heading, 80)}</h2><ol class="steps">')
    parts += [f"<li>{_esc(s, 300)}</li>" for s in steps[:200]]
    if len(steps) > 200:
        parts.append(f"<li>… {len(steps) - 200} more</li>")
    heading = "The messages that led there" if chain is not None else "The last messages"
    legend = _LEGEND.replace("{chain}", _LEGEND_CHAIN if chain is not None else "")
    legend = legend.replace("(virtual ms, left)", f"({_esc(time_label, 20)}, left)")
    parts.append(f"</ol><h2>{heading}</h2>{legend}")
    if shown:
        parts.append(svg(shown, time_label))
    else:
        parts.append("<p>No messages were recorded for this run (replay it to record them).</p>")
    parts.append("</body></html>")
    return "".join(parts)
