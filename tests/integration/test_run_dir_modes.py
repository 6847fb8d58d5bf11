"""`uvm-machine up` keeps its kernel to its owner: run/ is 0700 and every socket in it 0600.

The kernel endpoints of `up` are ipc sockets in <state>/run/, beside the
machine key. Nobody but the machine's owner may connect to them (a kernel
request is obeyed unsigned), so `up` sets those modes explicitly rather than
trusting the umask: the test boots with umask 0 (sockets would be created
0777) on a run/ directory an earlier run left open to everyone (0777).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from machine.roles import ROLE_NAMES
from tests.conftest import boot_real

pytestmark = pytest.mark.integration


def test_up_makes_run_0700_and_its_sockets_0600_whatever_the_umask(tmp_path: Path) -> None:
    state = tmp_path / "state"
    run = state / "run"
    run.mkdir(parents=True)
    run.chmod(0o777)  # left open by an earlier run (or made by hand)
    old = os.umask(0)  # the machine and its roles inherit it: no help from the umask
    try:
        rm = boot_real(state, "--ram", "16M")
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(run.stat().st_mode) == 0o700
        entries = {p.name: p.lstat().st_mode for p in run.iterdir()}
        sockets = sorted(n for n, m in entries.items() if stat.S_ISSOCK(m))
        # user/pub are TCP here; the supervisor's kernel endpoint is its ctl.dumpsys
        assert sockets == sorted(f"{r}.kernel" for r in (*ROLE_NAMES, "sup"))
        for name, mode in entries.items():  # the sockets and the machine key
            assert stat.S_IMODE(mode) == 0o600, (name, oct(mode))
        for role in ROLE_NAMES:
            assert rm.info["roles"][role]["kernel"] == f"ipc://{run}/{role}.kernel"
        assert rm.info["supervisor"]["kernel"] == f"ipc://{run}/sup.kernel"
    finally:
        assert rm.stop() == 0
    assert not run.exists()


@pytest.mark.parametrize("plant", ["state_by_other", "state_open", "disk_link", "run_entry"])
def test_up_refuses_a_state_directory_others_could_have_planted(tmp_path: Path, plant: str) -> None:
    """A local user who pre-creates the state directory (or plants disk/ as a link to a
    directory only root may read) must not get the machine's files: `up` refuses to boot."""
    import subprocess
    import sys

    state = tmp_path / "state"
    state.mkdir()
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    (secret / "file").write_bytes(b"root only")
    if plant == "state_by_other":
        os.chown(state, 65534, 65534)  # nobody's
    elif plant == "state_open":
        state.chmod(0o777)
    elif plant == "disk_link":
        (state / "disk").symlink_to(secret)
    else:
        (state / "run").mkdir()
        (state / "run" / "machine.key").write_text("planted")
        os.chown(state / "run" / "machine.key", 65534, 65534)
    r = subprocess.run(
        [sys.executable, "-m", "machine", "up", "--state", str(state), "--ram", "8M"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "attach:" not in r.stdout
    assert "uvm-machine up:" in r.stderr, r.stderr
    assert (secret / "file").read_bytes() == b"root only"
    assert sorted(p.name for p in secret.iterdir()) == ["file"]
