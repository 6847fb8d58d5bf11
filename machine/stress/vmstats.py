"""The machine's VM state as time series: one row per status sample, nemesis windows beside.

What it is: `VmSeries` turns successive `GreenMachine.stats()` dicts (the
`uvm-machine status --json` shape: ``roles -> {counters}``, ``frames``) into
rows of plain numbers, the data behind the VM tab, the report's charts and
``vm.csv``. Pure: no gevent, no I/O except `write_csv`; the sampler (a
greenlet on the Locust master) calls `sample` once a second.

Where each column comes from (the machine's own counters; nothing invented):
  frames by state   ``frames``: free, active, inactive, wired, loaned (frames
                    with a loan count), kernel_owned, swap_used (swpginuse);
                    the states overlap (a wired page may sit on a queue), so
                    they need not add up to ``total``.
  faults/s by kind  uvm: flt_przero (zero-fill), flt_acow (copy-on-write),
                    flt_anon (resident anon remapped), flt_obj (object page
                    mapped), flt_prcopy (object page promoted), fltanget
                    (swap-in), fltget (file read-in), fltamcopy (amap copy),
                    fltpgwait (waited for a busy page), fltnoram (no free
                    frame), kfaults (kernel faults at loan KVA), segv; and
                    ``faults`` (every uvm_fault call).
  paging/s          pageouts = uvm.pageouts (frames evicted to their store,
                    daemon or request); pageins = fltanget + fltget (faults
                    that read a page back); swapouts/swapins = pgswapout /
                    pgswapin (swap slots written/read).
  loans             loans_out = uvm.loans - uvm.unloans (page loans to the
                    kernel not yet ended); loans/s; loan_breaks (cumulative
                    uvm.loanbreaks) and its rate.
  daemon            pdaemon: pdwoke, pdrevs (passes), pdscans (pages
                    examined), pdfreed, pdpageouts as rates; scans and passes
                    cumulative.
  OOM kills         uvm.oomkills, cumulative and per second.

Invariants:
  - ``rows`` grows by exactly one row per `sample`; every row has every key of
    `COLUMNS`, in that order (the CSV header is `COLUMNS`, stable across runs).
  - ``t`` is seconds since the first sample (``clock`` is the caller's raw
    time); samples are expected in increasing ``clock``.
  - A rate is (counter now - counter at the previous sample) / elapsed; it is
    None on the first sample, when either sample lacks the counter (a role
    stopped by the nemesis), when elapsed <= 0, or when the counter went
    backwards (a role restarted). None is an empty CSV cell and a gap in a
    chart, never a made-up zero.
  - A window is (name, start, end, detail) on the caller's clock; end None
    means still in effect. ``nemesis`` of a row names (joined with "+") the
    windows in effect at that sample.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

Value = float | int | str | None

# (column, role, counters summed): rates per second between samples
RATES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("faults_s", "uvm", ("faults",)),
    ("faults_zero_s", "uvm", ("flt_przero",)),
    ("faults_cow_s", "uvm", ("flt_acow",)),
    ("faults_anon_s", "uvm", ("flt_anon",)),
    ("faults_obj_s", "uvm", ("flt_obj",)),
    ("faults_promote_s", "uvm", ("flt_prcopy",)),
    ("faults_swapin_s", "uvm", ("fltanget",)),
    ("faults_filein_s", "uvm", ("fltget",)),
    ("faults_amcopy_s", "uvm", ("fltamcopy",)),
    ("faults_wait_s", "uvm", ("fltpgwait",)),
    ("faults_noram_s", "uvm", ("fltnoram",)),
    ("faults_kernel_s", "uvm", ("kfaults",)),
    ("segv_s", "uvm", ("segv",)),
    ("pageouts_s", "uvm", ("pageouts",)),
    ("pageins_s", "uvm", ("fltanget", "fltget")),
    ("swapouts_s", "uvm", ("pgswapout",)),
    ("swapins_s", "uvm", ("pgswapin",)),
    ("loans_s", "uvm", ("loans",)),
    ("loan_breaks_s", "uvm", ("loanbreaks",)),
    ("pd_wakes_s", "pdaemon", ("pdwoke",)),
    ("pd_passes_s", "pdaemon", ("pdrevs",)),
    ("pd_scans_s", "pdaemon", ("pdscans",)),
    ("pd_freed_s", "pdaemon", ("pdfreed",)),
    ("pd_pageouts_s", "pdaemon", ("pdpageouts",)),
    ("oom_kills_s", "uvm", ("oomkills",)),
)

# (column, key in `frames`)
FRAMES: tuple[tuple[str, str], ...] = (
    ("total", "total"),
    ("free", "free"),
    ("active", "active"),
    ("inactive", "inactive"),
    ("wired", "wired"),
    ("loaned", "loaned"),
    ("kernel_owned", "kernel_owned"),
    ("swap_used", "swpginuse"),
)

# (column, role, counter): cumulative values as they are
LEVELS: tuple[tuple[str, str, str], ...] = (
    ("loan_breaks", "uvm", "loanbreaks"),
    ("scans", "pdaemon", "pdscans"),
    ("passes", "pdaemon", "pdrevs"),
    ("oom_kills", "uvm", "oomkills"),
    ("processes", "uvm", "processes"),
    ("sessions", "uvm", "sessions"),
)

COLUMNS: tuple[str, ...] = (
    "t",
    "clock",
    "nemesis",
    "state",
    *(c for c, _ in FRAMES),
    *(c for c, _, _ in RATES),
    "loans_out",
    *(c for c, _, _ in LEVELS),
)

# the counters a summary totals over the run: (name, role, counter)
TOTALS: tuple[tuple[str, str, str], ...] = (
    ("faults", "uvm", "faults"),
    ("zero_fill", "uvm", "flt_przero"),
    ("cow", "uvm", "flt_acow"),
    ("swap_ins", "uvm", "fltanget"),
    ("file_ins", "uvm", "fltget"),
    ("pageouts", "uvm", "pageouts"),
    ("loans", "uvm", "loans"),
    ("loan_breaks", "uvm", "loanbreaks"),
    ("pd_passes", "pdaemon", "pdrevs"),
    ("pd_scans", "pdaemon", "pdscans"),
    ("oom_kills", "uvm", "oomkills"),
)


@dataclass
class Window:
    """One nemesis fault in effect from `start` to `end` (None: still in effect)."""

    name: str
    start: float
    end: float | None = None
    detail: str = ""

    def covers(self, clock: float) -> bool:
        return self.start <= clock and (self.end is None or clock <= self.end)


def _counter(stats: dict[str, Any], role: str, name: str) -> int | None:
    """A role's counter, or None when the role or the counter is absent."""
    roles = stats.get("roles") or {}
    counters = (roles.get(role) or {}).get("counters") or {}
    v = counters.get(name)
    return int(v) if isinstance(v, int | float) else None


