"""The stress harness: Locust users that verify every byte, VM metrics, a nemesis.

Everything here runs in Locust processes (gevent): `uvm-machine stress` and
`locust -f machine/stress/locustfile.py`. The rest of `machine` never imports
this package, and importing the package itself imports nothing (no gevent
until a module of it is used). docs/stress.md is the guide; its modules:

  outcome.py        Corruption, the run's record (panic, corruption), thresholds, exit status
  model.py          byte models of what memory should hold
  vmstats.py        the VM series sampled once a second, vm.csv
  charts.py         SVG charts of the series, nemesis windows shaded; into report.html
  webui.py          the VM tab in Locust's web UI
  greenproc.py      processes, files, sockets, the wire of the green client (the async
                    client's, driven without a loop)
  green.py          the synchronous client greenlets use (zmq.green): sessions, events
  bridge.py         the asyncio bridge, the measured alternative to green.py
  base.py           MachineUser: attach/detach, op() timing and reporting, the open model
  nemesis_plan.py   the nemesis's schedule and checks (pure)
  nemesis_faults.py the six faults; nemesis.py runs them (victim.py: client-kill's victim)
  users_common.py   what the users share; users_memory.py (pattern, forker, hog),
                    users_io.py (sender, files, churn); users.py: USERS by name
  control.py        the master's Controller: sampling, nemesis, panic stop, verdict
  locustfile.py     the locustfile: options, --mix, a Harness per process
  __main__.py       `python -m machine.stress`: Locust on that locustfile

Each module imports only those listed above it (tests/unit/client/test_imports.py);
outside this package only machine/cli/stress.py imports it, and only its pure modules
(nemesis_plan, outcome), so gevent never reaches an asyncio process.
"""
