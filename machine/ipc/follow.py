"""Following a recorded delivery order on the in-memory bus: a gate that holds messages.

    gate = FollowGate(expect, classify, stall_s=0.02)
    bus.gate = gate; gate.start(loop.time())       # from here on, deliveries are gated

A recording (a dump's flight recorders, machine.ipc.recorder) says in which
order each role received its inputs. To replay a run on that order, the bus
(machine.ipc.inmemory) hands every delivery that is due to the gate instead of
to its receiver, and the gate delivers it now or holds it:

  * `classify(kind, pair, data)` names the receiving role and the message's
    key (lane kind, lane, tag: ("user", "<recorded session>", "uvm.mmap"),
    ("kernel", "uvm", "pmap.enter"), ("rep", "mmu", "pmap.count.reply"),
    ("evt", "uvm", "uvm.pressure")), or None: a message nobody follows;
  * a role's expected inputs (`expect[role]`: Expected(key, at, seq) in the
    recorded order) are taken in turn: a message whose key is the next one
    expected is delivered and the role's cursor moves on; one whose key the
    role still expects later is held; one whose key the role no longer
    expects (the simulator's own: a tap, a heartbeat) goes through;
  * a held message is released when it becomes the next expected one, or
    when its key is no longer expected;
  * a role that cannot go on -- messages held, the cursor unmoved for
    `stall_s` of virtual time past the expected input's recorded time --
    has diverged there: the gate notes where (the first divergence of all is
    the report's), then resynchronises: the cursor skips to the earliest
    expected input that one of the held messages is, the inputs skipped are
    no longer expected (if they come, they go through), and following goes
    on from there. With `resync=False` the role's messages flow freely from
    its first divergence on instead, the held ones first, in the order they
    came.

Invariants:
  * one pair (a connection each way, a subscription) delivers in order: a
    message arriving while earlier ones of its pair are held waits behind
    them, and only the head of a pair's queue is ever released (the bus's
    per-pair FIFO, which the roles rely on, holds through the gate);
  * deterministic: the gate's decisions depend only on the order and time of
    arrivals and on its inputs (dicts iterate in insertion order; timers are
    the loop's, virtual in a simulation), so a gated run is still a pure
    function of its seeds and its recording;
  * every message is delivered exactly once, or held while its role is
    followed: a stall bounds the hold, so gating never deadlocks a run;
  * before start() (and for a bus without a gate) nothing is held.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: (lane kind, lane, tag): what identifies a role's input across recording and replay.
Key = tuple[str, str, str]
#: classify(kind, pair, data) -> (receiving role, key), or None (not followed).
Classify = Callable[[str, object, bytes], tuple[str, Key] | None]
#: Virtual seconds a role may wait for its next expected input, past its recorded time.
STALL_S = 0.002


@dataclass(frozen=True)
class Expected:
    """One recorded input of a role: its key, when (seconds after the recording's
    origin, the same origin as start()'s) and its seq in the role's recorder."""

    key: Key
    at: float
    seq: int


@dataclass(frozen=True)
class Divergence:
    """Where a role could not follow: its index in the role's expected inputs, the
    input expected, the keys at the head of what it held instead, the virtual time."""

    role: str
    index: int
    expected: Expected
    held: tuple[Key, ...]
    t: float

    def describe(self) -> str:
        e = self.expected
        held = "; ".join("/".join(k) for k in self.held[:4]) or "nothing"
        return (
            f"{self.role}: input {self.index + 1} (recorded seq {e.seq}, {'/'.join(e.key)},"
            f" at {e.at * 1e3:.3f} ms) never came by {self.t * 1e3:.3f} ms; held: {held}"
        )


@dataclass
class _Held:
    key: Key
    deliver: Callable[..., None]
    args: tuple[Any, ...]


@dataclass
class _Role:
    name: str
    expect: list[Expected]
    cursor: int = 0
    free: bool = False
    left: collections.Counter[Key] = field(default_factory=collections.Counter)
    #: pair id -> its held messages, in arrival order (dict: insertion order)
    queues: dict[int, collections.deque[_Held]] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None
    armed_at: int = -1  # the cursor when the stall timer was armed
    divergence: Divergence | None = None  # the first
    matched: int = 0  # inputs delivered as the next expected one
    skipped: int = 0  # expected inputs given up at a resynchronisation
    stalls: int = 0

    def __post_init__(self) -> None:
        self.left.update(e.key for e in self.expect)
        self.free = not self.expect

    def wants_later(self, key: Key) -> bool:
        return not self.free and self.left[key] > 0

    def is_next(self, key: Key) -> bool:
        return self.cursor < len(self.expect) and self.expect[self.cursor].key == key


class FollowGate:
    """Holds the bus's deliveries so each role gets its inputs in the recorded order
    (module doc). The bus calls admit(); the report is report()."""

    def __init__(
        self,
        expect: dict[str, list[Expected]],
        classify: Classify,
        stall_s: float = STALL_S,
        resync: bool = True,
    ) -> None:
        self.roles = {r: _Role(r, list(es)) for r, es in expect.items()}
        self.classify = classify
        self.stall_s = stall_s
        self.resync = resync
        self.t0: float | None = None
        self.first: Divergence | None = None
        self.held_max = 0
        self.passed = 0  # deliveries the gate let through without following them
        #: "lane kind/tag" -> stalls waiting for such an input (where following fails)
        self.stalled_on: collections.Counter[str] = collections.Counter()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, t0: float) -> None:
        """Follow from now on; `t0` is the loop time the recording's origin maps to."""
        self.t0 = t0
        self._loop = asyncio.get_running_loop()

    # -- the bus's hook -------------------------------------------------------------

    def admit(
        self, kind: str, pair: object, data: bytes, deliver: Callable[..., None], *args: Any
    ) -> None:
        """A message of `kind` on `pair` is due: deliver(*args) now, or hold it."""
        c = self.classify(kind, pair, data) if self.t0 is not None else None
        r = self.roles.get(c[0]) if c is not None else None
        if c is None or r is None:
            self.passed += 1
            deliver(*args)
            return
        key = c[1]
        pid = id(pair) * 2 + (kind == "rep")
        q = r.queues.get(pid)
        if q is not None:  # earlier ones of its pair wait: so does it
            q.append(_Held(key, deliver, args))
            self._pump(r)
            return
        if not r.wants_later(key):
            self.passed += 1
            deliver(*args)
            return
        if r.is_next(key):
            self._advance(r)
            deliver(*args)
            self._pump(r)
            return
        r.queues[pid] = collections.deque([_Held(key, deliver, args)])
        self.held_max = max(self.held_max, sum(len(x) for x in r.queues.values()))
        self._arm(r)

    # -- following --------------------------------------------------------------------

    def _advance(self, r: _Role, matched: bool = True) -> None:
        r.left[r.expect[r.cursor].key] -= 1
        r.cursor += 1
        r.matched += matched
        r.skipped += not matched
        if r.cursor >= len(r.expect):
            r.free = True  # followed to the end

    def _pump(self, r: _Role) -> None:
        """Release every queue head that may go now, until none may."""
        progress = True
        while progress and r.queues:
            progress = False
            for pid, q in list(r.queues.items()):
                head = q[0]
                nxt = r.is_next(head.key) and not r.free
                if not (r.free or nxt or not r.wants_later(head.key)):
                    continue
                q.popleft()
                if not q:
                    del r.queues[pid]
                if nxt:
                    self._advance(r)
                else:
                    self.passed += 1
                head.deliver(*head.args)
                progress = True
                break
        if r.queues:
            self._arm(r)
        elif r.timer is not None:
            r.timer.cancel()
            r.timer = None

    def _arm(self, r: _Role) -> None:
        if r.timer is not None and r.armed_at == r.cursor:
            return
        if r.timer is not None:
            r.timer.cancel()
        loop = self._loop
        assert loop is not None
        assert self.t0 is not None
        due = self.t0 + r.expect[r.cursor].at if r.cursor < len(r.expect) else 0.0
        r.armed_at = r.cursor
        r.timer = loop.call_at(max(loop.time(), due) + self.stall_s, self._stalled, r)

    def _stalled(self, r: _Role) -> None:
        r.timer = None
        if not r.queues or r.free:
            return
        if r.cursor != r.armed_at:
            self._arm(r)
            return
        loop = self._loop
        assert loop is not None
        assert self.t0 is not None
        heads = tuple(q[0].key for q in r.queues.values())
        r.stalls += 1
        self.stalled_on["/".join(r.expect[r.cursor].key[::2])] += 1
        if r.divergence is None:
            r.divergence = Divergence(
                r.name, r.cursor, r.expect[r.cursor], heads, loop.time() - self.t0
            )
            if self.first is None:
                self.first = r.divergence
        if not self.resync:
            r.free = True
        else:  # skip to the earliest expected input that a held message is
            want = set(heads)
            while r.cursor < len(r.expect) and r.expect[r.cursor].key not in want:
                self._advance(r, matched=False)
        self._pump(r)

    # -- the report -----------------------------------------------------------------

    def followed(self) -> tuple[int, int]:
        """=> (inputs delivered in the recorded order, inputs expected), every role."""
        return (
            sum(r.matched for r in self.roles.values()),
            sum(len(r.expect) for r in self.roles.values()),
        )

    def report(self) -> dict[str, Any]:
        """What was followed, per role, and the first divergence (JSON-ready)."""
        done, total = self.followed()
        return {
            "followed": done,
            "expected": total,
            "exact": self.first is None,  # never stalled (the run may end before the rest)
            "complete": done == total,
            "first_divergence": self.first.describe() if self.first else None,
            "roles": {
                r.name: {
                    "followed": r.matched,
                    "expected": len(r.expect),
                    "skipped": r.skipped,
                    "stalls": r.stalls,
                    "diverged": r.divergence.describe() if r.divergence else None,
                }
                for r in self.roles.values()
            },
            "stalled_on": dict(self.stalled_on.most_common(6)),
            "passed": self.passed,
            "held_max": self.held_max,
        }
