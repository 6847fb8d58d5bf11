"""SVG line charts of a VmSeries, nemesis windows shaded: the VM tab's and the report's.

`render(series)` returns one HTML fragment (a style block and a div of inline
``<svg>`` charts) with no external asset: the machine may have no network, and
the same fragment goes into the live tab, the /vm page and report.html
(`inject_report(html_path, series)`: the charts before the report's
``</body>``, between markers, so a second call replaces the first).

The charts (`CHARTS`): frames by state; faults/s by kind; paging/s; loans; the
page daemon's pages/s (scanned, paged out, freed); its passes and the OOM kills
(apart: a few per second beside hundreds would draw flat). Each is
``<svg class="vm-chart" data-chart=KEY data-points=N>`` where N is the number
of samples drawn (0: the series is empty, and the chart says "no data yet"
instead of raising).

Invariants:
  - pure: a function of the series' rows and windows, nothing else (no clock);
  - a None value (a rate with no previous sample, a role stopped) is a gap in
    its line, never drawn as zero;
  - the x axis is seconds since the first sample, from 0 to the last sample
    (at least one interval); windows are clipped to it, an open window (end
    None) runs to the last sample;
  - at most `max_points` samples per line (evenly strided, the last kept), so
    an hour-long run stays a small page;
  - every text from outside (window names, details) is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path

from machine.stress.vmstats import Value, VmSeries, Window

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#637939",
    "#843c39",
)
SHADES = ("#f4a261", "#e76f51", "#2a9d8f", "#8ecae6", "#b5838d", "#cdb4db")


@dataclass(frozen=True)
class Chart:
    """One chart: its key, title, y unit and (column, label) lines."""

    key: str
    title: str
    unit: str
    lines: tuple[tuple[str, str], ...]
    hide_zero: bool = False  # leave out lines that are zero or empty all run long


CHARTS: tuple[Chart, ...] = (
    Chart(
        "frames",
        "Frames by state",
        "frames",
        (
            ("free", "free"),
            ("active", "active"),
            ("inactive", "inactive"),
            ("wired", "wired"),
            ("loaned", "loaned"),
            ("kernel_owned", "kernel"),
            ("swap_used", "swap used"),
        ),
    ),
    Chart(
        "faults",
        "Faults/s by kind",
        "/s",
        (
            ("faults_s", "all"),
            ("faults_zero_s", "zero-fill"),
            ("faults_cow_s", "cow"),
            ("faults_anon_s", "anon"),
            ("faults_obj_s", "object"),
            ("faults_promote_s", "promote"),
            ("faults_swapin_s", "swap-in"),
            ("faults_filein_s", "file-in"),
            ("faults_amcopy_s", "amap copy"),
            ("faults_wait_s", "busy wait"),
            ("faults_noram_s", "no RAM"),
            ("faults_kernel_s", "kernel"),
            ("segv_s", "segv"),
        ),
        hide_zero=True,
    ),
    Chart(
        "paging",
        "Paging/s",
        "pages/s",
        (
            ("pageouts_s", "pageouts"),
            ("pageins_s", "pageins"),
            ("swapouts_s", "swap writes"),
            ("swapins_s", "swap reads"),
        ),
    ),
    Chart(
        "loans",
        "Loans",
        "pages, /s",
        (
            ("loans_out", "outstanding"),
            ("loans_s", "loans/s"),
            ("loan_breaks_s", "breaks/s"),
        ),
    ),
    Chart(
        "daemon",
        "Page daemon: pages/s",
        "pages/s",
        (
            ("pd_scans_s", "scanned"),
            ("pd_pageouts_s", "paged out"),
            ("pd_freed_s", "freed"),
        ),
    ),
    Chart(
        "passes",
        "Daemon passes, OOM kills",
        "/s, count",
        (
            ("pd_passes_s", "passes/s"),
            ("pd_wakes_s", "wakeups/s"),
            ("oom_kills", "OOM kills"),
        ),
    ),
)

STYLE = (
    "<style>.vm-charts{display:flex;flex-wrap:wrap;gap:12px;font-family:sans-serif}"
    ".vm-chart{background:#fff;border:1px solid #ddd;border-radius:4px}"
    ".vm-chart text{font-size:11px;fill:#333}.vm-chart .vm-title{font-size:13px;font-weight:bold}"
    ".vm-chart .vm-grid{stroke:#eee}.vm-chart .vm-axis{stroke:#999}</style>"
)

MARK_BEGIN, MARK_END = "<!-- vm-report -->", "<!-- /vm-report -->"
W, H = 600, 240  # the svg's size; the plot area is inset by the margins below
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 26, 30
LEGEND_COLS, LEGEND_ROW = 4, 16
LABEL_LEVELS, LABEL_CHAR_PX = 3, 6.2  # nemesis labels: rows, width of a character


def render(series: VmSeries, *, max_points: int = 900) -> str:
    """Every chart of `CHARTS` for `series`, as one HTML fragment."""
    assert max_points >= 2, "max_points must keep the first and the last sample"
    body = "".join(render_chart(c, series, max_points=max_points) for c in CHARTS)
    return f'{STYLE}<div class="vm-charts">{body}</div>'


def _nice(x: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is >= x (x > 0)."""
    p = 10.0 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if m * p >= x:
            return m * p
    return 10 * p


