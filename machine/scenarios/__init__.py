"""Scenarios of uvm-semantics.md section 14 with loans, the network and profiles, runnable
on a fresh machine under any profile (`uvm-machine scenario`, `uvm-machine matrix`)."""

from machine.scenarios.catalog import SCENARIOS, Scenario, ScenarioFailure
from machine.scenarios.runner import Outcome, run_matrix, run_scenario

__all__ = ["SCENARIOS", "Outcome", "Scenario", "ScenarioFailure", "run_matrix", "run_scenario"]
