"""The flight recorder alone: what an entry holds, its bounds, and the JSON round trip."""

from __future__ import annotations

import itertools
import random
import tracemalloc

from machine.ipc.inmemory import InMemoryTransport
from machine.ipc.recorder import (
    FIELDS,
    RECORD_OVERHEAD,
    REFUSED_KEEP,
    FlightRecorder,
    from_json,
    to_json,
)
from machine.ipc.service import Service
from machine.limits import Limits
from machine.proto import CtlDumpReply, CtlPing, Header, Scope, encode


def _rec(events: int = 100, nbytes: int = 1 << 20, body: int = 1 << 16) -> FlightRecorder:
    ids = itertools.count(1)
    clock = (x / 10 for x in itertools.count())
    return FlightRecorder(
        "uvm", lambda: next(ids), lambda: next(clock), events=events, nbytes=nbytes, body=body
    )


def test_an_entry_holds_its_place_time_ids_and_bytes() -> None:
    r = _rec()
    r.record("req", "uvm/kernel", 7, b"abc")
    r.note("lease reap", session=5)
    e1, e2 = r.export()["entries"]
    assert dict(zip(FIELDS, e1, strict=True)) | {"wall_ns": 0} == {
        "seq": 1, "kind": "req", "ep": "uvm/kernel", "conn": 7, "wall_ns": 0, "mono": 0.0,
        "last_id": 1, "size": 3, "data": b"abc",
    }  # fmt: skip
    assert e1[4] > 0
    assert e2[4] >= e1[4]  # wall time, ns
    assert e2[:4] == [2, "int", "uvm/int", 0]
    assert e2[8] == {"what": "lease reap", "session": 5}
    assert e2[7] == len(r.ring[-1][8])  # kept encoded: its size is what the bound counts
    assert e2[5] > e1[5]
    assert e2[6] > e1[6]  # the role's clock and last msg_id move on


def test_the_byte_bound_is_what_the_entries_really_take() -> None:
    """Bodies and notes alike (a transmit note per mbuf a client sends): the memory the
    ring holds stays within the bound, as tracemalloc measures it."""
    bound = 4 << 20
    r = _rec(events=10**9, nbytes=bound, body=2 << 20)
    tracemalloc.start()
    try:
        for i in range(30_000):
            r.record("req", "mmu/user", 1804289383, bytes(4200) if i % 3 == 0 else bytes(100))
            r.note("tx", session=(1 << 62) - 1, sock=i, seq=i, off=i << 16, n=65536,
                   kva=(1 << 62) + (i << 16), pgoff=0, pfns=list(range(i, i + 16)))  # fmt: skip
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.dropped > 0
    assert r.held <= bound
    assert held <= 1.2 * bound, (held, bound)


def test_the_oldest_entries_go_first_by_count() -> None:
    r = _rec(events=5)
    for i in range(12):
        r.record("req", "uvm/user", 0, bytes([i]))
    assert [e[0] for e in r.ring] == [8, 9, 10, 11, 12]  # contiguous, the newest kept
    assert r.dropped == 7
    assert r.seq == 12
    assert r.ring[0][0] - 1 == r.dropped


def test_the_oldest_entries_go_first_by_bytes() -> None:
    r = _rec(nbytes=3 * (1000 + RECORD_OVERHEAD))
    for i in range(10):
        r.record("req", "mmu/user", 0, bytes([i]) * 1000)
    assert len(r.ring) == 3
    assert r.held <= r.nbytes
    assert [e[8][0] for e in r.ring] == [7, 8, 9]
    big = _rec(nbytes=100)
    big.record("req", "mmu/user", 0, b"x" * 5000)  # larger than the bound alone: kept
    assert len(big.ring) == 1
    assert big.dropped == 0


def test_a_long_body_is_cut_but_keeps_its_size() -> None:
    r = _rec(body=100)
    r.record("req", "mmu/user", 0, b"y" * 1000)
    assert r.ring[-1][7] == 1000
    assert r.ring[-1][8] == b"y" * 100
    assert r.cut == 1


def test_a_refused_request_keeps_only_its_first_bytes() -> None:
    r = _rec()
    junk = b"\xc1" * (64 << 10)
    r.record("req", "uvm/user", 3, junk)
    held = r.held
    r.refused(junk)
    assert r.ring[-1][8] == junk[:REFUSED_KEEP]
    assert r.ring[-1][7] == len(junk)
    assert r.held == held - (len(junk) - REFUSED_KEEP)
    r.refused(b"another")  # not the newest entry's bytes: nothing changes
    assert r.ring[-1][8] == junk[:REFUSED_KEEP]


def test_a_dump_reply_s_body_is_not_kept() -> None:
    """A ctl.dump reply holds the role's own recorder: the supervisor keeps its tag only."""
    r = _rec()
    rep = encode(
        CtlDumpReply(h=Header(msg_id=1, sender="uvm", incarnation=1), state={"x": "y" * 9000})
    )
    r.record("rep", "uvm/kernel", 0, rep)
    assert len(r.ring[-1][8]) == 64
    assert r.ring[-1][7] == len(rep)


def test_an_off_recorder_records_nothing() -> None:
    r = FlightRecorder("mmu", lambda: 0, lambda: 0.0, events=10, nbytes=10, body=10, on=False)
    r.record("req", "mmu/user", 0, b"x")
    r.note("tx")
    assert not r.ring
    assert r.seq == 0


def test_the_export_round_trips_through_json() -> None:
    r = _rec()
    r.record("req", "uvm/user", 1, b"\x00\xff body")
    r.note("woke", reason="pressure", free=3)
    out = r.export(incarnation=99, pid=5)
    assert out["incarnation"] == 99
    assert out["recorded"] == 2
    assert out["fields"] == list(FIELDS)
    back = from_json(to_json(out))
    assert back["entries"] == out["entries"]


async def test_a_service_records_every_request_with_its_connection() -> None:
    """The transport's callback records the request before the checks; a refused one keeps
    only its first bytes, and the bounds are the limits' record_* (up --limit)."""
    svc = Service(
        InMemoryTransport(0),
        rng=random.Random(0),
        limits=Limits(record_events=3, record_bytes=1 << 20, record_body=1 << 16),
    )
    ping = encode(CtlPing(h=Header(msg_id=4, sender="x", incarnation=0)))
    svc._on_kernel(ping)
    svc._on_user(b"\xc1" * 1000)  # does not decode
    kinds = [(e[1], e[2], e[7], len(e[8])) for e in svc.recorder.ring]
    assert kinds == [
        ("req", "?/kernel", len(ping), len(ping)),
        ("req", "?/user", 1000, REFUSED_KEEP),
    ]
    assert svc.ident.recorder is svc.recorder
    for i in range(5):
        svc.handle(ping, Scope.KERNEL)  # not through the transport: not recorded
        svc._on_kernel(ping)
        assert svc.recorder.seq == 3 + i
    assert len(svc.recorder.ring) == 3
