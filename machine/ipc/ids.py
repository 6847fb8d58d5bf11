"""Identifiers the machine makes up: a role's incarnation, a client's session id.

Both travel in every header's `incarnation` field (a positive int64), so both are
drawn the same way: 62 random bits with the low bit set.
  * never 0: 0 means "no session" (the public requests of an anonymous client);
  * below 2**62: fits the header's range with room to spare;
  * from the caller's `random.Random`, never from the module's global state: a
    seeded simulation draws the same identifiers on every run, and a real role
    seeds its own generator from the OS.
Uniqueness is the caller's to check where it matters (uvm re-draws a session id
that is already live); between incarnations a clash is a 2**-61 chance that only
makes a restart look like the same process.
"""

from __future__ import annotations

import random

ID_BITS = 62


def _draw(rng: random.Random) -> int:
    return rng.getrandbits(ID_BITS) | 1


def incarnation(rng: random.Random) -> int:
    """A new process incarnation (a role's, the supervisor's). => odd, in [1, 2**62)."""
    return _draw(rng)


def session_id(rng: random.Random) -> int:
    """A new client session id (uvm.attach). => odd, in [1, 2**62); the caller re-draws
    an id that is already live."""
    return _draw(rng)
