"""Benchmarks (not tests): `python -m bench summary [--quick] --json`, and the bench_*.py
scripts, each also runnable on its own (`.venv/bin/python bench/bench_net.py`).

The scripts import each other as top-level modules (`from bench_uvm import booted`), which
works when one of them is run as a script (its directory is then sys.path[0]); importing
the package puts the same directory on sys.path, so `bench.summary` can reuse them as they
are. Nothing here patches the machine: the benches use its public client API
(`machine.client`) and its CLI (`uvm-machine up`).
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
