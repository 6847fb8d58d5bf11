"""Every stress user for real: Locust (a subprocess) against a real machine for a few seconds.

Each run is `locust -f machine/stress/locustfile.py --headless -u 2 -r 2 -t 6s --mix
<name>=1 --json --uvm-report DIR`: Locust's JSON stats (stdout) say which operations
ran and failed, summary.json what the harness recorded (corruption). gevent never
enters this process: Locust runs in its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RealMachine, boot_real, status_json

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOCUST = str(Path(sys.executable).with_name("locust"))
LOCUSTFILE = ROOT / "machine" / "stress" / "locustfile.py"

#: operations each user must have made in a short run (names "<user>.<step>")
MUST = {
    "pattern": {"pattern.store", "pattern.load", "pattern.map"}
    | {"pattern.madvise", "pattern.mincore", "pattern.mlockall"},
    "forker": {"forker.store", "forker.fork", "forker.load", "forker.exit", "forker.minherit"},
    "hog": {"hog.touch", "hog.check"},
    "sender": {"sender.fill", "sender.send", "sender.wire"},
    "files": {"files.store", "files.load", "files.msync", "files.host"}
    | {"files.ftruncate", "files.truncated"},
    "churn": {"churn.attach", "churn.spawn", "churn.touch", "churn.load", "churn.detach"},
}


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealMachine]:
    m = boot_real(tmp_path_factory.mktemp("users") / "state", "--ram", "4M", "--swap", "16M")
    try:
        yield m
    finally:
        m.stop()


def run_locust(
    m: RealMachine, report: Path, mix: str, locustfile: Path = LOCUSTFILE, secs: int = 6
) -> tuple[int, list[dict[str, Any]], dict[str, Any], str]:
    """One headless run. => (exit status, Locust's per-name stats, summary.json, stderr)."""
    cmd = [
        LOCUST,
        "-f",
        str(locustfile),
        "--headless",
        "-u",
        "2",
        "-r",
        "2",
        "-t",
        f"{secs}s",
        "--host",
        m.endpoint,
        "--mix",
        mix,
        "--json",
        "--uvm-report",
        str(report),
        "--uvm-state",
        str(m.state),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    stats = json.loads(r.stdout) if r.stdout.strip().startswith("[") else []
    path = report / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    return r.returncode, stats, summary, r.stderr


#: machine counters a user's run must have moved (role, counter): what it is there to force
MOVES = {
    "hog": ("uvm", "pageouts"),  # more than RAM: the page daemon pages out
    "sender": ("uvm", "loans"),  # sends at or above the loan threshold are loaned
    "forker": ("uvm", "faults"),
    "files": ("uvm", "faults"),
}
#: and the VM calls' counters (issue 20): what the users' new operations must have done
MOVES_TOO = {
    "pattern": [("uvm", "madv_dontneed"), ("uvm", "mlockalls")],
    "files": [("uvm", "truncations")],
}


@pytest.mark.timeout(30)
def test_users_table_names_every_user_by_its_operations() -> None:
    """USERS (imported in a subprocess: gevent never enters pytest) maps each name to
    a class whose operations are "<name>.<step>", weight 1 by default."""
    code = (
        "import json; from machine.stress.users import USERS; "
        "print(json.dumps({n: [c.kind, c.weight, c.__name__] for n, c in USERS.items()}))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    table = json.loads(r.stdout)
    assert set(table) == set(MUST)
    for name, (kind, weight, cls) in table.items():
        assert kind == name
        assert weight == 1
        assert cls == name.capitalize() + "User"


def counter(m: RealMachine, role: str, name: str) -> int:
    return int(status_json(m.endpoint)["roles"][role]["counters"].get(name, 0))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(MUST))
def test_user_runs_clean(machine: RealMachine, tmp_path: Path, name: str) -> None:
    role, what = MOVES.get(name, ("uvm", "faults"))
    before = counter(machine, role, what)
    too = {rw: counter(machine, *rw) for rw in MOVES_TOO.get(name, [])}
    rc, stats, summary, err = run_locust(machine, tmp_path / "report", f"{name}=1")
    ops = {s["name"]: s for s in stats}
    made = {n for n, s in ops.items() if s["num_requests"] > 0}
    assert MUST[name] <= made, (sorted(made), err[-3000:])
    assert all(n.startswith(name + ".") for n in made), sorted(made)
    failures = {n: s["num_failures"] for n, s in ops.items() if s["num_failures"]}
    assert not failures, (failures, summary.get("errors"), err[-3000:])
    assert summary["corruption"] == 0, summary["corruptions"]
    assert summary["failures"] == 0
    assert summary["panic"] is None
    assert rc == 0, err[-3000:]
    assert counter(machine, role, what) > before, f"{role}.{what} did not move"
    for (r, c), was in too.items():
        assert counter(machine, r, c) > was, f"{r}.{c} did not move"
    # every user left: the machine has its frames back and no file of ours stays on disk
    assert summary["vm"]["frames_back"] is True, summary["vm"]
    assert not list((machine.state / "disk").glob(f"stress-{name}-*"))


WRONG = '''
"""Test only: a pattern user whose model is wrong at one byte (region offset 100)."""
from machine.stress.locustfile import *  # noqa: F403 (the options, the listeners, the users)
from machine.stress.users import USERS, PatternUser


class WrongPatternUser(PatternUser):
    OPS_PER_PROCESS = 20  # a whole-region verify soon
    MADVISE = MINCORE = LOCKALL = 0.0  # only loads see the wrong byte (a FREE would zero it)

    def _begin(self) -> None:
        super()._begin()
        assert self.p is not None
        with self.op("pattern.store"):
            self.p.store(self.va + 100, b"\\xab")
        self.model.store(100, b"\\xcd")  # deliberately wrong


USERS["wrong"] = WrongPatternUser
'''


@pytest.mark.timeout(60)
def test_a_wrong_model_reports_corruption_with_offset_and_both_values(
    machine: RealMachine, tmp_path: Path
) -> None:
    lf = tmp_path / "wrong_locustfile.py"
    lf.write_text(WRONG)
    rc, stats, summary, err = run_locust(machine, tmp_path / "report", "wrong=1", lf, secs=4)
    assert summary, err[-3000:]
    assert summary["corruption"] >= 1, (summary.get("errors"), err[-3000:])
    d = summary["corruptions"][0]
    assert d["what"] in ("pattern.load", "pattern.verify")
    assert d["region_offset"] == 100
    i = d["offset"] - d["window_start"]
    assert bytes.fromhex(d["expected"])[i] == 0xCD
    assert bytes.fromhex(d["got"])[i] == 0xAB
    assert d["user"] == "pattern"
    assert "seed" in d
    fails = {s["name"]: s["num_failures"] for s in stats if s["num_failures"]}
    assert set(fails) <= {"pattern.load", "pattern.verify"}, fails
    assert rc == 4, err[-3000:]


BIG_HOG = '''
"""Test only: a hog three times RAM on a machine with little swap: it must be OOM-killed."""
from machine.stress.locustfile import *  # noqa: F403
from machine.stress.users import USERS, HogUser


class BigHogUser(HogUser):
    HOG_FACTOR = 3.0
    BATCH = 64


USERS["hog"] = BigHogUser
'''


@pytest.mark.timeout(60)
def test_hog_killed_for_memory_is_hog_oom_not_corruption(tmp_path: Path) -> None:
    """More than RAM + swap: the machine kills the process; the hog reports "hog.oom",
    starts a new process, and nothing is corruption."""
    m = boot_real(tmp_path / "state", "--ram", "1M", "--swap", "256K")
    try:
        lf = tmp_path / "big_hog_locustfile.py"
        lf.write_text(BIG_HOG)
        rc, stats, summary, err = run_locust(m, tmp_path / "report", "hog=1", lf, secs=8)
        ops = {s["name"]: s for s in stats}
        assert ops.get("hog.oom", {}).get("num_failures", 0) >= 1, (sorted(ops), err[-3000:])
        fails = {n for n, s in ops.items() if s["num_failures"]}
        assert fails == {"hog.oom"}, summary.get("errors")
        assert ops["hog.map"]["num_requests"] >= 3, stats  # a new process after a kill
        assert summary["corruption"] == 0, summary["corruptions"]
        assert summary["panic"] is None
        assert rc == 1  # failures, not corruption (4) nor a panic (3)
        assert counter(m, "uvm", "oomkills") >= 1
    finally:
        m.stop()
