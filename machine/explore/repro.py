"""A dump's failure reproduced in the simulator: follow the recording, then search, then shrink.

    report = reproduce("state/dump/crash-....json", runs=500)
    report["reproduced"], report["replay"]     # the command that plays it again, exactly

The dump's client and tool requests become a workload (machine.explore.fromdump),
written beside the dump (or in `out`); the machine is the dump's (its profile,
rebuilt from the dump's knobs when the named one differs; its RAM and swap).
Then, run k under run_seed(seed, k), as `uvm-machine replay --seed S --run k`
would:

  * run 0 follows the recording: the paced workload on the random schedule,
    the bus gated so each role gets its inputs in the recorded order where it
    can (machine.ipc.follow); the gate's report says how much was followed
    and where it first could not be (mode "recorded");
  * if that is not the dump's failure, runs 1 .. runs-1 search (mode
    "search"), each a variant by k: k % 4 == 1 paced, random schedule;
    2 paced, PCT (depth 3); 3 unpaced (every session as fast as it can),
    random; 0 paced, random, on a slower bus (100-1000 us a message: a real
    machine's pace, where handling takes time);
  * the first run whose failure is the dump's -- explore.failure_kind: the same
    outcome, message signature and revoker -- is the reproduction; its
    workload is written (the variant's), and its `replay` command plays it
    again exactly (same outcome, message and trace hash);
  * then ddmin shrinks it (machine.explore.shrink, at most `shrink_runs`
    re-runs under the same seed, strategy and gate), the result written too,
    with its own replay command. A reproduction on the gate is shrunk as
    run 1 (paced, no gate) instead when that run fails the same way: the
    gate holds inputs a smaller workload no longer sends, each a stall.

Invariants: every run is a pure function of (workload, profile, seed, k,
dump), as run.run_workload's; the reported `replay` names exactly those
inputs; a dump that cannot be read raises DumpError (never a traceback at the
CLI), and a run that raises is counted as an error row, not a crash.
"""

from __future__ import annotations

import collections
import shlex
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from machine.dumpfile import DumpError, read_dump
from machine.explore.explore import failure_kind, run_seed
from machine.explore.fromdump import Extracted, extract, profile_for, target_of, write_workload
from machine.explore.run import RunResult, run_workload
from machine.explore.shrink import MAX_RUNS, shrink
from machine.explore.workload import Workload

#: The bus of the slower search variant (us): near a real machine's hop.
SLOW_BUS_US = (100, 1000)
DEPTH = 3


def variant(w: Workload, k: int) -> tuple[str, Workload, str]:
    """=> (name, workload, strategy) of search run k >= 1 (module doc)."""
    if k % 4 == 1:
        return ("paced", w, "random")
    if k % 4 == 2:
        return ("paced-pct", w, "pct")
    if k % 4 == 3:
        return (
            "unpaced",
            replace(w, features=tuple(f for f in w.features if f != "paced")),
            "random",
        )
    return ("paced-slow-bus", replace(w, bus_us=SLOW_BUS_US), "random")


def replay_command(
    profile: str, seed: int, run: int, strategy: str, workload: Path, follow: Path | None
) -> str:
    args = ["uvm-machine", "replay", "--profile", profile, "--seed", str(seed), "--run", str(run)]
    args += ["--strategy", strategy, "--depth", str(DEPTH), "--workload", str(workload)]
    if follow is not None:
        args += ["--follow", str(follow)]
    return shlex.join(args)


def _row(r: RunResult) -> dict[str, Any]:
    return {"outcome": r.outcome, "message": r.message, "revoker": r.revoker}


def _run(
    w: Workload, profile: str, seed: int, k: int, strategy: str, ex: Extracted | None
) -> RunResult | None:
    try:
        return run_workload(
            w, profile, run_seed(seed, k), strategy, DEPTH, follow=ex.follow(w) if ex else None
        )
    except Exception:
        return None  # a harness bug: counted as an error, the search goes on


