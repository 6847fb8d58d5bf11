"""`explain`: why a dump's machine failed, from its flight recorders.

    uvm-machine explain <state>/dump/crash-*.json --html why.html
    uvm-machine explain report/dump.json --json

Reads a dump (a crash dump, `uvm-machine dump`, `up --record`, a stress report's),
merges the roles' flight recorders into one causal history and explains the
failure (machine.explore.explain): a panic's chain, a corruption's page, send and
writer, a leak's frames with their last history. Prints the explanation in lines;
`--json` prints {outcome, message, revoker, chain, frames, ...} as one object, last
on stdout; `--html FILE` writes the sequence diagram page (as `replay --html` draws
a simulated run).

Exit status: 0 the dump was explained (whatever its outcome), 2 it could not be read
(the reason on stderr). Importing this module imports no part of the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("explain", help="explain a dump's failure from its flight recorders")
    p.add_argument("dump", help="a dump: <state>/dump/*.json, `uvm-machine dump`'s, a report's")
    p.add_argument("--html", metavar="FILE", help="write the failure's sequence diagram")
    p.add_argument("--json", action="store_true", help="one JSON object, last on stdout")
    p.set_defaults(fn=cmd_explain)


def cmd_explain(a: argparse.Namespace) -> int:
    from machine.dumpfile import DumpError, read_dump
    from machine.explore.explain import explain

    try:
        dump = read_dump(a.dump)
    except DumpError as e:
        print(f"uvm-machine explain: {e}", file=sys.stderr)
        return 2
    ex = explain(dump, str(a.dump))
    if a.html:
        Path(a.html).write_text(ex.html(f"{ex.outcome}: {Path(a.dump).name}"))
    if a.json:
        print(json.dumps(ex.to_json()))
    else:
        print(f"outcome: {ex.outcome}\nmessage: {ex.message}")
        if ex.revoker:
            print(f"revoker: {ex.revoker}")
        for line in ex.steps:
            print(line)
        if a.html:
            print(f"diagram: {a.html}")
    return 0
