"""`python -m bench summary --smoke --json`: one run prints every measure of issue 11 as a
number, last on stdout, and the same object in its JSON file (the bench's harness, not its
speed: a handful of iterations per measure, on real machines)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RATIOS = ("fault_over_rtt", "store_over_rtt", "agg_fault_ratio", "loan_over_wire_4M",
          "copy_over_wire_4M", "pageout_mb_s", "thrash_slowdown",
          "stress_client_over_machine_cpu", "explore_runs_per_min")  # fmt: skip
SIZES = {"4K", "64K", "256K", "1M", "4M"}


def _positive(x: object) -> bool:
    return isinstance(x, float) and x > 0


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_summary_smoke_prints_every_measure_as_a_number(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "bench", "summary", "--smoke", "--json", "--retries", "0",
           "--out", str(out)]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["failures"] == []
    bad = {k: res[k] for k in RATIOS if not _positive(res[k])}
    assert not bad, bad
    assert set(res["loan_over_copy"]) == SIZES
    assert all(_positive(v) for v in res["loan_over_copy"].values()), res["loan_over_copy"]
    raw = res["raw"]
    assert _positive(raw["latency"]["raw_p50_us"])
    assert _positive(raw["aggregate"]["faults_per_s"])
    assert _positive(raw["aggregate"]["echo_rt_per_s"])
    assert _positive(raw["wire_4M"]["mb_s"])
    st = raw["stress"]  # a real stress run: every byte verified, CPU of both sides
    assert st["corruption"] == 0
    assert st["failures"] == 0
    assert st["ops"] > 0
    assert _positive(st["harness_cpu_s"])
    assert _positive(st["machine_cpu_s"])
    assert all(_positive(raw["net"][m]["4M"]["mb_s"]) for m in ("loan", "copy"))
    assert raw["explore"]["runs"] == 24
    assert raw["explore"]["outcomes"] == {"ok": 24}
    assert res["commit"]
    assert res["host"]["cpus"] >= 1
    assert json.loads(out.read_text()) == res
