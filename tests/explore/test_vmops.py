"""The VM calls' ops (machine.explore.vmops): each runs clean under modern and the same
twice, each check catches a machine that breaks its rule (the client's call made to do
nothing or the wrong thing), a real failure through them shrinks to them, and drawn seeds
with each VM feature are deterministic and replay."""

from __future__ import annotations

import contextlib
import json
import random
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from machine.client import File, Process, RequestError
from machine.explore.explore import run_seed, workload_rng
from machine.explore.run import run_workload
from machine.explore.shrink import made_by, shrink, signature
from machine.explore.vmops import fill
from machine.explore.workload import VM_FEATURES, VM_KINDS, Op, Workload, draw
from machine.proto import Errno, UvmWire

MIB = 1 << 20
PAGE = 4096


def trunc(**kw: Any) -> Op:
    args = {"pages": 4, "view": "shared", "cow": 0, "cut": 5000, "loan": False, "grow": False}
    return Op("trunc", args | kw)


def inherit(how: str, **kw: Any) -> Op:
    return Op("inherit", {"pages": 2, "buf": "anon", "inherit": how, "send": False} | kw)


def advise(advice: str, **kw: Any) -> Op:
    return Op("advise", {"pages": 3, "buf": "anon", "advice": advice, "fork": False} | kw)


def lockall(flags: str, **kw: Any) -> Op:
    args = {"pages": 2, "more": 3, "flags": flags, "send": False, "end": "munlockall"}
    return Op("lockall", args | kw)


FEATS = ("send_loan", "file_shared", "file_private", *VM_FEATURES)


def one(*ops: Op, ram: int = 2 * MIB, link: int = 0) -> Workload:
    return Workload(ram, 4 * MIB, (*FEATS, *(("slow_link",) if link else ())), link, 0, (ops,))


