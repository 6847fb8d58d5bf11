"""VmSeries: rows from synthetic status dicts, rates from counter deltas, windows, vm.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from machine.stress.vmstats import COLUMNS, VmSeries


def status(
    *,
    faults: int = 0,
    przero: int = 0,
    acow: int = 0,
    anget: int = 0,
    get: int = 0,
    pageouts: int = 0,
    loans: int = 0,
    unloans: int = 0,
    breaks: int = 0,
    scans: int = 0,
    revs: int = 0,
    oom: int = 0,
    free: int = 1024,
    pdaemon: bool = True,
) -> dict[str, Any]:
    uvm = {
        "faults": faults,
        "flt_przero": przero,
        "flt_acow": acow,
        "flt_anon": 0,
        "flt_obj": 0,
        "flt_prcopy": 0,
        "fltanget": anget,
        "fltget": get,
        "fltamcopy": 0,
        "fltpgwait": 0,
        "fltnoram": 0,
        "kfaults": 0,
        "segv": 0,
        "pageouts": pageouts,
        "pgswapout": pageouts,
        "pgswapin": anget,
        "loans": loans,
        "unloans": unloans,
        "loanbreaks": breaks,
        "oomkills": oom,
        "processes": 2,
        "sessions": 1,
    }
    roles: dict[str, Any] = {"uvm": {"state": "running", "counters": uvm}}
    if pdaemon:
        roles["pdaemon"] = {
            "state": "running",
            "counters": {
                "pdwoke": revs,
                "pdrevs": revs,
                "pdscans": scans,
                "pdfreed": 0,
                "pdpageouts": 0,
            },
        }
    frames = {
        "total": 1024,
        "free": free,
        "active": 1024 - free,
        "inactive": 0,
        "wired": 0,
        "loaned": loans - unloans,
        "kernel_owned": 1,
        "swpginuse": pageouts,
    }
    return {"roles": roles, "frames": frames, "state": "running", "profile": "modern"}


@pytest.mark.timeout(10)
def test_rates_are_counter_deltas_per_second() -> None:
    s = VmSeries()
    first = s.sample(100.0, status())
    assert first["t"] == 0.0
    assert first["free"] == 1024
    assert first["faults_s"] is None, "no rate without a previous sample"
    row = s.sample(
        102.0,
        status(
            faults=40, przero=30, acow=10, anget=4, get=2, pageouts=8, scans=100, revs=2, free=900
        ),
    )
    assert row["t"] == 2.0
    assert row["faults_s"] == 20.0
    assert row["faults_zero_s"] == 15.0
    assert row["faults_cow_s"] == 5.0
    assert row["faults_swapin_s"] == 2.0
    assert row["faults_filein_s"] == 1.0
    assert row["pageins_s"] == 3.0, "pageins = swap-ins + file read-ins"
    assert row["pageouts_s"] == 4.0
    assert row["swapouts_s"] == 4.0
    assert row["pd_scans_s"] == 50.0
    assert row["pd_passes_s"] == 1.0
    assert row["scans"] == 100
    assert row["passes"] == 2
    assert row["free"] == 900
    assert row["active"] == 124
    assert row["swap_used"] == 8
    assert list(row) == list(COLUMNS)


@pytest.mark.timeout(10)
def test_loans_oom_and_levels() -> None:
    s = VmSeries()
    s.sample(0.0, status(loans=5, unloans=1))
    row = s.sample(0.5, status(loans=25, unloans=5, breaks=3, oom=1))
    assert row["loans_out"] == 20
    assert row["loans_s"] == 40.0
    assert row["loan_breaks_s"] == 6.0
    assert row["loan_breaks"] == 3
    assert row["oom_kills"] == 1
    assert row["oom_kills_s"] == 2.0
    assert s.totals()["loans"] == 20
    assert s.totals()["oom_kills"] == 1
    assert s.summary()["frames_end"]["loaned"] == 20


@pytest.mark.timeout(10)
def test_missing_role_and_reset_give_gaps_not_zeros() -> None:
    s = VmSeries()
    s.sample(0.0, status(scans=50, faults=10))
    stopped = s.sample(1.0, status(scans=60, faults=20, pdaemon=False))
    assert stopped["pd_scans_s"] is None
    assert stopped["scans"] is None
    assert stopped["faults_s"] == 10.0
    back = s.sample(2.0, status(scans=70, faults=5))  # uvm counters went backwards
    assert back["pd_scans_s"] is None, "the previous sample had no pdaemon"
    assert back["faults_s"] is None, "a counter that went backwards is a reset"
    again = s.sample(3.0, status(scans=80, faults=9))
    assert again["pd_scans_s"] == 10.0
    assert again["faults_s"] == 4.0
    assert s.sample(3.0, status(scans=90))["pd_scans_s"] is None, "no elapsed time, no rate"


@pytest.mark.timeout(10)
def test_windows_name_the_faults_in_effect() -> None:
    s = VmSeries()
    s.mark("link-slow", 10.5, 12.5, "1 Mbit/s")
    open_w = s.mark("squeeze", 11.5)
    for t in (10.0, 11.0, 12.0, 13.0):
        s.sample(t, status())
    assert s.column("nemesis") == ["", "link-slow", "link-slow+squeeze", "squeeze"]
    s.mark("squeeze", 11.5, 12.2)  # closed later: same window updated
    assert len(s.windows) == 2
    assert open_w.end == 12.2
    doc = s.to_json()
    assert [r["nemesis"] for r in doc["rows"]] == ["", "link-slow", "link-slow+squeeze", ""]
    assert doc["windows"][0] == {
        "name": "link-slow",
        "start": 10.5,
        "end": 12.5,
        "detail": "1 Mbit/s",
        "t_start": 0.5,
        "t_end": 2.5,
    }
    json.dumps(doc)  # JSON-ready
    with pytest.raises(AssertionError):
        s.mark("bad", 5.0, 4.0)


@pytest.mark.timeout(10)
def test_csv_has_stable_header_and_one_row_per_sample(tmp_path: Path) -> None:
    s = VmSeries()
    s.mark("pdaemon-kick", 1.0, 1.5)
    for t in (0.0, 1.0, 2.0):
        s.sample(t, status(faults=int(t * 10)))
    path = tmp_path / "vm.csv"
    s.write_csv(path)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == COLUMNS
    assert rows[0][:4] == ["t", "clock", "nemesis", "state"]
    assert len(rows) == 4
    col = {name: i for i, name in enumerate(rows[0])}
    assert rows[1][col["faults_s"]] == "", "None is an empty cell"
    assert rows[2][col["faults_s"]] == "10.0"
    assert rows[2][col["nemesis"]] == "pdaemon-kick"
    assert rows[3][col["nemesis"]] == ""
    empty = VmSeries()
    empty.write_csv(tmp_path / "empty.csv")
    assert (tmp_path / "empty.csv").read_text().strip().split(",") == list(COLUMNS)


@pytest.mark.timeout(10)
def test_real_status_shape_fills_every_counter_column() -> None:
    """Every counter named exists in the machine (`status --json` of a booted 4M machine)."""
    real = json.loads((Path(__file__).parent / "data" / "status-4M.json").read_text())
    s = VmSeries()
    s.sample(0.0, real)
    row = s.sample(1.0, real)
    missing = [c for c in COLUMNS if c not in ("nemesis",) and row[c] is None]
    assert missing == [], f"columns with no counter in the machine: {missing}"
    assert row["free"] == real["frames"]["free"]
