"""`explain` on dumps of the simulated machine: a panic, a corruption and an injected leak.

Each run is the same short story on the in-process machine (seeded, virtual time):
a loaned send held on the link, its buffer overwritten (a write fault: the loan
break revokes the kernel's mapping of the page), then the link let go, so the driver
reads a page whose kernel mapping is gone. Under bug1999 that kernel fault panics
(the crash dump); with loan KVA backed by kernel_object the fault enters a zero page
and the wire carries zeros (a corruption: the harness's ctl.dumpsys); and with the
test-only leak injection an exit leaves a frame behind. Last, the stress run's
one-frame leak itself, its fix switched off. The real-process versions are
tests/stress/test_stress_evidence.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from machine.client import MachinePanic
from machine.dumpfile import read_dump
from machine.explore.explain import explain
from machine.ipc.inmemory import run_simulation
from machine.params import PAGE_SIZE
from machine.profile import load_profile, with_overrides
from machine.proto import (
    NO_HEADER,
    CtlDumpsys,
    CtlDumpsysReply,
    NetLink,
    UvmDetach,
    UvmFork,
    UvmForkReply,
)
from machine.testing import SimMachine, poll_for

pytestmark = pytest.mark.timeout(60)
_H = NO_HEADER
N = 8 * PAGE_SIZE


async def _loan_break(sim: SimMachine, wire_ok: bool) -> dict[str, Any]:
    """Send N loaned bytes held on the link, overwrite them, let the link go."""
    async with sim.attach() as m, m.wire() as wire:
        p = await m.spawn()
        va = await p.mmap(N, "rw")
        data = bytes((i * 7) & 0xFF for i in range(N))
        await p.store(va, data)
        s = await p.socket()
        await sim.kcall("net", NetLink(h=_H, hold=True))
        r = await p.send(s, va, N)
        assert r.loaned_pages == 8
        await p.store(va, b"\xee" * N)  # a write fault on a loaned page: the loan breaks
        await sim.kcall("net", NetLink(h=_H, hold=False))
        out: dict[str, Any] = {"session": m.session, "asid": p.asid, "va": va, "sock": s.id}
        out["seq"], out["data"] = r.seq, data
        if wire_ok:
            out["packet"] = (await wire.get(30.0)).payload
    return out


def _run(tmp: Path, profile: str, body: Any) -> Any:
    async def main() -> Any:
        async with SimMachine.boot(
            seed=11, ram_bytes=4 << 20, profile=profile, state_dir=str(tmp)
        ) as sim:
            return await body(sim)

    return run_simulation(main(), limit_s=600)


def test_a_panic_is_explained_by_its_chain(tmp_path: Path) -> None:
    async def body(sim: SimMachine) -> str:
        with pytest.raises(MachinePanic):
            await _loan_break(sim, wire_ok=True)
        await poll_for(lambda: bool(sim.sup.dump_path), 10.0, what="the crash dump")
        return sim.sup.dump_path

    path = _run(tmp_path, "bug1999", body)
    dump = read_dump(path)
    ex = explain(dump, path)
    assert ex.outcome == "panic"
    assert "was revoked by uvm" in ex.message  # the panic message names the revoker ...
    assert ex.revoker == "uvm"  # ... and the recording finds the same one
    assert ex.page is not None
    assert f"page {ex.page}" in ex.message
    words = " | ".join(ex.chain)
    for step in ("uvm.loan_chunks", "pmap.kenter", "loan break", "pmap.kextract", "uvm.kfault"):
        assert step in words, (step, ex.chain)
    assert ex.chain[-1].startswith("uvm panicked: trap: kernel page fault")
    kinds = [e["kind"] for e in ex.frames[0]["last"]]
    assert {"loan", "kenter", "write", "revoke", "kfault"} <= set(kinds), kinds
    page = ex.html("panic")
    assert "uvm.kfault" in page
    assert "<svg" in page
    assert json.loads(json.dumps(ex.to_json()))["revoker"] == "uvm"


def test_a_corruption_names_the_page_the_send_and_the_writer(tmp_path: Path) -> None:
    profile = with_overrides(load_profile("bug1999"), {"LOAN_KVA": "kernel_object"}, tmp_path)
    state = tmp_path / "state"
    state.mkdir()

    async def body(sim: SimMachine) -> tuple[dict[str, Any], str]:
        got = await _loan_break(sim, wire_ok=True)
        assert got["packet"] != got["data"]  # the wire carried zeros: a corruption
        off = next(i for i in range(N) if got["packet"][i] != got["data"][i])
        detail = {k: got[k] for k in ("session", "sock", "seq")} | {"offset": off}
        reason = "corruption: " + json.dumps(detail)
        rep = await sim.kcall("supervisor", CtlDumpsys(h=_H, reason=reason))
        assert isinstance(rep, CtlDumpsysReply), rep
        return got, rep.path

    got, path = _run(state, profile, body)
    ex = explain(read_dump(path), path)
    assert ex.outcome == "corruption"
    assert ex.send is not None
    assert (ex.send["session"], ex.send["sock"], ex.send["seq"]) == (
        got["session"],
        got["sock"],
        got["seq"],
    )
    assert (ex.send["asid"], ex.send["va"], ex.send["n"]) == (got["asid"], got["va"], N)
    assert ex.page is not None
    assert f"page {ex.page}" in ex.caption
    writers = ex.writers
    assert any(w["kind"] == "write" and w["asid"] == got["asid"] for w in writers), writers
    assert any(w["kind"] == "kfault" for w in writers), writers  # the zero fill
    assert ex.revoker == "uvm"
    assert "entered a zero page" in ex.caption


def test_an_injected_leak_names_the_frame_and_its_last_holder(tmp_path: Path) -> None:
    async def body(sim: SimMachine) -> tuple[int, int, str]:
        uvm: Any = sim.service("uvm")
        uvm.vm.inject_leak = True
        async with sim.attach() as m:
            p = await m.spawn()
            va = await p.mmap(PAGE_SIZE, "rw")
            await p.store(va, b"leak")
            await p.exit()
            session, asid = m.session, p.asid
        await asyncio.sleep(0)
        rep = await sim.kcall("supervisor", CtlDumpsys(h=_H, reason="frames not back: test"))
        assert isinstance(rep, CtlDumpsysReply), rep
        return session, asid, rep.path

    session, asid, path = _run(tmp_path, "modern", body)
    dump = read_dump(path)
    held = dump["roles"]["uvm"]["held"]
    assert len(held) == 1, held
    ex = explain(dump, path)
    assert ex.outcome == "leak"
    assert ex.page == int(next(iter(held)))
    (f,) = ex.frames
    assert f["vm_page"]["flags"] == ["ANON"]
    # The auditor's static checks are in the dump and in explain's notes: the anon's ref
    # counts a reference no amap holds (A3), and the held frame shows that ref.
    anon = f["vm_page"]["anon"]
    assert f["vm_page"]["anon_ref"] == 1
    assert any(p.startswith(f"A3: anon {anon} ref 1") for p in dump["roles"]["uvm"]["audit"])
    assert any("auditor" in n and f"A3: anon {anon}" in n for n in ex.notes), ex.notes
    assert f"anon {anon} (ref 1)" in f["summary"][0]
    holder = f["holder"]
    assert (holder["asid"], holder["session"]) == (asid, session)
    assert holder["process"] == "exit"
    assert holder["session_state"] == "detached"
    assert f"page {ex.page}" in ex.caption


def test_explain_finds_the_one_frame_leak_s_cause(tmp_path: Path) -> None:
    """The stress run's one-frame leak, with its fix switched off: a fork waiting for the
    mmu while its session detaches publishes a child nothing can end. explain names the
    frame, the child that still holds it, and that its session had ended."""

    async def body(sim: SimMachine) -> tuple[int, int, str] | None:
        uvm: Any = sim.service("uvm")
        uvm.vm.owner_live = lambda owner: True  # the fix off: spawn and fork never re-check
        got: list[Any] = []
        async with sim.attach() as m:
            p = await m.spawn()
            va = await p.mmap(4 * PAGE_SIZE, "rw")
            await p.store(va, b"x" * (2 * PAGE_SIZE))
            peer = m._peers["uvm"]
            peer.call_then(UvmFork(h=_H, asid=p.asid), got.append)  # sent now,
            peer.call_then(UvmDetach(h=_H), got.append)  # and the detach right behind it
            await poll_for(lambda: len(got) == 2, 10.0, what="both replies")
            session = m.session
        child = next((r.asid for r in got if isinstance(r, UvmForkReply)), 0)
        if not child or child not in uvm.vm.spaces:
            return None  # the detach came after the fork: no race this seed
        rep = await sim.kcall("supervisor", CtlDumpsys(h=_H, reason="frames not back: race"))
        assert isinstance(rep, CtlDumpsysReply), rep
        return child, session, rep.path

    for seed in range(8):
        (tmp_path / str(seed)).mkdir()

        async def main(seed: int = seed) -> tuple[int, int, str] | None:
            async with SimMachine.boot(
                seed=seed, ram_bytes=4 << 20, state_dir=str(tmp_path / str(seed))
            ) as sim:
                return await body(sim)

        found = run_simulation(main(), limit_s=600)
        if found is not None:
            break
    assert found is not None, "no seed raced the fork with the detach"
    child, session, path = found
    ex = explain(read_dump(path), path)
    assert ex.outcome == "leak"
    assert "outlived their sessions" in ex.caption
    assert f"asid {child} " in ex.caption
    assert len(ex.frames) == 2  # the two pages the child shares with its exited parent
    for f in ex.frames:
        (by,) = f["held_by"]
        assert (by["asid"], by["session"]) == (child, session)
        assert (by["process"], by["session_state"]) == ("never exited", "detached")
        assert f["holder"]["process"] == "detach"  # the parent, which last mapped it, is gone
