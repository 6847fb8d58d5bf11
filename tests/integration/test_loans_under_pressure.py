"""Zero-copy sends over real processes while other clients keep the page daemon busy, under
the default profile (modern): no panic, every payload on the wire is what its sender's
memory held at send, and every frame is accounted for when the clients are gone."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PY, boot_real, status_json
from tests.integration.test_pressure import _audit

pytestmark = pytest.mark.integration


def _client(endpoint: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, "-m", "clients", *args, "--endpoint", endpoint],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_senders_loan_while_the_page_daemon_reclaims(tmp_path: Path) -> None:
    rm = boot_real(tmp_path / "state", "--ram", "16M", "--swap", "128M")
    try:
        senders = [
            _client(rm.endpoint, "sender", "--sends", "60", "--seed", "1"),
            _client(rm.endpoint, "sender", "--sends", "60", "--seed", "2", "--pages", "512"),
            _client(rm.endpoint, "sender", "--sends", "60", "--seed", "3", "--file", "s.bin"),
        ]
        pressure = [
            _client(rm.endpoint, "pattern", "--pages", "2560", "--seed", "7"),
            _client(rm.endpoint, "hog", "--mib", "12", "--seed", "8", "--state", str(rm.state)),
        ]
        for c in (*senders, *pressure):
            out, err = c.communicate(timeout=600)
            assert c.returncode == 0, out + err
            assert ": ok" in out, out
        st = status_json(rm.endpoint)
        assert st["state"] == "running"
        net = st["roles"]["net"]["counters"]
        uvm = st["roles"]["uvm"]["counters"]
        assert net["loaned_pages"] > 0  # the loan path ran
        assert net["pendfree"] == net["loaned_chunks"]  # every loaned mbuf freed
        assert uvm["loans"] == uvm["unloans"]
        assert uvm["loanbreaks"] > 0  # senders overwrote loaned buffers
        assert st["roles"]["pdaemon"]["counters"]["pdscans"] > 0  # and the daemon worked
        frames = st["frames"]
        assert frames["loaned"] == 0
        assert frames["free"] + frames["kernel_owned"] == frames["total"]
        assert frames["swpginuse"] == 0
        assert asyncio.run(_audit(rm.info["roles"]["uvm"]["kernel"])) == []
    finally:
        assert rm.stop() == 0