def _x_step(tmax: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if tmax / step <= 8:
            return step
    return _nice(tmax / 8)


def _fmt_t(t: float) -> str:
    return f"{int(t) // 60}:{int(t) % 60:02d}" if t >= 120 else f"{t:g}s"


def _fmt_v(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.3g}"


def _strided(n: int, max_points: int) -> list[int]:
    """Indices of the samples drawn: every one, or an even stride that keeps the last."""
    if n <= max_points:
        return list(range(n))
    stride = math.ceil((n - 1) / (max_points - 1))
    idx = list(range(0, n, stride))
    if idx[-1] != n - 1:
        idx.append(n - 1)
    return idx


def _num(v: Value) -> float | None:
    return float(v) if isinstance(v, int | float) else None


def render_chart(chart: Chart, series: VmSeries, *, max_points: int = 900) -> str:
    """One `<svg class="vm-chart">` for `chart` (a "no data yet" chart when empty)."""
    rows = [series.rows[i] for i in _strided(len(series.rows), max_points)]
    lines = [
        (col, label)
        for col, label in chart.lines
        if not chart.hide_zero or col == chart.lines[0][0] or any(_num(r[col]) for r in rows)
    ]
    nleg = math.ceil(len(lines) / LEGEND_COLS)
    height = H + nleg * LEGEND_ROW
    head = (
        f'<svg class="vm-chart" xmlns="http://www.w3.org/2000/svg" data-chart="{chart.key}" '
        f'data-points="{len(rows)}" width="{W}" height="{height}" viewBox="0 0 {W} {height}">'
        f'<text class="vm-title" x="{LEFT}" y="16">{escape(chart.title)}</text>'
        f'<text x="{W - RIGHT}" y="16" text-anchor="end">{escape(chart.unit)}</text>'
    )
    if not rows:
        return (
            f'{head}<text class="vm-nodata" x="{W / 2}" y="{H / 2}" text-anchor="middle">'
            "no data yet</text></svg>"
        )
    px0, px1, py0, py1 = LEFT, W - RIGHT, TOP, H - BOTTOM
    ts = [_num(r["t"]) or 0.0 for r in rows]
    tmax = max(ts[-1], series.interval_s)
    vals = [v for col, _ in lines for r in rows if (v := _num(r[col])) is not None]
    ymax = _nice(max(vals)) if vals and max(vals) > 0 else 1.0

    def x(t: float) -> float:
        return px0 + (px1 - px0) * min(max(t, 0.0), tmax) / tmax

    def y(v: float) -> float:
        return py1 - (py1 - py0) * v / ymax

    out = [head]
    out += _shading(series, series.windows, x, py0, py1, tmax)
    for i in range(5):  # y grid and labels
        v = ymax * i / 4
        out.append(
            f'<line class="vm-grid" x1="{px0}" x2="{px1}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
            f'<text x="{px0 - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{_fmt_v(v)}</text>'
        )
    step = _x_step(tmax)
    k = 0
    while k * step <= tmax + 1e-9:  # x ticks and labels
        xt = x(k * step)
        out.append(
            f'<line class="vm-axis" x1="{xt:.1f}" x2="{xt:.1f}" y1="{py1}" y2="{py1 + 4}"/>'
            f'<text x="{xt:.1f}" y="{py1 + 16}" text-anchor="middle">{_fmt_t(k * step)}</text>'
        )
        k += 1
    out.append(
        f'<line class="vm-axis" x1="{px0}" x2="{px1}" y1="{py1}" y2="{py1}"/>'
        f'<line class="vm-axis" x1="{px0}" x2="{px0}" y1="{py0}" y2="{py1}"/>'
    )
    for n, (col, label) in enumerate(lines):
        color = PALETTE[n % len(PALETTE)]
        d, pen = [], "M"
        last: float | None = None
        for t, r in zip(ts, rows, strict=True):
            v = _num(r[col])
            if v is None:
                pen = "M"
                continue
            d.append(f"{pen}{x(t):.1f},{y(v):.1f}")
            pen, last = "L", v
        if d:
            out.append(
                f'<path d="{" ".join(d)}" fill="none" stroke="{color}" stroke-width="1.5" '
                f'data-column="{col}"><title>{escape(label)}</title></path>'
            )
        lx = px0 + (n % LEGEND_COLS) * ((px1 - px0) / LEGEND_COLS)
        ly = H + (n // LEGEND_COLS) * LEGEND_ROW - 4
        shown = "-" if last is None else _fmt_v(last)
        out.append(
            f'<rect x="{lx:.1f}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
            f'<text x="{lx + 14:.1f}" y="{ly}">{escape(label)}: {shown}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _shading(
    series: VmSeries,
    windows: list[Window],
    x: Callable[[float], float],
    py0: float,
    py1: float,
    tmax: float,
) -> list[str]:
    """A translucent band with its name for each window that meets [0, tmax]."""
    out = []
    names = sorted({w.name for w in windows})
    ends = [-1e9] * LABEL_LEVELS  # right end of the last label on each row
    for w in sorted(windows, key=lambda w: w.start):
        t0 = series.elapsed(w.start)
        t1 = tmax if w.end is None else series.elapsed(w.end)
        if t1 < 0 or t0 > tmax:
            continue
        x0, x1 = x(t0), x(t1)
        shade = SHADES[names.index(w.name) % len(SHADES)]
        tip = escape(f"{w.name} {w.detail}".strip())
        # the first label row where this name does not run into the one before it
        level = next((i for i, e in enumerate(ends) if x0 >= e), ends.index(min(ends)))
        ends[level] = x0 + 2 + LABEL_CHAR_PX * len(w.name) + 4
        out.append(
            f'<g class="vm-nemesis" data-name="{escape(w.name)}">'
            f'<rect x="{x0:.1f}" y="{py0}" width="{max(x1 - x0, 1.0):.1f}" height="{py1 - py0}" '
            f'fill="{shade}" fill-opacity="0.25"><title>{tip}</title></rect>'
            f'<text x="{x0 + 2:.1f}" y="{py0 + 10 + 11 * level}">{escape(w.name)}</text></g>'
        )
    return out


def before_body(html: str, insert: str) -> str:
    """`insert` just before the last ``</body>`` (appended when there is none)."""
    at = html.rfind("</body>")
    return html + insert if at < 0 else html[:at] + insert + html[at:]


def report_section(series: VmSeries) -> str:
    """The report's VM section: a heading, the samples and windows counts, the charts."""
    return (
        f'{MARK_BEGIN}<section id="vm-report" style="padding:16px;font-family:sans-serif">'
        f"<h2>VM metrics</h2><p>{len(series.rows)} samples, every {series.interval_s:g} s; "
        f"{len(series.windows)} nemesis windows (shaded).</p>{render(series)}</section>{MARK_END}"
    )


def inject_report(html_path: str | Path, series: VmSeries) -> None:
    """Put the VM charts into Locust's --html report (replacing any put there before)."""
    path = Path(html_path)
    html = path.read_text()
    a, b = html.find(MARK_BEGIN), html.find(MARK_END)
    if a >= 0 and b > a:
        html = html[:a] + html[b + len(MARK_END) :]
    path.write_text(before_body(html, report_section(series)))
