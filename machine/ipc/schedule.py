"""The in-memory bus's delivery schedule: how long each message is in flight.

On the virtual-time loop handling a message takes no time, so the order in
which messages arrive is decided by their delays alone. A Schedule draws each
delay; InMemoryTransport asks it once per message it sends (a request, a reply
or an event) and then keeps the bus's own guarantees on top:

  * One connection delivers in order each way, and one subscriber receives
    its events in order (ZeroMQ's guarantee; roles rely on it): the bus
    delivers a message never before the previous one on the same pair,
    whatever delay the schedule drew. A schedule only reorders messages of
    different pairs.
  * A schedule is a function of its Random alone (and of the sequence of
    delay() calls): the same seed and the same program give the same
    interleaving, in any process. No iteration over sets or dicts of str
    decides anything here (PYTHONHASHSEED does not matter).

Strategies:
  * RandomSchedule: a uniform delay in [lo, hi]. With the bus's seeded Random
    it is the bus's default, drawing exactly what the bus drew before
    schedules existed (one rng.uniform(lo, hi) per message), so seeded tests
    and the scenario matrix keep their traces.
  * PctSchedule: probabilistic concurrency testing (Burckhardt et al., ASPLOS
    2010; Coyote's "PCT" strategy). Each destination endpoint gets a distinct
    random priority the first time a message goes to it (inserted at a
    random place among the endpoints not yet demoted); a message to a
    higher-priority endpoint gets a smaller delay (the highest lo, the lowest
    hi, evenly spaced between). At d-1 change points, message counts drawn
    in [0, horizon), the endpoint of the message just scheduled drops below
    all others, and stays below every endpoint that appears later (as in the
    paper, where change points assign priorities 1..d-1, under every initial
    one). In the paper's setting (n threads, k steps) a bug of depth d is
    hit with probability at least 1/(n * k^(d-1)) per run; here endpoints
    play the threads and messages the steps (an analogy, not a proof).

The endpoint passed is the server's (requests and their replies both count
towards "inproc://uvm/kernel") or the publisher's ("inproc://uvm/pub").
"""

from __future__ import annotations

import random
from typing import Protocol

#: Strategies make_schedule() knows.
STRATEGIES = ("random", "pct")


class Schedule(Protocol):
    """Decides each delivery's delay on the in-memory bus."""

    def delay(self, endpoint: str, kind: str) -> float:
        """Seconds in flight for one message to `endpoint`; kind: "req" | "rep" | "evt"."""
        ...


class RandomSchedule:
    """A uniform random delay in [lo_s, hi_s] per message (the bus's default)."""

    def __init__(self, rng: random.Random, lo_s: float = 20e-6, hi_s: float = 200e-6) -> None:
        self.rng, self.lo, self.hi = rng, lo_s, hi_s

    def delay(self, endpoint: str, kind: str) -> float:
        return self.rng.uniform(self.lo, self.hi)


class PctSchedule:
    """Priority-based delays with d-1 random priority change points (PCT)."""

    def __init__(
        self,
        rng: random.Random,
        depth: int = 3,
        horizon: int = 20000,
        lo_s: float = 20e-6,
        hi_s: float = 200e-6,
    ) -> None:
        if depth < 1 or horizon < 1:
            raise ValueError(f"depth {depth} and horizon {horizon} must be >= 1")
        self.rng, self.lo, self.hi = rng, lo_s, hi_s
        self.depth = depth
        #: Endpoints never demoted, highest priority first; then the demoted ones,
        #: the latest demoted last.
        self._high: list[str] = []
        self._low: list[str] = []
        self._rank: dict[str, int] = {}
        #: Message counts (0-based) after whose scheduling the endpoint drops to the lowest.
        self.change_points: set[int] = {rng.randrange(horizon) for _ in range(depth - 1)}
        self.count = 0
        #: (message count, endpoint) of each demotion made, in order.
        self.changes: list[tuple[int, str]] = []

    def priorities(self) -> list[str]:
        """The endpoints, highest priority first."""
        return self._high + self._low

    def delay(self, endpoint: str, kind: str) -> float:
        rank = self._rank.get(endpoint)
        if rank is None:
            self._high.insert(self.rng.randint(0, len(self._high)), endpoint)
            self._reranked()
            rank = self._rank[endpoint]
        n = len(self._rank)
        d = self.lo + (self.hi - self.lo) * rank / (n - 1) if n > 1 else self.lo
        if self.count in self.change_points:
            (self._high if endpoint in self._high else self._low).remove(endpoint)
            self._low.append(endpoint)
            self._reranked()
            self.changes.append((self.count, endpoint))
        self.count += 1
        return d

    def _reranked(self) -> None:
        self._rank = {ep: i for i, ep in enumerate(self._high + self._low)}


def make_schedule(
    strategy: str,
    rng: random.Random,
    depth: int = 3,
    *,
    lo_s: float = 20e-6,
    hi_s: float = 200e-6,
) -> Schedule:
    """The schedule named `strategy` ("random" | "pct"), drawing from `rng`."""
    if strategy == "random":
        return RandomSchedule(rng, lo_s, hi_s)
    if strategy == "pct":
        return PctSchedule(rng, depth, lo_s=lo_s, hi_s=hi_s)
    raise ValueError(f"unknown schedule strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
