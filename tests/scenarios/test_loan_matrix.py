"""The scenario matrix (uvm-semantics.md section 14, loans / network / profiles): every
scenario under every shipped profile, outcome against the prediction from the profile's
knobs. In process (deterministic, virtual time) for every row; over real processes through
the `uvm-machine matrix --json` command, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from machine import __main__ as cli
from machine.ipc.inmemory import run_simulation
from machine.profile import SHIPPED
from machine.scenarios import SCENARIOS, run_scenario

ROWS = [(name, prof) for name in SCENARIOS for prof in SHIPPED]


@pytest.mark.parametrize(("name", "profile"), ROWS, ids=[f"{n}-{p}" for n, p in ROWS])
def test_scenario_outcome_is_the_predicted_one(name: str, profile: str) -> None:
    o = run_simulation(run_scenario(name, profile, inprocess=True, seed=5))
    assert o.outcome == o.expected, o.detail
    if o.outcome == "panic":
        # The machine says what happened, in its own terms (section 1.3's chain).
        assert o.evidence["role"], o.evidence
        assert o.evidence["dump"], o.evidence
        assert "pmap_page_protect" in o.detail
    if o.outcome == "corruption":
        assert o.evidence["offsets"]
        assert o.evidence["sent"] != o.evidence["wire"]


def test_the_seed_panic_names_the_page_the_revoker_and_the_kernel_access() -> None:
    o = run_simulation(run_scenario("seed", "bug1999", inprocess=True, seed=1))
    assert o.outcome == "panic"
    msg = o.evidence["message"]
    assert msg.startswith("trap: kernel page fault")
    assert "uvm_fault(kernel_map" in msg  # the kernel access that faulted
    assert "object 1 (seed.bin) offset 0x0" in msg  # which page
    assert "revoked by pdaemon" in msg
    assert "deactivate" in msg
    assert o.evidence["role"] == "uvm"


def test_thorpe_reports_the_double_insertion_instead_of_hiding_it() -> None:
    o = run_simulation(run_scenario("seed", "thorpe", inprocess=True, seed=1))
    assert o.outcome == "ok"
    assert "double insertion detected" in o.detail


def test_matrix_over_real_processes_as_json() -> None:
    """`uvm-machine matrix --json` boots a fresh machine per row; exit 0 when all pass."""
    names = "seed,write-after-send,sosend-thresholds"
    r = subprocess.run(
        [sys.executable, "-m", "machine", "matrix", "--json", "--scenarios", names],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert len(rows) == 3 * len(SHIPPED)
    assert set(rows[0]) == {"scenario", "profile", "outcome", "expected", "pass", "detail"}
    assert all(row["pass"] for row in rows)
    by = {(row["scenario"], row["profile"]): row["outcome"] for row in rows}
    assert by[("seed", "bug1999")] == "panic"
    assert by[("seed", "modern")] == "ok"


def test_scenario_cli_lists_and_runs_a_users_profile(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "machine", "scenario", "--list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert all(name in r.stdout for name in SCENARIOS)
    # A user's profile that claims the seed is fine, but is 1999 with the injected state:
    prof = tmp_path / "mine.toml"
    text = subprocess.run(
        [sys.executable, "-m", "machine", "profile", "show", "bug1999"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n", 1)[1]
    prof.write_text('name = "mine"\ndescription = "1999 with DIAGNOSTIC"\n[knobs]\n' + text)
    prof.write_text(prof.read_text().replace("DIAGNOSTIC = false", "DIAGNOSTIC = true"))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "machine",
            "scenario",
            "seed",
            "--profile",
            str(prof),
            "--json",
            "--inprocess",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = json.loads(r.stdout)
    assert out["outcome"] == "panic" == out["expected"], out
    assert "uvm_pagedeactivate: caller did not check wire count" in out["detail"]
    assert r.returncode == 0


def test_matrix_exits_nonzero_when_a_row_misses_its_expectation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from machine.scenarios.runner import Outcome

    async def fake(*a: object, **kw: object) -> list[Outcome]:
        return [Outcome("seed", "modern", "panic", "ok", "uvm: boom")]

    monkeypatch.setattr("machine.scenarios.run_matrix", fake)
    assert cli.main(["matrix", "--json", "--inprocess"]) == 1
    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert row == {
        "scenario": "seed",
        "profile": "modern",
        "outcome": "panic",
        "expected": "ok",
        "pass": False,
        "detail": "uvm: boom",
    }
