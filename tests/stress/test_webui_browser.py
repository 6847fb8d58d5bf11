"""The VM tab in a real browser: headless Chromium loads Locust's web UI during a run
against a real machine and finds the tab, its table and the charts drawn with data.

Locust (and gevent) run in a subprocess (`python -m locust -f machine/stress/locustfile.py`,
the harness itself: one pattern user, the pdaemon-kick nemesis); this process only
talks HTTP to it and runs Chromium.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from machine.stress.vmstats import COLUMNS
from tests.conftest import PY, boot_real

REPO = Path(__file__).resolve().parents[2]

#: The harness's own locustfile: its controller samples the machine for the VM tab.
LOCUSTFILE = REPO / "machine" / "stress" / "locustfile.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()  # type: ignore[no-any-return]


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium not found on PATH: the VM tab is checked in a real browser; "
            "the test set-up installs Debian's chromium (apt-get install chromium)"
        )
    return path


def dump_dom(browser: str, url: str, profile: Path) -> str:
    r = subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=8000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, f"chromium failed: {r.stderr[-2000:]}"
    return r.stdout


def charts_in(html: str) -> dict[str, int]:
    """data-chart -> data-points of every svg.vm-chart in `html`."""
    out = {}
    for tag in re.findall(r'<svg [^>]*class="vm-chart"[^>]*>', html):
        key = re.search(r'data-chart="([^"]+)"', tag)
        n = re.search(r'data-points="(\d+)"', tag)
        assert key is not None
        assert n is not None
        out[key.group(1)] = int(n.group(1))
    return out


def wait_for_samples(base: str, locust: subprocess.Popen[str], n: int, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        assert locust.poll() is None, f"locust exited: {locust.communicate()[1][-3000:]}"
        try:
            last = json.loads(get(f"{base}/vm/series.json"))
            if len(last["rows"]) >= n:
                return last
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"the web UI had no {n} VM samples within {timeout_s}s: {last}")


@pytest.mark.timeout(120)
def test_vm_tab_shows_live_charts_in_chromium(tmp_path: Path) -> None:
    browser = chromium()
    m = boot_real(tmp_path / "state", "--ram", "4M")
    locust: subprocess.Popen[str] | None = None
    try:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        locust = subprocess.Popen(
            [
                PY,
                "-m",
                "locust",
                "-f",
                str(LOCUSTFILE),
                "--host",
                m.endpoint,
                "--mix",
                "pattern=1",
                "--nemesis",
                "pdaemon-kick",
                "--nemesis-period",
                "2",
                "--uvm-state",
                str(tmp_path / "state"),
                "--autostart",
                "--run-time",
                "60s",
                "--web-host",
                "127.0.0.1",
                "--web-port",
                str(port),
                "-u",
                "1",
                "-r",
                "1",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        series = wait_for_samples(base, locust, 3, timeout_s=30)
        assert series["rows"][-1]["total"] == 1024, "4M of RAM is 1024 frames"

        # Locust's own extension points: the table's data on /stats/requests, the CSV
        stats = json.loads(get(f"{base}/stats/requests"))
        (vm,) = [e for e in stats["extendedStats"] if e["key"] == "vm"]
        table = {r["metric"]: r["value"] for r in vm["data"]}
        assert int(table["frames free"]) > 0
        assert int(table["samples"]) >= 3
        csv_head = get(f"{base}/vm/csv").decode().splitlines()[0]
        assert csv_head.split(",") == list(COLUMNS)

        # the VM tab in the browser: selected, its table, the charts drawn with data
        dom = dump_dom(browser, f"{base}/?tab=vm", tmp_path / "chrome")
        tabs = {
            re.sub(r"<[^>]+>", "", label).strip(): selected == "true"
            for selected, label in re.findall(
                r'role="tab" aria-selected="(\w+)">(.*?)</button>', dom, re.S
            )
        }
        assert tabs.get("VM") is True, f"no selected VM tab among {tabs}"
        assert "Statistics" in tabs, "Locust's own tabs are still there"
        assert "frames free" in dom, "the VM tab's table"
        assert 'id="vm-tab-charts"' in dom, "the live charts were not put into the VM tab"
        box = dom[dom.index('id="vm-tab-charts"') :]
        charts = charts_in(box)
        assert set(charts) >= {"frames", "faults", "paging", "loans", "daemon"}, charts
        assert all(n > 0 for n in charts.values()), f"charts without data: {charts}"
        assert 'data-name="pdaemon-kick"' in box, "the nemesis window is shaded"

        # the standalone page the tab's charts come from
        page = dump_dom(browser, f"{base}/vm", tmp_path / "chrome")
        assert all(n > 0 for n in charts_in(page).values())
        assert len(charts_in(page)) == len(charts)
    finally:
        if locust is not None:
            locust.send_signal(signal.SIGTERM)
            try:
                locust.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                locust.kill()
                locust.communicate(timeout=5)
        assert m.stop() == 0
