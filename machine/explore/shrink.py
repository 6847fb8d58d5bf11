"""Shrinking a failing workload: delta debugging (ddmin) over clients, features and operations.

    small = shrink(w, still_fails)           # still_fails(cand) re-runs cand under the same seed

A failure is kept when a candidate "still fails": the same outcome and the
same kind of message (signature(): numbers and addresses blanked, the first
SIGNATURE_CHARS characters) under the same schedule seed — the caller's
still_fails decides; this module only proposes smaller workloads. Rounds,
repeated while one of them makes progress:

  1. clients: ddmin over the client processes (at least one stays);
  2. features: ddmin over the enabled features. A feature off removes the
     operations it makes (send_loan, send_copy, file_*, mlock, hog, pd_wakeup,
     and the VM calls' truncate, minherit, madvise, mlockall) and undoes what
     it adds to the others (after_*: a send's sequel; file_*: a send's, a
     minherit's or a madvise's buffer becomes anonymous; send_loan: a trunc,
     inherit, advise or lockall op sends nothing); small_ram off boots with
     DEFAULT_RAM, slow_link off unthrottles the link. So the RAM and link
     settings stay unless the failure survives without them. A recorded
     run's workload (machine.explore.fromdump): its calls are "recorded"'s
     (never all removed: a workload keeps an op), "paced" off plays them
     as fast as they go;
  3. operations: ddmin over every client's operations (a client left with
     none is dropped).

Invariants: every candidate is a valid Workload (>= 1 client, >= 1 op, every
op made by an enabled feature); the result is the smallest workload that
still_fails accepted (or `w` itself), never one it rejected; still_fails is
called at most `max_runs` times (memoised: a candidate is never run twice).

Why ddmin and not Hypothesis's shrinker: a run costs ~0.1 s and the budget
is ~200 runs; ddmin's O(n^2) worst case on ~20 operations fits it, needs no
strategy describing the whole workload space, and shrinks the drawn
workload directly (Hypothesis shrinks its choice sequence, which would have
to be what draws the workload, and its shrinker works best with thousands
of cheap calls). The result is 1-minimal per round under the budget.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from machine.explore.workload import AFTER, RECORDED_KINDS, VM_KINDS, Op, Workload

#: The re-runs one shrink may cost.
MAX_RUNS = 200
#: The characters of a message that name its kind (after blanking numbers and addresses).
SIGNATURE_CHARS = 60
#: RAM when small_ram is off (workload.draw: 8-16 MiB without it).
DEFAULT_RAM = 8 << 20

_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\d+")
#: The feature of each other op kind.
_MAKER = {"mlock": "mlock", "hog": "hog", "wakeup": "pd_wakeup"} | {
    k: f for f, k in VM_KINDS.items()
}
#: The arg that says an op sends (what send_loan adds to it).
_SENDS = {"trunc": "loan", "inherit": "send", "advise": "send", "lockall": "send"}
T = TypeVar("T")


def signature(message: str) -> str:
    """=> the kind of a failure's message: numbers and addresses blanked, first 60 characters."""
    return _NUMBERS.sub("#", message.strip())[:SIGNATURE_CHARS]


def made_by(op: Op) -> str:
    """=> the feature whose operations `op` is one of."""
    a = op.args
    if op.kind == "send":
        return "send_loan" if a.get("loan") else "send_copy"
    if op.kind == "map":
        return "file_shared" if a.get("shared") else "file_private"
    if op.kind in RECORDED_KINDS:
        return "recorded"  # a recorded run's requests: ddmin over clients and ops takes them
    return _MAKER.get(op.kind, op.kind)


def _undo(op: Op, off: set[str]) -> Op:
    """=> `op` without what the features in `off` added to it (a buffer, a sequel, a send)."""
    if op.kind != "send" and op.kind not in _SENDS:
        return op
    args = dict(op.args)
    if args.get("then") and next((f for f, t in AFTER.items() if t == args["then"]), "") in off:
        args["then"] = ""
    if op.kind in _SENDS and args.get(_SENDS[op.kind]) and "send_loan" in off:
        args[_SENDS[op.kind]] = False
    if (args.get("buf"), True) in (
        ("shared", "file_shared" in off),
        ("private", "file_private" in off),
    ):
        args["buf"] = "anon"
    return op if args == op.args else Op(op.kind, args)


