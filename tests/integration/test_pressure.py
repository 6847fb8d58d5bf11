"""Memory pressure over real processes: several clients at once push the machine past its
RAM; the page daemon pages out to swap; every byte comes back; nothing is lost.

The default run is short (RAM 16 MiB, 3 clients x 8 MiB); `pytest -m slow` runs the
issue's full size (3 clients x 32 MiB).
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from machine.ipc.peer import Identity, Peer
from machine.ipc.zmqtransport import ZmqTransport
from machine.proto import NO_HEADER, UvmAudit, UvmAuditReply
from tests.conftest import PY, boot_real, status_json

pytestmark = pytest.mark.integration


async def _audit(kernel_ep: str) -> list[str]:
    t = ZmqTransport()
    peer = await Peer(Identity("test", 9), kernel_ep).open(t)
    try:
        rep = await peer.call(UvmAudit(h=NO_HEADER), 30.0)
        assert isinstance(rep, UvmAuditReply)
        return rep.problems
    finally:
        await peer.close()
        await t.close()


def _run(tmp_path: Path, pages_per_client: int) -> None:
    rm = boot_real(tmp_path / "state", "--ram", "16M", "--swap", "128M")
    try:
        clients = [
            subprocess.Popen(
                [
                    PY,
                    "-m",
                    "clients",
                    "pattern",
                    "--endpoint",
                    rm.endpoint,
                    "--pages",
                    str(pages_per_client),
                    "--seed",
                    str(k),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in range(3)
        ]
        for c in clients:
            out, err = c.communicate(timeout=600)
            assert c.returncode == 0, out + err
            assert ": ok" in out
        st = status_json(rm.endpoint)
        pd = st["roles"]["pdaemon"]["counters"]
        assert pd["pdwoke"] > 0
        assert pd["pdscans"] > 0
        assert pd["pdpageouts"] > 0
        assert st["roles"]["uvm"]["counters"]["fltanget"] > 0  # pages came back from swap
        assert (
            st["frames"]["free"] + st["frames"]["kernel_owned"] == st["frames"]["total"]
        )  # every frame accounted for
        assert st["frames"]["swpginuse"] == 0
        assert asyncio.run(_audit(rm.info["roles"]["uvm"]["kernel"])) == []
    finally:
        assert rm.stop() == 0


def test_three_clients_past_ram_keep_their_data(tmp_path: Path) -> None:
    _run(tmp_path, 2048)  # 3 x 8 MiB against 16 MiB of RAM


@pytest.mark.slow
def test_three_clients_of_32_mib_against_16_mib_of_ram(tmp_path: Path) -> None:
    _run(tmp_path, 8192)


def _hog(tmp_path: Path, mib: int) -> None:
    rm = boot_real(tmp_path / "state", "--ram", "16M", "--swap", "128M")
    try:
        r = subprocess.run(
            [
                PY,
                "-m",
                "clients",
                "hog",
                "--endpoint",
                rm.endpoint,
                "--mib",
                str(mib),
                "--state",
                str(rm.state),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.rstrip().endswith(": ok")  # every byte back, and the file on disk
        st = status_json(rm.endpoint)
        assert st["roles"]["pdaemon"]["counters"]["pdpageouts"] > 0
        assert st["frames"]["free"] + st["frames"]["kernel_owned"] == st["frames"]["total"]
        assert st["frames"]["swpginuse"] == 0
    finally:
        assert rm.stop() == 0


def test_anonymous_and_file_memory_past_ram(tmp_path: Path) -> None:
    _hog(tmp_path, 20)  # 20 MiB, half anonymous, half a shared file, against 16 MiB of RAM


@pytest.mark.slow
def test_64_mib_of_random_data_through_16_mib_of_ram(tmp_path: Path) -> None:
    _hog(tmp_path, 64)
