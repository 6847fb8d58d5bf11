"""`explore` and `replay`: many seeded in-process runs, and one of them again, exactly.

    uvm-machine explore --profile bug1999 --runs 400 --jobs 2 --seed 0 --strategy pct --json
    uvm-machine replay --profile bug1999 --seed 0 --run 17 --strategy pct --depth 3 --html out.html

`explore` prints a table of the failures (run, outcome, trace hash, message),
then each group's shrunk steps and replay command; `--json` prints the report
(machine.explore.explore) as one object, last on stdout. `replay` rebuilds
run K of seed S (or plays `--workload FILE.json`, e.g. a failure's
shrunk_workload, under run K's schedule seed) and prints outcome, message
and trace hash (`--json`: {"outcome", "message", "trace_hash"}); `--html`
writes the run's sequence diagram (recorded: recording does not change the
run's trace hash).

`replay --from-dump DUMP [--runs N] [--out DIR] [--json]` rebuilds a real
run's client requests from a dump's flight recorders and reproduces its
failure in the simulator (machine.explore.repro: the recorded order first,
then a search of up to N runs, then shrinking); `--follow DUMP` replays a
workload on the gate that follows that dump's recorded order (the command a
"recorded" reproduction prints).

Exit status, both commands: 0 no failure (every run ok), 1 a failure found
(or replayed), 2 bad flags. `replay --from-dump`: 0 reproduced, 1 not
reproduced, 2 a dump that does not read. Importing this module imports no
part of the machine; each command imports what it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from machine.cli.args import profile
from machine.profile import DEFAULT_PROFILE

STRATEGIES = ("random", "pct")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {n}")
    return n


def _schedule_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", type=profile, default=DEFAULT_PROFILE)
    p.add_argument("--seed", type=int, default=0, help="exploration seed S")
    p.add_argument("--strategy", choices=STRATEGIES, default="random")
    p.add_argument("--depth", type=_positive, default=3, help="PCT depth d (d-1 change points)")
    p.add_argument("--json", action="store_true", help="one JSON object, last on stdout")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("explore", help="seeded swarm exploration of the in-process machine")
    _schedule_args(p)
    p.add_argument("--runs", type=_positive, default=100)
    p.add_argument("--jobs", type=_positive, default=1, help="worker processes")
    p.add_argument("--until-first", action="store_true", help="stop at the first failing run")
    p.add_argument("--dask", metavar="ADDRESS", help="run on this Dask scheduler instead")
    p.add_argument("--no-shrink", dest="shrink", action="store_false")
    p.set_defaults(fn=cmd_explore)

    p = sub.add_parser("replay", help="replay one exploration run exactly, or a dump's run")
    _schedule_args(p)
    p.add_argument("--run", type=int, help="run number K (required unless --from-dump)")
    p.add_argument("--workload", metavar="FILE.json", help="play this workload instead")
    p.add_argument("--html", metavar="FILE", help="write the run's sequence diagram")
    p.add_argument("--follow", metavar="DUMP", help="gate the bus to follow DUMP's recorded order")
    p.add_argument(
        "--from-dump", metavar="DUMP", help="reproduce a real run's failure from its dump"
    )
    p.add_argument(
        "--runs", type=_positive, default=500, help="--from-dump: simulated runs at most"
    )
    p.add_argument(
        "--out", metavar="DIR", help="--from-dump: write workloads here (default: beside)"
    )
    p.add_argument("--no-shrink", dest="shrink", action="store_false")
    p.set_defaults(fn=cmd_replay)


def _print_report(r: dict[str, Any]) -> None:
    fails = r["failures"]
    print(
        f"explore: profile {r['profile']}, seed {r['seed']}, strategy {r['strategy']}"
        f" (depth {r['depth']}): {r['runs']} runs in {r['elapsed_s']:.1f} s"
        f" ({r['runs_per_min']:.0f} runs/min), {len(fails)} failures"
        f" in {len(r['groups'])} groups"
    )
    if not fails:
        return
    print(f"{'run':>6}  {'outcome':<10} {'trace':<16}  message")
    for f in fails:
        print(f"{f['run']:>6}  {f['outcome']:<10} {f['trace_hash'][:16]:<16}  {f['message'][:90]}")
    for g, group in enumerate(r["groups"]):
        first = next(f for f in fails if f["group"] == g)
        runs = ", ".join(map(str, group["runs"][:10])) + (
            ", ..." if len(group["runs"]) > 10 else ""
        )
        by = f" (revoked by {group['revoker']})" if group["revoker"] else ""
        print(f"\ngroup {g + 1}: {group['outcome']} {group['signature']!r}{by}: runs {runs}")
        steps = first["shrunk_steps"] or first["steps"]
        how = "shrunk" if first["shrunk_steps"] else "as drawn"
        print(f"  run {first['run']} {how} ({first['shrink_runs']} re-runs):")
        for s in steps:
            print(f"    {s}")
        print(f"  replay: {first['replay']}")


def cmd_explore(a: argparse.Namespace) -> int:
    from machine.explore.explore import explore

    r = explore(
        a.profile,
        a.runs,
        jobs=a.jobs,
        seed=a.seed,
        strategy=a.strategy,
        depth=a.depth,
        until_first=a.until_first,
        dask=a.dask,
        shrink=a.shrink,
    )
    if a.json:
        print(json.dumps(r))
    else:
        _print_report(r)
    return 1 if r["failures"] else 0


def cmd_replay(a: argparse.Namespace) -> int:
    if a.from_dump:
        return cmd_from_dump(a)
    if a.run is None:
        print("uvm-machine replay: --run K is required (or --from-dump DUMP)", file=sys.stderr)
        return 2
    from machine.explore.explore import run_seed, workload_rng
    from machine.explore.run import run_workload
    from machine.explore.workload import Workload, draw

    rs = run_seed(a.seed, a.run)
    if a.workload:
        try:
            w = Workload.from_json(json.loads(Path(a.workload).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"uvm-machine replay: {a.workload}: {e}", file=sys.stderr)
            return 2
    else:
        w = draw(workload_rng(rs))
    follow = None
    if a.follow:
        from machine.dumpfile import DumpError, read_dump
        from machine.explore.fromdump import extract

        try:
            follow = extract(read_dump(a.follow)).follow(w)
        except DumpError as e:
            print(f"uvm-machine replay: {e}", file=sys.stderr)
            return 2
    r = run_workload(w, a.profile, rs, a.strategy, a.depth, record=bool(a.html), follow=follow)
    if a.html:
        from machine.explore.diagram import render_html

        title = f"{a.profile} seed {a.seed} run {a.run} ({a.strategy}, depth {a.depth})"
        Path(a.html).write_text(render_html(r, w, title))
    if a.json:
        print(json.dumps({"outcome": r.outcome, "message": r.message, "trace_hash": r.trace_hash}))
    else:
        print(f"outcome: {r.outcome}\nmessage: {r.message}\ntrace_hash: {r.trace_hash}")
        for s in w.steps():
            print(f"  {s}")
        if a.html:
            print(f"diagram: {a.html}")
    return 0 if r.outcome == "ok" else 1


def cmd_from_dump(a: argparse.Namespace) -> int:
    from machine.dumpfile import DumpError
    from machine.explore.repro import reproduce

    if a.html or a.workload or a.follow:
        print(
            "uvm-machine replay: --from-dump takes no --html, --workload or --follow"
            " (run the replay command it prints with them)",
            file=sys.stderr,
        )
        return 2
    log = None if a.json else print
    try:
        r = reproduce(a.from_dump, a.runs, a.out, a.seed, do_shrink=a.shrink, log=log)
    except (DumpError, OSError) as e:
        print(f"uvm-machine replay: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(r))
    else:
        _print_reproduction(r)
    return 0 if r["reproduced"] else 1


def _print_reproduction(r: dict[str, Any]) -> None:
    t = r["target"]
    print(f"dump: {t['outcome']}: {t['message'][:160]}")
    f = r["follow"] or {}
    if f:
        where = f.get("first_divergence") or "never diverged"
        print(f"recorded order: {f['followed']} of {f['expected']} inputs followed; {where}")
    if not r["reproduced"]:
        print(f"not reproduced in {r['runs_tried']} runs: {r['outcomes']}")
        print(f"workload: {r['workload']}")
        return
    how = r["mode"] if r["mode"] == "recorded" else f"{r['mode']}: {r['variant']}"
    print(f"reproduced ({how}) in {r['runs_tried']} runs: {r['message'][:160]}")
    print(f"replay: {r['replay']}")
    if r["shrunk_steps"]:
        print(f"shrunk ({r['shrink_runs']} re-runs) to {len(r['shrunk_steps']) - 1} steps:")
        for s in r["shrunk_steps"][:40]:
            print(f"  {s[:160]}")
        print(f"shrunk replay: {r['shrunk_replay']}")
