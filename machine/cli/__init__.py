"""`uvm-machine` (also `python -m machine`): the command line, one module per group.

  args.py       argument types (RAM sizes, endpoints, profiles, limits) and the
                option groups several commands share; env-var defaults
  life.py       the machine's life: up, status, role, supervise
  tools.py      the operator's tools: panic, ping (kernel endpoints), profile
  scenarios.py  scenario and matrix
  stress.py     stress: boot or attach, Locust (machine/stress) run as child processes
  explore.py    explore and replay: seeded in-process runs (machine/explore)
  parser.py     the parser (every subcommand and its options) and main()

Layering: args <- life, tools, scenarios, stress, explore <- parser <- this package <-
machine.__main__. A command module never imports another; each command
imports the heavy parts it runs (supervisor, roles, scenarios) when it runs,
so a healthcheck `ping` starts in a fraction of a second. Commands return
their exit status; main() returns it and `machine.__main__` exits with it.
"""

from machine.cli.parser import DESCRIPTION, main, parser

__all__ = ["DESCRIPTION", "main", "parser"]
