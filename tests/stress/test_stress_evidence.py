"""A stress run whose verdict is not 0 leaves its evidence, explained: a corruption the
wire carried (loan KVA backed by kernel_object, PR kern/18958) and a leaked frame (the
test-only injection). The panic's evidence is checked by test_stress_cli's bug1999 run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from machine.profile import load_profile, with_overrides
from tests.stress.test_stress_cli import ROOT, stress

PY = sys.executable
# real stress runs of 8 s and 4 s plus the frames' wait: `-m slow` (.ci/run runs it)
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _explain(report: Path) -> dict[str, object]:
    p = subprocess.run(
        [PY, "-m", "machine", "explain", str(report / "dump.json"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)  # type: ignore[no-any-return]


@pytest.mark.timeout(180)
def test_a_corruption_is_dumped_at_once_and_explain_names_page_send_and_writer(
    tmp_path: Path,
) -> None:
    profile = with_overrides(load_profile("bug1999"), {"LOAN_KVA": "kernel_object"}, tmp_path)
    for attempt in range(3):
        run = tmp_path / f"run{attempt}"
        status, s, err = stress(
            run,
            *("--ram", "4M", "--profile", profile, "--users", "4", "--spawn-rate", "4"),
            *("--run-time", "8s", "--mix", "sender=2,hog=1"),
            *("--nemesis", "link-slow", "--nemesis-period", "2"),  # loans stay out longer
        )
        # bug1999 has a second 1999 bug, uvm_unloanpage's "unowned but PG_BUSY!" panic (a
        # loan's end racing the page daemon's claim): when it ends the run after the first
        # corruption, the crash dump takes the report's place. Run again (the panic's own
        # evidence is test_stress_cli's bug1999 run); the next run's corruption is checked.
        if s.get("dump_reason") != "panic":
            break
    assert status == 4, err[-3000:]
    assert s["corruption"] > 0
    first = s["corruptions"][0]
    assert s["dump"]
    assert s["dump_reason"].startswith("corruption: ")
    assert json.loads(s["dump_reason"].split(": ", 1)[1]) == first  # the first one's detail
    ex = _explain(run / "report")
    assert ex["outcome"] == "corruption"
    send = ex["send"]
    assert isinstance(send, dict)
    assert (send["session"], send["sock"], send["seq"]) == (
        first["session"],
        first["sock"],
        first["seq"],
    )
    assert isinstance(ex["page"], int)
    assert f"page {ex['page']}" in str(ex["caption"])
    writers = ex["writers"]
    assert isinstance(writers, list)
    assert writers, ex  # who wrote the page between the send and the driver's read
    assert s["explained"]["page"] == ex["page"]
    # the wire carried zeros (LOAN_KVA kernel_object): the revoked mapping's chain
    assert "entered a zero page there" in str(ex["caption"]), ex["caption"]
    assert ex["revoker"] in ("uvm", "pdaemon")


@pytest.mark.timeout(180)
def test_a_leak_is_dumped_when_frames_are_not_back_and_explain_names_the_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UVM_MACHINE_INJECT_LEAK", "1")  # the machine's roles inherit it
    status, s, err = stress(
        tmp_path,
        *("--ram", "8M", "--users", "2", "--spawn-rate", "2", "--run-time", "4s"),
        *("--mix", "pattern=1", "--lease", "2"),
    )
    assert status == 1, err[-3000:]
    assert s["vm"]["frames_back"] is False
    assert s["dump_reason"].startswith("frames not back")
    ex = _explain(tmp_path / "report")
    assert ex["outcome"] == "leak"
    frames = ex["frames"]
    assert isinstance(frames, list)
    assert len(frames) == 1
    (f,) = frames
    assert f["pfn"] == ex["page"]
    holder = f["holder"]
    assert holder["asid"] > 0
    assert holder["session"]  # the session that held it (pmap.create's owner)
    assert holder["process"] == "exit"
    assert os.environ["UVM_MACHINE_INJECT_LEAK"] == "1"
