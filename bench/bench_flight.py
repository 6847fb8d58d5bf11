"""Real failures, explained and replayed: N `bug1999` stress runs, each dump through
`uvm-machine explain` and `uvm-machine replay --from-dump`.

    .venv/bin/python bench/bench_flight.py --runs 10 --json      # about 10-40 min
    .venv/bin/python bench/bench_flight.py --runs 2 --replay-runs 50   # a quick look

Each run is the issue's command, `uvm-machine stress --ram 4M --profile bug1999 --users 8
--spawn-rate 8 --run-time 60s --mix sender=2,hog=1 --nemesis link-slow --nemesis-period 4`
(it panics within about a second and exits 3), with --state and --report in a work dir
(`--keep DIR` keeps them). Then, per run:
  * explain: does `uvm-machine explain DUMP --json` name the same revoker as the panic
    message ("... was revoked by X: pmap_page_protect(NONE) (why)") and the same reason
    in its revocation step, and does its chain end in the panic?
  * replay (unless --no-replay): `uvm-machine replay --from-dump DUMP --runs R --json`:
    reproduced or not, the mode ("recorded": the recorded delivery order sufficed;
    "search": random/PCT schedules), the runs tried, the time, the shrunk steps.
Prints a table (stderr) and, with --json, one object last on stdout: {runs: [...],
explain_agree, reproduced, runs_to_reproduce: {median, max}, recorded_followed, ...}.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]
STRESS = [
    *("--ram", "4M", "--profile", "bug1999", "--users", "8", "--spawn-rate", "8"),
    *("--run-time", "60s", "--mix", "sender=2,hog=1", "--nemesis", "link-slow"),
    *("--nemesis-period", "4"),
]
_REVOKED = re.compile(r"was revoked by ([\w-]+): pmap_page_protect\(NONE\) \((.*)\)$")


def _cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "machine", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def one(work: Path, k: int, replay_runs: int, replay: bool) -> dict[str, Any]:
    d = work / f"run{k}"
    t0 = time.monotonic()
    p = _cli("stress", *STRESS, "--state", str(d / "state"), "--report", str(d / "report"),
             "--json", timeout=600)  # fmt: skip
    out: dict[str, Any] = {"run": k, "status": p.returncode, "stress_s": time.monotonic() - t0}
    try:
        s = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        out["error"] = p.stderr[-500:]
        return out
    panic = s.get("panic") or {}
    out["message"] = str(panic.get("message", ""))[:300]
    dump = d / "report" / "dump.json"
    if not dump.exists():
        out["error"] = f"no dump ({s.get('dump_reason') or s.get('evidence_error')})"
        return out
    m = _REVOKED.search(str(panic.get("message", "")))
    out["said_revoker"], out["said_why"] = (m.group(1), m.group(2)) if m else ("", "")
    t1 = time.monotonic()
    e = _cli("explain", str(dump), "--json", timeout=300)
    out["explain_s"] = time.monotonic() - t1
    ex = json.loads(e.stdout)
    chain = ex.get("chain") or []
    out["revoker"] = ex.get("revoker", "")
    out["chain_steps"] = len(chain)
    revoke_step = next((c for c in chain if " revoked that mapping" in c), "")
    out["explain_agrees"] = bool(
        m
        and ex.get("outcome") == "panic"
        and ex.get("revoker") == m.group(1)
        and m.group(2) in revoke_step
        and chain
        and chain[-1].startswith("uvm panicked")
    )
    if replay:
        t2 = time.monotonic()
        r = _cli("replay", "--from-dump", str(dump), "--runs", str(replay_runs), "--json",
                 timeout=7200)  # fmt: skip
        out["replay_s"] = time.monotonic() - t2
        try:
            rj = json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            out["replay_error"] = r.stderr[-500:]
            return out
        for key in ("reproduced", "mode", "runs_tried", "replay", "follow", "revoker"):
            out[key] = rj.get(key)
        out["shrunk_steps"] = len(rj.get("shrunk_steps") or [])
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--replay-runs", type=int, default=500)
    ap.add_argument("--no-replay", dest="replay", action="store_false")
    ap.add_argument("--keep", metavar="DIR", help="keep the runs' state and reports here")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    work = Path(a.keep or tempfile.mkdtemp(prefix="bench-flight-"))
    rows = []
    for k in range(a.runs):
        row = one(work, k, a.replay_runs, a.replay)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    agree = sum(1 for r in rows if r.get("explain_agrees"))
    repro = [r for r in rows if r.get("reproduced")]
    tried = [int(r["runs_tried"]) for r in repro if r.get("runs_tried") is not None]
    result = {
        "runs": rows,
        "explain_agree": f"{agree} of {len(rows)}",
        "reproduced": f"{len(repro)} of {len(rows)}" if a.replay else None,
        "runs_to_reproduce": {"median": statistics.median(tried), "max": max(tried)}
        if tried
        else None,
        "recorded_mode": sum(1 for r in repro if r.get("mode") == "recorded"),
        "work": str(work),
    }
    print(
        f"explain agrees with the panic message: {result['explain_agree']}; "
        f"replay reproduced: {result['reproduced']}; runs to reproduce: "
        f"{result['runs_to_reproduce']}; by the recorded order: {result['recorded_mode']}",
        file=sys.stderr,
    )
    if a.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
