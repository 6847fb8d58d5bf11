"""`scenario` and `matrix`: run scenarios on fresh machines and report pass/fail.

A row is one scenario under one profile: the outcome the run observed, the
outcome predicted for that profile, PASS when they agree. Exit codes:
`scenario` 0 if its row passed, 1 if not, 2 for an unknown name; `matrix` 0
if every row passed, else 1. `--inprocess` runs every role in this process
on the seeded in-memory bus with virtual time (a run is a function of
--seed); otherwise each scenario boots `uvm-machine up` as real processes.
Rows are printed as they finish (flushed), so a long matrix shows progress.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from machine.profile import SHIPPED

HEADER = f"{'scenario':<22} {'profile':<9} {'outcome':<11} {'expected':<11} pass"


def _run_scenarios(coro: Any, inprocess: bool) -> Any:
    if inprocess:
        from machine.ipc.inmemory import run_simulation

        return run_simulation(coro)
    return asyncio.run(coro)


def _print_row(o: Any, width: int = 22) -> None:
    mark = "PASS" if o.passed else "FAIL"
    print(
        f"{o.scenario:<{width}} {o.profile:<9} {o.outcome:<11} {o.expected:<11} {mark}  {o.detail}",
        flush=True,
    )


def cmd_scenario(a: argparse.Namespace) -> int:
    from machine.scenarios import SCENARIOS, run_scenario
    from machine.scenarios.runner import outcome_json

    if a.list or not a.name:
        for sc in SCENARIOS.values():
            print(f"{sc.name:<22} [{sc.section}] {sc.summary}")
        return 0
    if a.name not in SCENARIOS:
        print(f"uvm-machine scenario: no scenario {a.name!r} (see --list)", file=sys.stderr)
        return 2
    o = _run_scenarios(
        run_scenario(a.name, a.profile, inprocess=a.inprocess, seed=a.seed), a.inprocess
    )
    if a.json:
        print(json.dumps(outcome_json(o), indent=1))
    else:
        print(HEADER)
        _print_row(o)
        for k, v in o.evidence.items():
            print(f"  {k}: {v}")
    return 0 if o.passed else 1


def cmd_matrix(a: argparse.Namespace) -> int:
    from machine.scenarios import run_matrix

    profiles = a.profiles.split(",") if a.profiles else list(SHIPPED)
    names = a.scenarios.split(",") if a.scenarios else None
    if not a.json:
        print(HEADER, flush=True)
    rows = _run_scenarios(
        run_matrix(
            profiles,
            names,
            inprocess=a.inprocess,
            seed=a.seed,
            on_row=None if a.json else _print_row,
        ),
        a.inprocess,
    )
    failed = [o for o in rows if not o.passed]
    if a.json:
        print(json.dumps({"rows": [o.row() for o in rows]}, indent=1))
    else:
        print(f"{len(rows) - len(failed)}/{len(rows)} rows as expected")
    return 1 if failed else 0
