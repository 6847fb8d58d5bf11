"""machine.ipc.ids: incarnations and session ids are never 0, fit a header, follow the seed."""

from __future__ import annotations

import random

from machine.ipc import ids


def test_ids_are_odd_nonzero_and_below_2_to_the_62() -> None:
    rng = random.Random(3)
    for draw in (ids.incarnation, ids.session_id):
        for _ in range(1000):
            i = draw(rng)
            assert i & 1
            assert 0 < i < 1 << ids.ID_BITS


def test_the_same_seed_draws_the_same_ids() -> None:
    a, b = random.Random(11), random.Random(11)
    assert [ids.incarnation(a), ids.session_id(a)] == [ids.incarnation(b), ids.session_id(b)]
    assert ids.session_id(random.Random(12)) != ids.session_id(random.Random(11))