def without_features(w: Workload, off: set[str]) -> Workload:
    """=> `w` with the features in `off` disabled (module doc, round 2)."""
    clients = tuple(
        tuple(_undo(op, off) for op in ops if made_by(op) not in off) for ops in w.clients
    )
    ram, swap, bps, lat = w.ram, w.swap, w.link_bps, w.link_latency_us
    if "small_ram" in off and ram < DEFAULT_RAM:
        ram, swap = DEFAULT_RAM, 2 * DEFAULT_RAM
    if "slow_link" in off:
        bps, lat = 0, 0
    return replace(
        w,
        ram=ram,
        swap=swap,
        link_bps=bps,
        link_latency_us=lat,
        features=tuple(f for f in w.features if f not in off),
        clients=tuple(ops for ops in clients if ops),
    )


def ddmin(items: Sequence[T], fails: Callable[[list[T]], bool]) -> list[T]:
    """Zeller's ddmin: => a subset of `items` that fails and from which no chunk of the
    current granularity can be removed (1-minimal when granularity reaches single items).
    `fails(items)` is assumed; the empty set is never tried."""
    cur, n = list(items), 2
    while len(cur) >= 2:
        size = -(-len(cur) // n)
        chunks = [cur[i : i + size] for i in range(0, len(cur), size)]
        for i, chunk in enumerate(chunks):
            if fails(chunk):
                cur, n = chunk, 2
                break
            rest = [x for j, c in enumerate(chunks) if j != i for x in c]
            if len(chunks) > 2 and fails(rest):
                cur, n = rest, max(n - 1, 2)
                break
        else:
            if n >= len(cur):
                break
            n = min(2 * n, len(cur))
    return cur


class _Budget:
    """still_fails memoised by the candidate's JSON, and refused past `max_runs` calls."""

    def __init__(self, still_fails: Callable[[Workload], bool], max_runs: int) -> None:
        self.still_fails, self.left = still_fails, max_runs
        self.seen: dict[str, bool] = {}

    def __call__(self, w: Workload) -> bool:
        if w.size() == 0 or not w.clients:
            return False
        key = json.dumps(w.to_json(), sort_keys=True)
        if key not in self.seen:
            if self.left <= 0:
                return False
            self.left -= 1
            self.seen[key] = bool(self.still_fails(w))
        return self.seen[key]


def shrink(
    w: Workload, still_fails: Callable[[Workload], bool], max_runs: int = MAX_RUNS
) -> Workload:
    """=> the smallest workload still_fails accepts, found by the rounds of the module doc."""
    fails = _Budget(still_fails, max_runs)
    best = w
    while True:
        before = best.to_json()

        def keep_clients(cs: list[tuple[Op, ...]], b: Workload = best) -> Workload:
            return replace(b, clients=tuple(cs))

        cs = ddmin(best.clients, lambda cs: fails(keep_clients(cs)))
        best = keep_clients(cs)

        def keep_features(fs: list[str], b: Workload = best) -> Workload:
            return without_features(b, {f for f in b.features if f not in fs})

        if best.features:
            fs = ddmin(best.features, lambda fs: fails(keep_features(fs)))
            best = keep_features(fs)

        def keep_ops(pos: list[tuple[int, int]], b: Workload = best) -> Workload:
            kept = set(pos)
            clients = tuple(
                tuple(op for j, op in enumerate(ops) if (i, j) in kept)
                for i, ops in enumerate(b.clients)
            )
            return replace(b, clients=tuple(ops for ops in clients if ops))

        positions = [(i, j) for i, ops in enumerate(best.clients) for j in range(len(ops))]
        best = keep_ops(ddmin(positions, lambda p: fails(keep_ops(p))))
        if best.to_json() == before or fails.left <= 0:
            return best
