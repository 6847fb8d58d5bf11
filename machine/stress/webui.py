"""The VM tab in Locust's web UI, and the VM charts in Locust's HTML report.

`install(environment, series)` (on the Locust master or local runner, once
``environment.web_ui`` exists, e.g. in the ``init`` event) adds:
  - a "VM" tab through Locust's own extension points: ``extendedTabs`` (the
    tab), ``extendedTables`` (its table: metric, value) fed by
    ``extendedStats`` that an ``after_request`` hook adds to every
    /stats/requests reply (the latest sample), and ``extendedCsvFiles`` (a
    "Download VM metrics CSV" link under Download Data);
  - routes of our own: /vm (a standalone page of the charts, refreshed each
    second), /vm/charts (the charts as an HTML fragment), /vm/series.json
    (`VmSeries.to_json`), /vm/csv (`VmSeries.write_csv`'s content);
  - a small script, injected into the index page (an ``after_request`` hook on
    Locust's index), that puts the live charts above the tab's table while the
    VM tab is shown (Locust's extended tabs render tables only): it fetches
    /vm/charts once a second into a div of its own and removes the div when
    another tab is chosen.
`inject_report(html_path, series)` (defined in machine.stress.charts, pure, so
tests need not import Locust) puts the same charts, static, into the --html
report after the run (before ``</body>``; a second call replaces them).

Invariants: the routes read the series, never change it (the sampler greenlet
is its only writer; one gevent hub, so a request sees whole rows); every route
honours --web-login (``auth_required_if_enabled``) and --web-base-path; the
index and /stats/requests replies stay Locust's own plus our additions.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from flask import Response, request
from locust.env import Environment

from machine.stress.charts import STYLE, before_body, inject_report, render
from machine.stress.vmstats import VmSeries

__all__ = ["TAB", "inject_report", "install", "table_rows"]

TAB = "vm"

# (label, column) of the VM tab's table, with the nemesis in effect first
TABLE: tuple[tuple[str, str], ...] = (
    ("nemesis in effect", "nemesis"),
    ("frames free", "free"),
    ("frames active", "active"),
    ("frames inactive", "inactive"),
    ("frames wired", "wired"),
    ("frames loaned", "loaned"),
    ("frames kernel", "kernel_owned"),
    ("swap pages used", "swap_used"),
    ("faults/s", "faults_s"),
    ("zero-fill faults/s", "faults_zero_s"),
    ("cow faults/s", "faults_cow_s"),
    ("pageouts/s", "pageouts_s"),
    ("pageins/s", "pageins_s"),
    ("loans outstanding", "loans_out"),
    ("loan breaks", "loan_breaks"),
    ("daemon scans/s", "pd_scans_s"),
    ("daemon passes", "passes"),
    ("OOM kills", "oom_kills"),
    ("processes", "processes"),
    ("sessions", "sessions"),
)

# Runs in Locust's index page: charts above the VM tab's table while that tab is shown.
TAB_SCRIPT = """<script id="vm-tab-script">(function () {
  var base = %(base)s, box = null, busy = false;
  function shown() { return new URLSearchParams(location.search).get("tab") === %(tab)s; }
  function place() {
    var table = document.querySelector("main table") || document.querySelector("table");
    if (!table) { return false; }
    var c = table.closest(".MuiTableContainer-root") || table.parentNode;
    c.parentNode.insertBefore(box, c);
    return true;
  }
  function tick() {
    if (!shown()) { if (box && box.parentNode) { box.parentNode.removeChild(box); } return; }
    if (!box) {
      box = document.createElement("div"); box.id = "vm-tab-charts";
      box.style.marginBottom = "16px";
    }
    if (!box.isConnected && !place()) { return; }
    if (busy) { return; }
    busy = true;
    fetch(base + "vm/charts", {cache: "no-store"}).then(function (r) { return r.text(); })
      .then(function (h) { box.innerHTML = h; }).finally(function () { busy = false; });
  }
  tick(); setInterval(tick, %(every)d);
})();</script>"""

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>uvm-machine: VM</title>
%(style)s</head><body style="font-family:sans-serif;margin:12px">
<h2 style="margin:0 0 8px">VM metrics <small id="vm-samples">%(n)d samples</small></h2>
<div id="vm-root">%(charts)s</div>
<script>setInterval(function () {
  fetch("charts", {cache: "no-store"}).then(function (r) { return r.text(); })
    .then(function (h) { document.getElementById("vm-root").innerHTML = h; });
}, %(every)d);</script></body></html>"""


