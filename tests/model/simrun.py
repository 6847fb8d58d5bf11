"""The base of the model-based tests: one in-process machine per Hypothesis example.

Each example boots a fresh SimMachine on its own VirtualTimeLoop (so the
run is deterministic and fast), attaches one client session, and tears both
down at the end. `run()` drives one step to completion; 600 s of virtual
time without an answer counts as a hang.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from hypothesis.stateful import RuleBasedStateMachine

from machine.client import Machine
from machine.ipc.inmemory import VirtualTimeLoop
from machine.params import PAGE_SIZE
from machine.proto import NO_HEADER, UvmAudit, UvmAuditReply
from machine.testing import SimMachine

#: A model test's whole budget: its examples, then Hypothesis's own bound on shrinking
#: (MAX_SHRINKING_SECONDS, 300 s), so a failure always ends in a report with the shrunk
#: example. pyproject's faulthandler_timeout stays above the longest of these.
MODEL_TIMEOUT_S = 3600 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 900


class SimStateMachine(RuleBasedStateMachine):
    SEED = 0
    NFRAMES = 64
    SWAP_PAGES = 0

    def __init__(self) -> None:
        super().__init__()
        self.loop = VirtualTimeLoop(limit_s=1e7)
        self.sim_cm = SimMachine.boot(
            seed=self.SEED,
            ram_bytes=self.NFRAMES * PAGE_SIZE,
            swap_bytes=self.SWAP_PAGES * PAGE_SIZE,
        )
        self.sim: SimMachine = self.run(self.sim_cm.__aenter__())
        self.m_cm = self.sim.attach()
        self.m: Machine = self.run(self.m_cm.__aenter__())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 600))

    def audit(self) -> list[str]:
        rep = self.run(self.sim.kcall("uvm", UvmAudit(h=NO_HEADER)))
        assert isinstance(rep, UvmAuditReply)
        return rep.problems

    def finish(self) -> None:
        """Subclass hook: checks before the machine goes away."""

    def teardown(self) -> None:
        try:
            if sys.exc_info()[0] is None:
                # End-of-run checks only after a passing run: after a failure they would
                # fail again differently (a broken machine), and Hypothesis, seeing another
                # error when it replays, would report the example as flaky.
                self.finish()
            self.run(self.m_cm.__aexit__(None, None, None))
            self.run(self.sim_cm.__aexit__(None, None, None))
        finally:
            for t in asyncio.all_tasks(self.loop):
                t.cancel()
            self.loop.close()
