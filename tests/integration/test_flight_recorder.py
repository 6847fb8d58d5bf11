"""The flight recorder in every role, on both transports: what a live dump holds of a run.

One client stores, loads and sends (loaned); a ctl.dumpsys (the supervisor's kernel
endpoint, as `uvm-machine dump` sends it) writes a dump; each role's recorder must hold
its inputs in order with their bodies, the replies its peers got, the events it
subscribed to and the timers that changed state, and the merge must put every request
before its reply.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from machine.dumpfile import read_dump
from machine.explore.flight import decode, merge
from machine.ipc.inmemory import run_simulation
from machine.ipc.recorder import FIELDS
from machine.params import PAGE_SIZE
from machine.proto import (
    NO_HEADER,
    CtlDumpsys,
    CtlDumpsysReply,
    MmuStore,
    NetSend,
    PmapTrapwaitReply,
    Reply,
    Request,
    UvmProcExited,
)
from machine.testing import SimMachine, poll_for
from tests.conftest import Harness

pytestmark = pytest.mark.timeout(60)
_H = NO_HEADER
ROLES = ("mmu", "uvm", "pdaemon", "net", "supervisor")


async def _workload(h: Harness) -> dict[str, Any]:
    async with h.attach() as m, m.wire() as wire:
        p = await m.spawn()
        va = await p.mmap(16 * PAGE_SIZE, "rw")
        data = bytes(range(256)) * 48  # three pages, none alike
        await p.store(va, data)
        assert await p.load(va, len(data)) == data
        s = await p.socket()
        r = await p.send(s, va, 16 * PAGE_SIZE)
        assert r.loaned_pages == 16
        assert (await wire.get(20.0)).seq == r.seq  # on the wire: the driver noted it
        await p.exit()
        session, asid = m.session, p.asid
    rep = await h.kcall("supervisor", CtlDumpsys(h=_H, reason="the recorder test"))
    assert isinstance(rep, CtlDumpsysReply), rep
    dump = read_dump(rep.path)
    assert dump["kind"] == "live"
    assert dump["reason"] == "the recorder test"
    return {"dump": dump, "session": session, "asid": asid, "va": va, "data": data, "sock": s.id}


def _entries(dump: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [dict(zip(FIELDS, e, strict=True)) for e in dump["flight"][role]["entries"]]


async def test_every_role_records_its_inputs_in_order_with_their_bodies(h: Harness) -> None:
    got = await _workload(h)
    dump = got["dump"]
    assert set(dump["flight"]) == set(ROLES)
    for role in ROLES:
        rec = dump["flight"][role]
        es = _entries(dump, role)
        assert es, role
        seqs = [e["seq"] for e in es]
        assert seqs == list(range(rec["dropped"] + 1, rec["recorded"] + 1)), role  # contiguous
        assert all(a["wall_ns"] <= b["wall_ns"] for a, b in itertools.pairwise(es))
        assert all(a["mono"] <= b["mono"] for a, b in itertools.pairwise(es))
        assert all(a["last_id"] <= b["last_id"] for a, b in itertools.pairwise(es))
        assert {e["kind"] for e in es} <= {"req", "rep", "evt", "int"}
        assert rec["incarnation"]
        assert rec["bounds"]["events"] > 0
    # the mmu holds the store's bytes in full, with the client's session and connection
    stores = [
        (e, m)
        for e in _entries(dump, "mmu")
        if e["ep"] == "mmu/user" and isinstance(m := decode("req", e["data"]), MmuStore)
    ]
    mine = [(e, m) for e, m in stores if m.h.incarnation == got["session"]]
    assert [m.data for _, m in mine if m.va == got["va"]] == [got["data"]]
    assert all(e["conn"] != 0 for e, _ in mine)
    # uvm: the mmu's replies on uvm's own connection (the traps it took)
    uvm = _entries(dump, "uvm")
    replies = [
        decode("rep", e["data"]) for e in uvm if (e["kind"], e["ep"]) == ("rep", "mmu/kernel")
    ]
    assert any(isinstance(m, PmapTrapwaitReply) for m in replies)
    # net: the send, uvm's event of the exit, and the driver's transmit notes
    net = _entries(dump, "net")
    sends = [  # this session's (the real machine is shared with other tests' clients)
        m
        for e in net
        if isinstance(m := decode("req", e["data"]), NetSend) and m.h.incarnation == got["session"]
    ]
    assert [(m.asid, m.va, m.n) for m in sends] == [(got["asid"], got["va"], 16 * PAGE_SIZE)]
    exits = [e for e in net if e["kind"] == "evt" and e["ep"] == "uvm/pub"]
    exited = [ev for e in exits if isinstance(ev := decode("evt", e["data"]), UvmProcExited)]
    assert any(ev.asid == got["asid"] for ev in exited)
    notes = [e["data"] for e in net if e["kind"] == "int"]
    # this session's (other tests' sends may still be in the recorder)
    tx = [n for n in notes if n["what"] == "tx" and n["session"] == got["session"]]
    assert [(n["sock"], n["seq"], len(n["pfns"])) for n in tx] == [(got["sock"], 1, 16)]
    # the supervisor: its heartbeat's replies and the dumpsys it was asked
    sup = _entries(dump, "supervisor")
    assert any(e["ep"] == "supervisor/kernel" for e in sup)
    assert any(e["kind"] == "int" and e["data"]["what"] == "dumpsys" for e in sup)


async def test_the_merge_puts_every_request_before_its_reply(h: Harness) -> None:
    dump = (await _workload(h))["dump"]
    hist = merge(dump)
    assert len(hist.deliveries) == sum(len(f["entries"]) for f in dump["flight"].values())
    assert hist.forced == 0
    requests: dict[tuple[str, str, int], int] = {}
    paired = 0
    for k, (d, m) in enumerate(zip(hist.deliveries, hist.messages, strict=True)):
        if d.kind == "req" and isinstance(m, Request):
            requests[(d.endpoint, m.h.sender, m.h.msg_id)] = k
        elif d.kind == "rep" and isinstance(m, Reply):
            at = requests.get((d.endpoint, d.at, m.h.re))
            if at is not None:  # a role's request to a role, both recorded
                assert at < k, (d, m)
                paired += 1
    assert paired > 20
    # each role's own order is kept
    for role in ROLES:
        seqs = [d.seq for d in hist.deliveries if d.at == role]
        assert seqs == sorted(seqs)


@pytest.fixture
def h(harness: Harness) -> Harness:
    return harness


def test_the_timers_that_change_state_are_noted(tmp_path: Path) -> None:
    """The page daemon's wake-ups and passes under a hog's pressure, and a silent
    session's lease reap, are internal events of their roles' recorders."""

    async def main() -> dict[str, Any]:
        async with SimMachine.boot(
            seed=5, ram_bytes=1 << 20, swap_bytes=8 << 20, lease_s=2.0, state_dir=str(tmp_path)
        ) as sim:
            async with sim.attach() as m:
                hog = await m.spawn()
                va = await hog.mmap(400 * PAGE_SIZE, "rw")  # more than RAM (256 frames)
                await hog.store(va, b"h" * (400 * PAGE_SIZE))
                await hog.exit()
            async with sim.attach(keepalive=False) as quiet:
                await quiet.spawn()
                uvm: Any = sim.service("uvm")
                await poll_for(lambda: uvm.vm.stats.reaped > 0, 30.0, 0.5, "the lease reap")
                session = quiet.session
            rep = await sim.kcall("supervisor", CtlDumpsys(h=_H, reason="timers"))
            assert isinstance(rep, CtlDumpsysReply), rep
            return {"dump": read_dump(rep.path), "session": session}

    got = run_simulation(main(), limit_s=600)
    notes = {
        role: [e[8] for e in rec["entries"] if e[1] == "int"]
        for role, rec in got["dump"]["flight"].items()
    }
    pd = [n["what"] for n in notes["pdaemon"]]
    assert {"woke", "pass", "pass done"} <= set(pd), pd
    assert any(n["what"] == "pass done" and n.get("pdpageouts", 0) > 0 for n in notes["pdaemon"])
    reaps = [n for n in notes["uvm"] if n["what"] == "lease reap"]
    assert [n["session"] for n in reaps] == [got["session"]]
    assert reaps[0]["silent_s"] > 2.0