#: Each op in its variants (an id, the op).
VARIANTS = [
    ("trunc-shared", trunc()),
    ("trunc-aligned-grow", trunc(cut=8192, grow=True)),
    ("trunc-to-zero", trunc(cut=0, grow=True)),
    ("trunc-private-cow", trunc(view="private", cow=0b1010, cut=4100, grow=True)),
    ("trunc-loaned", trunc(loan=True, cut=6000, grow=True)),
    ("trunc-loaned-private", trunc(view="private", cow=0b0110, loan=True, cut=1)),
    *[
        (f"inherit-{h}-{b}", inherit(h, buf=b))
        for h in ("none", "copy", "share", "zero")
        for b in ("anon", "shared", "private")
    ],
    *[(f"inherit-{h}-sent", inherit(h, send=True)) for h in ("none", "copy", "share", "zero")],
    *[
        (f"advise-{a}-{b}", advise(a, buf=b))
        for a in ("dontneed", "free")
        for b in ("anon", "shared", "private")
    ],
    ("advise-free-forked", advise("free", fork=True)),
    ("advise-free-sent", advise("free", send=True)),
    ("advise-free-private-sent", advise("free", send=True, buf="private")),
    ("advise-dontneed-sent-forked", advise("dontneed", send=True, fork=True)),
    ("advise-dontneed-forked", advise("dontneed", fork=True, buf="private")),
    *[(f"lockall-{f}", lockall(f)) for f in ("current", "future", "both")],
    ("lockall-both-sent-exit", lockall("both", send=True, end="exit")),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("name", "op"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_each_vm_op_is_ok_under_modern_and_the_same_run_twice(name: str, op: Op) -> None:
    w = one(op, Op("wakeup", {}))
    a = run_workload(w, "modern", 7)
    assert a.outcome == "ok", (name, a.message)
    b = run_workload(w, "modern", 7)
    assert (b.outcome, b.message, b.trace_hash) == (a.outcome, a.message, a.trace_hash)


@pytest.mark.timeout(120)
def test_the_vm_ops_under_pressure_beside_loans_on_a_slow_link_are_ok_under_modern() -> None:
    """Every kind at once in three clients, a hog on 1 MiB of RAM, a 10 Mbit/s link."""
    w = Workload(
        MIB,
        6 * MIB,
        (*FEATS, "hog", "small_ram", "slow_link", "pd_wakeup"),
        10_000_000,
        500,
        (
            (trunc(loan=True, view="private", cow=1, grow=True), advise("free"), lockall("both")),
            (Op("hog", {"pages": 330}), Op("wakeup", {})),
            (inherit("share", send=True, buf="private"), advise("dontneed", buf="shared")),
        ),
    )
    for seed in range(4):
        r = run_workload(w, "modern", seed)
        assert r.outcome == "ok", (seed, r.message)


@contextlib.contextmanager
def patched(cls: type, name: str, fn: Callable[..., Any]) -> Iterator[None]:
    """The client's call `name` replaced (a machine that breaks the call's rule)."""
    old = getattr(cls, name)
    setattr(cls, name, fn)
    try:
        yield
    finally:
        setattr(cls, name, old)


async def _nothing(self: Any, *a: Any, **kw: Any) -> None:
    return None


async def _half_zeroing_madvise(self: Process, va: int, length: int, advice: int) -> None:
    await self.store(va, bytes(PAGE // 2))  # "frees" half a page: neither zeros nor its bytes


#: (what breaks, the op, the message the run must give).
BROKEN: list[tuple[str, type, str, Callable[..., Any], Op, str]] = [
    ("ftruncate does nothing", File, "ftruncate", _nothing, trunc(cut=4096), "did not fault"),
    (
        "ftruncate leaves the last page's tail",
        File,
        "ftruncate",
        _nothing,
        trunc(cut=4097, pages=2),
        "zeros past the end",
    ),
    ("minherit does nothing (NONE)", Process, "minherit", _nothing, inherit("none"), "did not"),
    ("minherit does nothing (ZERO)", Process, "minherit", _nothing, inherit("zero"), "ZERO"),
    ("minherit does nothing (SHARE)", Process, "minherit", _nothing, inherit("share"), "SHARE"),
    (
        "madvise zeroes half a page",
        Process,
        "madvise",
        _half_zeroing_madvise,
        advise("free"),
        "neither",
    ),
    ("mlockall does nothing", Process, "mlockall", _nothing, lockall("future"), "mincore"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("what", "cls", "name", "fn", "op", "says"), BROKEN, ids=[b[0] for b in BROKEN]
)
def test_each_check_catches_a_machine_that_breaks_the_calls_rule(
    what: str, cls: type, name: str, fn: Callable[..., Any], op: Op, says: str
) -> None:
    with patched(cls, name, fn):
        r = run_workload(one(op), "modern", 1)
    assert r.outcome == "error", (what, r.message)
    assert "WorkloadError" in r.message, r.message
    assert says in r.message, r.message


SEED = 4


@pytest.mark.timeout(180)
def test_a_real_failure_through_a_vm_op_shrinks_to_it_and_replays() -> None:
    """silvers panics when a truncation revokes a wired (loaned) page: among other ops,
    the shrinker keeps the loaned trunc alone, and the shrunk run fails the same way.
    (Its seed is one whose truncation lands while the send is still loaned: since the
    driver reads the shared kernel page table, a loan ends sooner, and seed 5's no longer
    does; most seeds still do.)"""
    w = Workload(
        2 * MIB,
        4 * MIB,
        (*FEATS, "mlock", "pd_wakeup"),
        0,
        0,
        (
            (Op("mlock", {"pages": 2, "send": False}), trunc(loan=True, cut=4096)),
            (advise("dontneed"), Op("wakeup", {}), inherit("copy")),
        ),
    )
    first = run_workload(w, "silvers", SEED)
    assert first.outcome == "panic", first.message
    assert "truncation of" in first.message
    want = (first.outcome, signature(first.message), first.revoker)

    def still_fails(c: Workload) -> bool:
        r = run_workload(c, "silvers", SEED)
        return (r.outcome, signature(r.message), r.revoker) == want

    small = shrink(w, still_fails, max_runs=60)
    assert [op.kind for ops in small.clients for op in ops] == ["trunc"]
    assert small.clients[0][0].args["loan"] is True
    assert set(small.features) == {"truncate", "send_loan"}
    back = Workload.from_json(json.loads(json.dumps(small.to_json())))
    again = run_workload(back, "silvers", SEED)
    assert (again.outcome, signature(again.message)) == want[:2]
    assert run_workload(back, "modern", 5).outcome == "ok"


def _seed_with(feature: str) -> int:
    """The first run seed (seed 0, run k) whose drawn workload has `feature`."""
    for k in range(200):
        rs = run_seed(0, k)
        if feature in draw(workload_rng(rs)).features:
            return rs
    raise AssertionError(f"no seed with {feature} in 200 runs")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("feature", VM_FEATURES)
def test_a_drawn_seed_with_each_vm_feature_is_deterministic(feature: str) -> None:
    rs = _seed_with(feature)
    w = draw(workload_rng(rs))
    assert any(op.kind == VM_KINDS[feature] for ops in w.clients for op in ops)
    assert all(made_by(op) in w.features for ops in w.clients for op in ops)
    a = run_workload(w, "modern", rs)
    assert a.outcome == "ok", a.message
    b = run_workload(Workload.from_json(w.to_json()), "modern", rs)
    assert (b.outcome, b.message, b.trace_hash) == (a.outcome, a.message, a.trace_hash)


@pytest.mark.timeout(30)
def test_seeds_without_a_vm_feature_draw_what_they_drew() -> None:
    from machine.explore.workload import draw_classic

    plain = [
        k for k in range(64) if not set(draw(random.Random(f"w:{k}")).features) & set(VM_FEATURES)
    ]
    assert plain
    for k in plain:
        assert draw(random.Random(f"w:{k}")) == draw_classic(random.Random(f"w:{k}"))


async def _lock_then_refuse(self: Process, va: int, length: int) -> None:
    await self._range_call(UvmWire, va, length)  # it locks the range...
    raise RequestError(Errno.EAGAIN, "refused")  # ...and answers that it refused


@pytest.mark.timeout(60)
def test_a_refused_mlock_that_locked_anyway_is_caught() -> None:
    """The mlock op takes EAGAIN (the machine's wiredmax) as a refusal, but then nothing
    may stay locked: a machine that refuses and locks is an error."""
    with patched(Process, "mlock", _lock_then_refuse):
        r = run_workload(one(Op("mlock", {"pages": 2, "send": False})), "modern", 1)
    assert r.outcome == "error", r.message
    assert "refused mlock (EAGAIN) left" in r.message


def truncation_behind_a_send() -> Workload:
    """A 600000 B loaned send on a 20 Mbit/s link, then, on the same socket, a loaned
    send of a file's shared view and the file truncated while the driver has yet to
    read it (it is queued behind the first)."""
    big = Op("send", {"size": 600000, "loan": True, "buf": "anon", "then": ""})
    return one(big, trunc(cut=4096, loan=True), link=20_000_000)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("profile", "outcome", "says"),
    [
        ("modern", "ok", "every send intact"),
        ("bug1999", "panic", "was revoked by uvm: pmap_page_protect(NONE) (truncation of"),
        ("thorpe", "panic", "was revoked by uvm: pmap_page_protect(NONE) (truncation of"),
        ("silvers", "panic", "is wired (wire_count 1, loan_count 1): truncation of"),
    ],
)
def test_a_loaned_file_page_truncated_away_by_profile(
    profile: str, outcome: str, says: str
) -> None:
    """What the explorer finds unaided (bug1999 seed 0 runs 218 and 306, thorpe 218, 278,
    306): under 1999 the truncation's pmap_page_protect(NONE) also takes the kernel's loan
    mapping and the driver's read faults (thorpe's diff guards only the page daemon);
    silvers panics at revoking a wired page; modern's unmanaged kenter keeps the loan,
    and the wire gets the bytes of send time."""
    for seed in range(3):
        r = run_workload(truncation_behind_a_send(), profile, seed)
        assert (r.outcome, says in r.message) == (outcome, True), (seed, r.message)


def test_fill_is_the_documented_pattern() -> None:
    """Each page: (tag, page number) little-endian, then byte i = (tag*131 + 7i) mod 256."""
    for tag, n in ((0, 1), (5, PAGE), (77, 3 * PAGE + 5), (1 << 20, 2 * PAGE)):
        got = fill(tag, n)
        assert len(got) == n
        for i in range(n):
            pg, off = divmod(i, PAGE)
            head = struct.pack("<II", tag, pg)
            want = head[off] if off < 8 else (tag * 131 + off * 7) & 0xFF
            assert got[i] == want, (tag, i)
