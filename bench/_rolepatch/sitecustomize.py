"""Applies bench/uvm_bench_patches.py in processes of a machine that bench_machine.py booted.

bench_machine.py starts `uvm-machine up` with PYTHONPATH=bench/_rolepatch and
UVM_BENCH_PATCHES=name,...; Python imports this module at start-up in the
supervisor, the multiprocess forkserver and (by inheritance) every role it
forks. Without UVM_BENCH_PATCHES it does nothing.
"""

from __future__ import annotations

import os
import sys

_spec = os.environ.get("UVM_BENCH_PATCHES", "")
if _spec and _spec != "none":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import uvm_bench_patches

    uvm_bench_patches.apply(_spec)
    del sys.path[0]