def table_rows(series: VmSeries) -> list[dict[str, str]]:
    """The VM tab's table: the latest sample as (metric, value) rows."""
    row = series.latest()
    if row is None:
        return [{"metric": "samples", "value": "0 (no data yet)"}]
    out = [{"metric": "samples", "value": str(len(series.rows))}]
    for label, col in TABLE:
        v = row[col]
        out.append({"metric": label, "value": "" if v is None else str(v) or "none"})
    return out


def _csv(series: VmSeries) -> str:
    buf = io.StringIO()
    series.to_csv(buf)
    return buf.getvalue()


def _base_path(environment: Environment) -> str:
    """Locust's --web-base-path, as a prefix ending in "/" ("/" when none)."""
    base = getattr(environment.parsed_options, "web_base_path", None) or ""
    return "/" + base.strip("/") + "/" if base.strip("/") else "/"


def install(environment: Environment, series: VmSeries, *, refresh_ms: int = 1000) -> bool:
    """Add the VM tab and routes to the web UI; False (nothing done) when there is none."""
    web_ui = environment.web_ui
    if web_ui is None or web_ui.app is None:
        return False
    app, args, base = web_ui.app, web_ui.template_args, _base_path(environment)
    args["extendedTabs"] = [*args.get("extendedTabs", []), {"title": "VM", "key": TAB}]
    args["extendedTables"] = [
        *args.get("extendedTables", []),
        {
            "key": TAB,
            "structure": [{"key": "metric", "title": "Metric"}, {"key": "value", "title": "Value"}],
        },
    ]
    args["extendedCsvFiles"] = [
        *args.get("extendedCsvFiles", []),
        {"href": f"{base}vm/csv", "title": "Download VM metrics CSV"},
    ]
    auth: Callable[[Callable[[], Any]], Callable[[], Any]] = web_ui.auth_required_if_enabled

    def vm_page() -> str:
        return PAGE % {
            "style": STYLE,
            "n": len(series.rows),
            "charts": render(series),
            "every": refresh_ms,
        }

    def vm_charts() -> str:
        return render(series)

    def vm_json() -> Response:
        return Response(json.dumps(series.to_json()), mimetype="application/json")

    def vm_csv() -> Response:
        return Response(
            _csv(series),
            mimetype="text/csv",
            headers={"Content-Disposition": "attachment;filename=vm.csv"},
        )

    # /vm redirects to /vm/ (Flask's strict slashes), where the page's "charts" is /vm/charts
    app.add_url_rule(f"{base}vm/", "vm_page", auth(vm_page))
    app.add_url_rule(f"{base}vm/charts", "vm_charts", auth(vm_charts))
    app.add_url_rule(f"{base}vm/series.json", "vm_series", auth(vm_json))
    app.add_url_rule(f"{base}vm/csv", "vm_csv", auth(vm_csv))
    script = TAB_SCRIPT % {"base": json.dumps(base), "tab": json.dumps(TAB), "every": refresh_ms}

    @app.after_request
    def vm_extend(response: Response) -> Response:
        if request.endpoint == "locust.request_stats" and response.is_json:
            data: dict[str, Any] = response.get_json()
            data["extendedStats"] = [{"key": TAB, "data": table_rows(series)}]
            response.set_data(json.dumps(data))
        elif request.endpoint == "locust.index" and response.mimetype == "text/html":
            html = response.get_data(as_text=True)
            if "vm-tab-script" not in html:
                response.set_data(before_body(html, script))
        return response

    return True
