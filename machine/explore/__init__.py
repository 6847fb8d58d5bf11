"""Seeded exploration of the in-process machine (issue 13): many runs, each a drawn
workload on a drawn delivery schedule, every run checked, every failure replayable.

Modules, each importing only those above it (tests/unit/client/test_imports.py):
  * workload  -- swarm workloads: a random subset of features, operations drawn
    from it, readable steps, a JSON round trip; also a recorded run's requests
    (call and kcall ops).
  * calls     -- a recorded run's requests played: one session per recorded
    session, ids mapped, payloads checked against RAM at send, optional pace.
  * vmops     -- the ops of the VM calls (ftruncate while mapped, minherit at fork,
    madvise, mlockall), each checking what it reads against their semantics.
  * run       -- one run: boot a SimMachine with the workload's RAM and profile and
    the schedule (machine.ipc.schedule: random, or PCT with d-1 priority change
    points), play the workload, check it, classify it (a RunResult).
  * shrink    -- a failing workload made minimal, still failing the same way.
  * explore   -- many runs (worker processes, or a Dask cluster), seeds per run
    (run_seed), failures with their replay command.
  * sequence  -- a recorded run's deliveries as arrows among the lifelines, and the
    panic's causal chain found in the messages (revocation, kenter, faulting read).
  * diagram   -- the sequence diagram (SVG in a standalone HTML page).
  * flight    -- a dump's flight recorders (a real machine's) merged into one causal
    history that sequence and diagram read as they read a simulated run.
  * frames    -- that history as a shadow of the mappings and every event of each frame.
  * explain   -- why the dump's machine failed: a panic's chain, a corruption's page,
    send and writer, a leak's frames (`uvm-machine explain`).
  * fromdump  -- a dump's client and tool requests as a workload, and each
    role's recorded order as a plan the bus can follow (machine.ipc.follow).
  * repro     -- a dump's failure reproduced: the recorded order first, then a
    search over schedules and pacing, then shrinking (`replay --from-dump`).

Invariant: a run is a function of its seeds alone (same seeds, same trace digest,
in any process; PYTHONHASHSEED does not matter). Nothing here uses gevent.
"""
