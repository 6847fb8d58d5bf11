"""charts.render: one SVG per chart, N points drawn, windows shaded, 'no data' when empty."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from machine.stress.charts import CHARTS, inject_report, render, render_chart
from machine.stress.vmstats import VmSeries
from tests.stress.test_vmstats import status

SVG = "{http://www.w3.org/2000/svg}"


def svgs(fragment: str) -> list[ET.Element]:
    """The fragment's charts, parsed as XML (so the markup is well formed)."""
    found = re.findall(r"<svg .*?</svg>", fragment, re.S)
    return [ET.fromstring(s) for s in found]


def series(n: int) -> VmSeries:
    s = VmSeries()
    for i in range(n):
        s.sample(1000.0 + i, status(faults=i * i, przero=i * i, scans=10 * i, free=1024 - i % 1000))
    return s


@pytest.mark.timeout(10)
def test_every_chart_drawn_with_n_points() -> None:
    charts = svgs(render(series(12)))
    assert [c.get("data-chart") for c in charts] == [c.key for c in CHARTS]
    for c in charts:
        assert c.get("class") == "vm-chart"
        assert c.get("data-points") == "12"
    frames = charts[0]
    free = frames.find(f".//{SVG}path[@data-column='free']")
    assert free is not None
    assert len(re.findall(r"[ML]", free.get("d", ""))) == 12, "one vertex per sample"
    faults = charts[1]
    zero = faults.find(f".//{SVG}path[@data-column='faults_zero_s']")
    assert zero is not None, "a fault kind that occurred is drawn"
    # first sample has no rate: the line starts at the second sample
    assert len(re.findall(r"[ML]", zero.get("d", ""))) == 11
    assert faults.find(f".//{SVG}path[@data-column='faults_noram_s']") is None, "zero kinds hidden"
    texts = "".join(t.text or "" for t in frames.iter(f"{SVG}text"))
    assert "free: 1013" in texts, "the legend shows the last value"
    assert "10s" in texts, "the x axis is labelled in seconds"


@pytest.mark.timeout(10)
def test_gaps_are_not_drawn_as_zero() -> None:
    s = VmSeries()
    s.sample(0.0, status(scans=0))
    s.sample(1.0, status(scans=10))
    s.sample(2.0, status(pdaemon=False))
    s.sample(3.0, status(scans=30))
    s.sample(4.0, status(scans=40))
    daemon = svgs(render_chart(next(c for c in CHARTS if c.key == "daemon"), s))[0]
    path = daemon.find(f".//{SVG}path[@data-column='pd_scans_s']")
    assert path is not None
    assert path.get("d", "").count("M") == 2, "the stopped role is a gap between two runs"


@pytest.mark.timeout(10)
def test_windows_shaded_with_their_name() -> None:
    s = series(20)
    s.mark("link-slow", 1005.0, 1010.0, "latency 5ms")
    s.mark("squeeze", 1015.0)  # still in effect
    s.mark("<b>", 5000.0, 5001.0)  # outside the run: not drawn
    frag = render(s)
    for chart in svgs(frag):
        shades = chart.findall(f".//{SVG}g[@class='vm-nemesis']")
        assert [g.get("data-name") for g in shades] == ["link-slow", "squeeze"]
        rect = shades[0].find(f"{SVG}rect")
        assert rect is not None
        assert float(rect.get("width", "0")) > 50
    assert "<b>" not in frag


@pytest.mark.timeout(10)
def test_empty_series_says_no_data() -> None:
    frag = render(VmSeries())
    charts = svgs(frag)
    assert len(charts) == len(CHARTS)
    assert all(c.get("data-points") == "0" for c in charts)
    assert frag.count("no data yet") == len(CHARTS)


@pytest.mark.timeout(10)
def test_one_sample_and_long_runs() -> None:
    one = svgs(render(series(1)))
    assert one[0].get("data-points") == "1"
    long = svgs(render(series(2000), max_points=500))
    assert all(250 < int(c.get("data-points", "0")) <= 500 for c in long)
    texts = "".join(t.text or "" for t in long[0].iter(f"{SVG}text"))
    assert "free: 25" in texts, "the last sample is kept when strided"
    assert "5:00" in texts, "minutes:seconds on long runs"
    assert "30:00" in texts


@pytest.mark.timeout(10)
def test_inject_report_puts_charts_before_body_once(tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    report.write_text("<html><head></head><body><div id='root'></div></body></html>")
    s = series(5)
    s.mark("squeeze", 1001.0, 1003.0)
    inject_report(report, s)
    html = report.read_text()
    assert html.index('<section id="vm-report"') < html.index("</body>")
    assert html.endswith("</body></html>")
    assert len(svgs(html)) == len(CHARTS)
    assert 'data-name="squeeze"' in html
    inject_report(report, series(7))  # after a longer run: replaced, not added
    html = report.read_text()
    assert html.count('id="vm-report"') == 1
    assert {c.get("data-points") for c in svgs(html)} == {"7"}


@pytest.mark.timeout(10)
def test_close_window_labels_do_not_overlap() -> None:
    s = series(60)
    s.mark("pdaemon-kick", 1000.0, 1003.0)
    s.mark("squeeze", 1004.0, 1008.0)  # starts ~40 px later: its label goes a row down
    s.mark("link-slow", 1030.0, 1033.0)  # far away: back on the first row
    chart = svgs(render(s))[0]
    ys = {
        g.get("data-name"): g.find(f"{SVG}text").get("y")  # type: ignore[union-attr]
        for g in chart.findall(f".//{SVG}g[@class='vm-nemesis']")
    }
    assert ys["pdaemon-kick"] != ys["squeeze"]
    assert ys["link-slow"] == ys["pdaemon-kick"]