def reproduce(
    dump_path: str | Path,
    runs: int = 500,
    out: str | Path | None = None,
    seed: int = 0,
    shrink_runs: int = MAX_RUNS,
    do_shrink: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Follow, search, shrink (module doc). => the report (JSON-ready). DumpError if the
    dump cannot be read or holds no client request to replay."""
    t_start = time.monotonic()
    path = Path(dump_path)
    dump = read_dump(path)
    ex = extract(dump)
    if not ex.workload.size():
        raise DumpError(f"{path}: its flight recorders hold no client request to replay")
    where = Path(out) if out is not None else path.parent
    stem = path.stem
    profile = profile_for(dump, where)
    w = ex.workload
    w_path = write_workload(w, where / f"{stem}.workload.json").resolve()
    target = target_of(dump)
    want = failure_kind({"outcome": target[0], "message": target[1], "revoker": target[2]})
    say = log or (lambda _s: None)
    say(f"replay: {path}: {w.size()} requests of {len(ex.sessions)} sessions; target {target[0]}")

    seen: collections.Counter[str] = collections.Counter()
    found: tuple[int, str, Workload, str, RunResult] | None = None
    first = _run(w, profile, seed, 0, "random", ex)
    follow_report = first.follow if first is not None else None
    seen[first.outcome if first is not None else "error"] += 1
    if first is not None and failure_kind(_row(first)) == want:
        found = (0, "recorded", w, "random", first)
    k = 1
    while found is None and k < runs:
        name, wk, strategy = variant(w, k)
        r = _run(wk, profile, seed, k, strategy, None)
        seen[r.outcome if r is not None else "error"] += 1
        if r is not None and failure_kind(_row(r)) == want:
            found = (k, name, wk, strategy, r)
        k += 1
    tried = k if found is None else found[0] + 1
    shown = found[4] if found is not None else first
    report: dict[str, Any] = {
        "reproduced": found is not None,
        "outcome": shown.outcome if shown is not None else "error",
        "message": shown.message if shown is not None else "the run raised",
        "revoker": shown.revoker if shown is not None else "",
        "trace_hash": shown.trace_hash if shown is not None else "",
        "runs_tried": tried,
        "mode": ("recorded" if found[0] == 0 else "search") if found else None,
        "variant": found[1] if found else None,
        "replay": None,
        "workload": str(w_path),
        "shrunk_steps": None,
        "shrunk_workload": None,
        "shrunk_replay": None,
        "shrink_runs": 0,
        "target": {"outcome": target[0], "message": target[1], "revoker": target[2]},
        "profile": profile,
        "seed": seed,
        "requests": w.size(),
        "sessions": len(ex.sessions),
        "skipped": ex.skipped,
        "truncated": ex.truncated,
        "follow": follow_report,
        "outcomes": dict(sorted(seen.items())),
    }
    if found is not None:
        k0, name, wk, strategy, r = found
        if wk is not w:
            w_path = write_workload(wk, where / f"{stem}.{name}.workload.json").resolve()
            report["workload"] = str(w_path)
        follow = path.resolve() if k0 == 0 else None
        report["replay"] = replay_command(profile, seed, k0, strategy, w_path, follow)
        say(f"replay: reproduced in run {k0} ({name}): {r.message[:100]}")
        if do_shrink:
            small = where / f"{stem}.shrunk.json"
            how = (profile, seed, k0, strategy)
            gate: Extracted | None = ex if k0 == 0 else None
            if k0 == 0:  # shrink without the gate if run 1 (paced) fails the same way too
                name, wk1, strategy1 = variant(w, 1)
                r1 = _run(wk1, profile, seed, 1, strategy1, None)
                if r1 is not None and failure_kind(_row(r1)) == want:
                    wk, how, gate, follow = wk1, (profile, seed, 1, strategy1), None, None
                    report["shrunk_from"] = f"run 1 ({name})"
            _shrink(report, wk, how, gate, want, shrink_runs, small, follow)
    report["elapsed_s"] = round(time.monotonic() - t_start, 2)
    return report


def _shrink(
    report: dict[str, Any],
    w: Workload,
    how: tuple[str, int, int, str],
    ex: Extracted | None,
    want: tuple[str, str, str],
    budget: int,
    out: Path,
    follow: Path | None,
) -> None:
    """ddmin under the reproducing run's seed, strategy and gate; the result into `report`."""
    profile, seed, k, strategy = how
    count = 0

    def still_fails(cand: Workload) -> bool:
        nonlocal count
        count += 1
        r = _run(cand, profile, seed, k, strategy, ex)
        return r is not None and failure_kind(_row(r)) == want

    small = shrink(w, still_fails, max_runs=budget)
    path = write_workload(small, out).resolve()
    report["shrunk_steps"] = small.steps()
    report["shrunk_workload"] = str(path)
    report["shrunk_replay"] = replay_command(profile, seed, k, strategy, path, follow)
    report["shrink_runs"] = count
