"""docs/policy-tutorial.md as written: its FIFO policy is examples/policies/fifo.py's, the
profile names it, the comparison prints the page's table (the in-process runs are
deterministic: every column but the seconds), and the policy runs a real machine under
a stress load without a failure."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from machine.pdaemon.clock import ClockPolicy
from machine.pdaemon.policy import PageInfo, Snapshot
from machine.profile import load_profile
from machine.proto.pageinfo import PdOp
from machine.tuning import clock_targets
from tests.docs.pages import DOCS, ROOT, commands

PAGE = DOCS / "policy-tutorial.md"
EXAMPLES = ROOT / "examples" / "policies"


def _run(body: str, timeout_s: float) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(
        ["bash", "-c", body],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return r.stdout + r.stderr


def _fifo() -> type:
    sys.path.insert(0, str(EXAMPLES))
    try:
        from fifo import Fifo
    finally:
        sys.path.remove(str(EXAMPLES))
    return Fifo


def test_the_pages_snippet_is_the_example_policys_code() -> None:
    snippet = re.search(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert snippet is not None
    code = textwrap.dedent((EXAMPLES / "fifo.py").read_text())
    source = [ln.strip() for ln in code.splitlines()]
    for line in snippet.group(1).splitlines():
        if line.strip() and not line.strip().startswith("..."):
            assert line.strip() in source, line


def test_fifo_takes_a_referenced_page_the_clock_keeps() -> None:
    fifo = _fifo()()
    settings = load_profile("modern").settings
    t = clock_targets(1024)
    hot = PageInfo(pfn=7, clean=True)
    snap = Snapshot(active=[], inactive=[hot], free=0, npages=1024)
    assert [(a.op, a.pfn) for a in fifo.scan(snap, lambda pfn: True, t, settings).actions] == [
        (PdOp.FREE, 7)
    ]
    clock = ClockPolicy().scan(snap, lambda pfn: True, t, settings).actions
    assert [(a.op, a.pfn) for a in clock] == [(PdOp.REACTIVATE, 7)]
    wired = Snapshot(active=[], inactive=[PageInfo(pfn=8, wire_count=1)], free=0, npages=1024)
    assert not fifo.scan(wired, lambda pfn: False, t, settings).actions


def test_the_profile_names_the_policy_and_loads() -> None:
    cmd = commands(PAGE)[0]
    out = _run(cmd.body, 60)
    for line in cmd.says.strip().splitlines():
        assert line in out
    assert load_profile(str(EXAMPLES / "fifo.toml")).knobs["PD_POLICY"] == "python:fifo:Fifo"


def _rows(text: str) -> list[list[str]]:
    """The comparison's table without its last column (seconds: wall time)."""
    return [ln.split()[:-1] for ln in text.strip().splitlines() if ln.split()]


@pytest.mark.timeout(180)
def test_the_comparison_prints_the_pages_table() -> None:
    cmd = commands(PAGE)[1]
    assert "compare.py" in cmd.body
    out = _run(cmd.body, 170)
    assert _rows(out) == _rows(cmd.says), out
    modern, fifo = _rows(out)[1:]
    assert int(fifo[1]) > int(modern[1])  # hot refaults: the clock keeps the hot set


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_the_policy_runs_a_real_machine_under_stress() -> None:
    cmd = commands(PAGE)[2]
    assert "--profile examples/policies/fifo.toml" in cmd.body
    out = _run(cmd.body, 170)
    for pat in ("failures 0  corruption 0", "panic: none", "frames back: True", "exit status 0"):
        assert pat in cmd.says
        assert pat in out, out[-3000:]