def _sum(stats: dict[str, Any], role: str, names: tuple[str, ...]) -> int | None:
    vals = [_counter(stats, role, n) for n in names]
    return None if any(v is None for v in vals) else sum(v for v in vals if v is not None)


class VmSeries:
    """Samples of the machine's status, as rows of numbers, and the nemesis windows.

    => `sample(clock, stats)` appends one row (see the module doc for columns).
    => `mark(name, start, end, detail)` records a window; marking the same
       (name, start) again updates that window (a fault first marked open,
       end None, then closed).
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        assert interval_s > 0, "interval_s must be positive"
        self.interval_s = interval_s
        self.rows: list[dict[str, Value]] = []
        self.windows: list[Window] = []
        self._t0: float | None = None
        self._prev: tuple[float, dict[str, Any]] | None = None
        self._first: dict[str, Any] | None = None
        self._last: dict[str, Any] | None = None

    # -- input ---------------------------------------------------------------------

    def sample(self, clock: float, stats: dict[str, Any]) -> dict[str, Value]:
        """Append the row for one status sample taken at `clock`; return it."""
        if self._t0 is None:
            self._t0 = clock
            self._first = stats
        row: dict[str, Value] = dict.fromkeys(COLUMNS)
        row["t"] = round(clock - self._t0, 3)
        row["clock"] = clock
        row["nemesis"] = "+".join(w.name for w in self.windows if w.covers(clock))
        row["state"] = str(stats.get("state", ""))
        frames = stats.get("frames") or {}
        for col, key in FRAMES:
            v = frames.get(key)
            row[col] = int(v) if isinstance(v, int | float) else None
        prev = self._prev
        for col, role, names in RATES:
            row[col] = self._rate(prev, clock, stats, role, names)
        loans, unloans = _counter(stats, "uvm", "loans"), _counter(stats, "uvm", "unloans")
        row["loans_out"] = None if loans is None or unloans is None else loans - unloans
        for col, role, name in LEVELS:
            row[col] = _counter(stats, role, name)
        self.rows.append(row)
        self._prev = (clock, stats)
        self._last = stats
        return row

    @staticmethod
    def _rate(
        prev: tuple[float, dict[str, Any]] | None,
        clock: float,
        stats: dict[str, Any],
        role: str,
        names: tuple[str, ...],
    ) -> float | None:
        if prev is None:
            return None
        dt = clock - prev[0]
        now, before = _sum(stats, role, names), _sum(prev[1], role, names)
        if dt <= 0 or now is None or before is None or now < before:
            return None
        return round((now - before) / dt, 3)

    def mark(self, name: str, start: float, end: float | None = None, detail: str = "") -> Window:
        """Record a nemesis window (clock of `sample`); same (name, start) updates it."""
        assert end is None or end >= start, f"window {name} ends before it starts"
        for w in self.windows:
            if w.name == name and w.start == start:
                w.end, w.detail = end, detail or w.detail
                return w
        w = Window(name, start, end, detail)
        self.windows.append(w)
        return w

    # -- output --------------------------------------------------------------------

    def elapsed(self, clock: float) -> float:
        """`clock` as seconds since the first sample (0 before any sample)."""
        return 0.0 if self._t0 is None else clock - self._t0

    def latest(self) -> dict[str, Value] | None:
        return self.rows[-1] if self.rows else None

    def column(self, name: str) -> list[Value]:
        assert name in COLUMNS, f"no column {name}"
        return [r[name] for r in self.rows]

    def frames_end(self) -> dict[str, int]:
        """The last sample's frames by state (empty before any sample)."""
        return dict((self._last or {}).get("frames") or {})

    def totals(self) -> dict[str, int | None]:
        """Counter increases from the first sample to the last (None: counter missing)."""
        out: dict[str, int | None] = {}
        for name, role, counter in TOTALS:
            a = _counter(self._first or {}, role, counter)
            b = _counter(self._last or {}, role, counter)
            out[name] = None if a is None or b is None else b - a
        return out

    def summary(self) -> dict[str, Any]:
        """What summary.json's ``vm`` holds: frames at the end, totals, peaks, windows."""
        peaks: dict[str, float] = {}
        for col in ("faults_s", "pageouts_s", "pageins_s", "loans_out", "pd_scans_s"):
            vals = [v for v in self.column(col) if isinstance(v, int | float)]
            if vals:
                peaks[col] = max(vals)
        return {
            "samples": len(self.rows),
            "frames_end": self.frames_end(),
            "totals": self.totals(),
            "peaks": peaks,
            "windows": [self._window_json(w) for w in self.windows],
        }

    def _window_json(self, w: Window) -> dict[str, Any]:
        d = asdict(w)
        d["t_start"] = round(self.elapsed(w.start), 3)
        d["t_end"] = None if w.end is None else round(self.elapsed(w.end), 3)
        return d

    def _refresh_nemesis(self) -> None:
        """Re-derive each row's ``nemesis`` (a window may be marked or closed after a sample)."""
        for r in self.rows:
            clock = r["clock"]
            assert isinstance(clock, float | int)
            r["nemesis"] = "+".join(w.name for w in self.windows if w.covers(clock))

    def to_json(self) -> dict[str, Any]:
        """The whole series as JSON-ready data: interval, columns, rows, windows."""
        self._refresh_nemesis()
        return {
            "interval_s": self.interval_s,
            "columns": list(COLUMNS),
            "rows": [dict(r) for r in self.rows],
            "windows": [self._window_json(w) for w in self.windows],
        }

    def write_csv(self, path: str | Path) -> None:
        """vm.csv: header `COLUMNS` and one row per sample; None is an empty cell."""
        with open(path, "w", newline="") as f:
            self.to_csv(f)

    def to_csv(self, f: TextIO) -> None:
        """`write_csv`'s content, to an open text stream."""
        self._refresh_nemesis()
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in self.rows:
            w.writerow(["" if r[c] is None else r[c] for c in COLUMNS])
