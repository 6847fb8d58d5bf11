"""Loads bench/trace_patch.py into the processes of a machine that bench_machine.py booted.

bench_machine.py starts `uvm-machine up` with PYTHONPATH=bench/_rolepatch and
UVM_BENCH_TRACE=1; Python imports this module at start-up in the supervisor and in the
multiprocess forkserver, and every role forked from the forkserver inherits the patched
Service. Without UVM_BENCH_TRACE it does nothing.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("UVM_BENCH_TRACE") == "1":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import trace_patch

    trace_patch.install_roles()
    del sys.path[0]
