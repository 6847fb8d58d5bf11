"""The trap path (docs/design.md "Faults"): a user access that misses is resolved by the
kernel while the access waits; the ordering rule; no starvation by the page daemon.

In process on the seeded in-memory bus (deterministic), except the one test that runs
the real processes (test_real_processes_...).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from machine.ipc import eager
from machine.ipc.inmemory import InMemoryTransport, run_simulation
from machine.ipc.peer import Peer
from machine.mmu.service import MmuService
from machine.params import PAGE_SIZE
from machine.proto import NO_HEADER, NetLink, PmapPageProtect, UserError
from machine.proto.pageinfo import PdOp
from machine.proto.types import Prot
from machine.testing import SimMachine, poll_for
from machine.uvm import pdops
from machine.uvm.page import KERNEL
from machine.uvm.service import UvmService
from machine.uvm.state import Uvm
from machine.uvm.trap import Outcome, TrapServer
from tests.conftest import SimHarness, ZmqHarness, boot_real, status_json, wait_until

MIB = 1 << 20


async def _loaned_ram_and_a_hog(h: SimHarness | ZmqHarness) -> int:
    """1 MiB of RAM, a 1 MiB send held by a 10 Mbit/s link, another process storing 320
    pages: more than is free. Every byte is checked. => the hog's faults."""
    await h.kcall("net", NetLink(h=NO_HEADER, bandwidth_bps=10_000_000))
    async with h.attach() as m:
        sender = await m.spawn()
        buf = await sender.mmap(MIB)
        payload = bytes(range(256)) * (MIB // 256)
        await sender.store(buf, payload)
        sock = await sender.socket(sndbuf=MIB)
        sent = await sender.send(sock, buf, MIB)
        assert sent.loaned_pages > 0
        hog = await m.spawn()
        hva = await hog.mmap(320 * PAGE_SIZE)
        for i in range(320):
            await hog.store(hva + i * PAGE_SIZE, i.to_bytes(2, "little"))
        for i in range(320):
            assert await hog.load(hva + i * PAGE_SIZE, 2) == i.to_bytes(2, "little")
        assert await sender.load(buf, MIB) == payload
        faults = hog.faults
        await hog.exit()
        await sender.exit()
    assert await h.audit() == []
    return faults


@pytest.mark.timeout(300)
def test_a_hog_beside_mostly_loaned_ram_completes_instead_of_livelocking() -> None:
    """The livelock of issue 11: the client's trap, the fault and the retry were three
    round trips, and the page daemon took the page back between them, forever
    ("faults keep recurring"). Now the access completes against the mapping its fault
    entered, whatever the daemon does meanwhile."""

    async def main() -> int:
        async with SimMachine.boot(seed=7, ram_bytes=MIB, swap_bytes=8 * MIB) as sim:
            return await _loaned_ram_and_a_hog(SimHarness(sim))

    assert run_simulation(main(), limit_s=3600) >= 320  # every page trapped; none gave up


Event = tuple[str, int, int]  # ("enter", va, pfn) / ("enter?", va, pfn) / ("revoke", 0, pfn)


def _revoke_right_after_the_answer(uvm: UvmService, sent: list[Event]) -> None:
    """Make uvm revoke every page it answers a trap with, right after the answer is sent
    (as the page daemon could, the moment the page is unbusied), and record uvm's messages
    to the mmu in the order it sends them."""
    server: TrapServer = uvm.traps
    release = server.release

    async def revoke(pfn: int) -> None:
        sent.append(("revoke", 0, pfn))  # no await between this and the send
        await uvm.vm.pmap.page_protect([pfn], int(Prot.NONE), "test")

    def release_then_revoke(outcomes: list[Outcome]) -> None:
        for o in outcomes:
            for i, m in enumerate(o.answer.mappings):
                sent.append(("enter" if i == 0 else "enter?", m.va, m.pfn))
        release(outcomes)  # the answers are sent: they are released right after
        for o in outcomes:
            uvm.spawn(revoke(o.answer.mappings[0].pfn), "revoke")

    server.release = release_then_revoke  # type: ignore[method-assign]


def _replay(sent: list[Event]) -> dict[int, int]:
    """The mappings the mmu must hold if it applies uvm's messages in uvm's order."""
    mapped: dict[int, int] = {}
    for kind, va, pfn in sent:
        if kind == "revoke":
            mapped = {v: f for v, f in mapped.items() if f != pfn}
        elif kind == "enter" or va not in mapped:  # fault-ahead: only where none
            mapped[va] = pfn
    return mapped


async def _race(seed: int) -> dict[str, dict[int, int]]:
    """=> the mappings uvm's send order implies and the ones the mmu holds, when they
    differ (empty when the mmu applied uvm's messages in uvm's order)."""
    async with SimMachine.boot(seed=seed, latency_s=(0.0, 400e-6)) as sim:
        uvm = sim.service("uvm")
        mmu = sim.service("mmu")
        assert isinstance(uvm, UvmService)
        assert isinstance(mmu, MmuService)
        sent: list[Event] = []
        _revoke_right_after_the_answer(uvm, sent)
        async with sim.attach() as m:
            p = await m.spawn()
            va = await p.mmap(16 * PAGE_SIZE)
            for i in range(16):
                await p.store(va + i * PAGE_SIZE, b"x")
            for i in range(16):  # loads: resident neighbours are mapped ahead
                assert await p.load(va + i * PAGE_SIZE, 1) == b"x"
            revokes = sum(1 for e in sent if e[0] == "revoke")
            await poll_for(
                lambda: mmu.mmu.stats.page_protects >= revokes, what="the revocations handled"
            )
            want = _replay(sent)
            have = {
                va + i * PAGE_SIZE: pte.pfn
                for i in range(16)
                if (pte := mmu.mmu.extract(p.asid, va + i * PAGE_SIZE)) is not None
            }
            await p.exit()
        return {} if want == have else {"uvm's order": want, "mmu": have}


@pytest.mark.timeout(300)
def test_no_enter_lands_after_a_revocation_of_the_same_page() -> None:
    """The ordering rule, forced: uvm revokes each page the moment its answer is sent, on
    a bus whose latencies (0-400 us) would let a later message overtake an earlier one.
    The answer and the revocation travel on one ordered connection, so the revocation
    always lands last: the mmu's mappings are exactly what uvm's order implies."""
    for seed in range(12):
        assert run_simulation(_race(seed)) == {}, f"seed {seed}"


@pytest.mark.timeout(300)
def test_the_race_test_can_fail_when_a_connection_reorders(monkeypatch: Any) -> None:
    """The same race with per-connection order switched off (every delivery at its own
    random latency): some seed then lets a revocation overtake an answer, and the mmu's
    mappings differ from what uvm decided. The rule above is what prevents it."""

    def unordered(self: InMemoryTransport, last: float, fn: Any, *args: Any, **kw: Any) -> float:
        self.schedule(fn, *args, **kw)
        return last

    monkeypatch.setattr(InMemoryTransport, "schedule_after", unordered)
    found = [seed for seed in range(12) if run_simulation(_race(seed))]
    assert found, "no seed reordered the answer and the revocation"


@pytest.mark.timeout(240)
async def test_real_processes_a_store_beyond_free_memory_waits_and_completes(
    tmp_path: Path,
) -> None:
    """Real processes: RAM mostly loaned (a 1 MiB send held by a 10 Mbit/s link) while
    another process stores more than is free; its stores wait for memory and complete,
    every byte is there, and every frame comes back."""
    rm = boot_real(tmp_path / "state", "--ram", "1M", "--swap", "8M")
    h = ZmqHarness(rm)
    try:
        assert await _loaned_ram_and_a_hog(h) >= 320
        await wait_until(lambda: _frames_back(rm.endpoint), timeout_s=60, what="every frame back")
    finally:
        await h.close()
        assert rm.stop() == 0


def _frames_back(endpoint: str) -> bool:
    f = status_json(endpoint)["frames"]
    return bool(f["loaned"] == 0 and f["free"] + f["kernel_owned"] == f["total"])


@pytest.mark.timeout(120)
def test_fault_ahead_maps_resident_neighbours_read_only() -> None:
    """uvm_fault's fault-ahead (3 back, 4 forward): a forked child reading its parent's
    resident pages in order faults once per five pages, not once per page; the
    neighbours are mapped read-only, so a store still faults and copies on write."""

    async def main() -> tuple[int, int, bytes, bytes]:
        async with SimMachine.boot(seed=3) as sim, sim.attach() as m:
            parent = await m.spawn()
            va = await parent.mmap(8 * PAGE_SIZE)
            for i in range(8):
                await parent.store(va + i * PAGE_SIZE, bytes([i + 1]))
            child = await parent.fork()
            for i in range(8):
                assert await child.load(va + i * PAGE_SIZE, 1) == bytes([i + 1])
            reads = child.faults
            await child.store(va + 2 * PAGE_SIZE, b"c")  # mapped ahead, read-only: COW
            writes = child.faults - reads
            mine = await child.load(va + 2 * PAGE_SIZE, 1)
            theirs = await parent.load(va + 2 * PAGE_SIZE, 1)
            assert await SimHarness(sim).audit() == []
            return reads, writes, mine, theirs

    reads, writes, mine, theirs = run_simulation(main())
    assert reads == 2  # page 0 maps 1-4 ahead; page 5 maps 6-7
    assert writes == 1
    assert (mine, theirs) == (b"c", b"\x03")


Mapping = tuple[int, int]  # (asid, va)
Step = tuple[str, Mapping, int]  # ("enter", (asid, va), pfn) / "enter?" / ("revoke", (0, 0), pfn)


def _record_the_order(uvm: UvmService, monkeypatch: Any) -> tuple[list[Step], list[int]]:
    """Record, in one list and in the order they happen: each trap answer's mappings at
    the moment uvm releases its pages (the page is then no longer BUSY: the answer must
    be on its way), and each pmap_page_protect(NONE) at the moment it is sent, by any
    role (the page daemon's pageouts, uvm's own revocations). Make uvm revoke every page
    it answers a trap with the instant it releases it, sent in that same step (as a
    revocation that was waiting for the page could, at the earliest).
    => the list and the counters [page_protects unanswered, answers of faults that
    waited (they go alone, in a pmap.resolve notice)]."""
    server: TrapServer = uvm.traps
    release, send = server.release, server.send
    steps: list[Step] = []
    counts = [0, 0]
    call = Peer.call

    async def counted(self: Peer, req: Any, timeout_s: float | None = None) -> Any:
        try:
            return await call(self, req, timeout_s)
        finally:
            counts[0] -= 1

    def recording_call(self: Peer, req: Any, timeout_s: float | None = None) -> Any:
        if isinstance(req, PmapPageProtect) and req.prot == int(Prot.NONE):
            steps.extend(("revoke", (0, 0), pfn) for pfn in req.pfns)
        counts[0] += 1
        return counted(self, req, timeout_s)  # sends in its first step: in this one

    def release_then_revoke(outcomes: list[Outcome]) -> None:
        for o in outcomes:
            asid = o.space.asid if o.space is not None else 0
            for i, m in enumerate(o.answer.mappings):
                steps.append(("enter" if i == 0 else "enter?", (asid, m.va), m.pfn))
        release(outcomes)
        for o in outcomes:
            pfn = o.answer.mappings[0].pfn if o.answer.mappings else -1
            if pfn >= 0 and not uvm.vm.pages.loan_count[pfn]:  # a loan's kernel mapping stays
                started = eager.start(uvm.vm.pmap.page_protect([pfn], int(Prot.NONE), "test"))
                if isinstance(started, eager.Resumed):
                    uvm.spawn(_drive(started), "revoke")

    def counting_send(outcomes: list[Outcome]) -> None:
        counts[1] += len(outcomes)
        send(outcomes)

    monkeypatch.setattr(Peer, "call", recording_call)
    server.release = release_then_revoke  # type: ignore[method-assign]
    server.send = counting_send  # type: ignore[method-assign]
    return steps, counts


async def _drive(rest: eager.Resumed[Any]) -> None:
    await rest


def _replay_steps(steps: list[Step]) -> dict[Mapping, int]:
    """`_replay` for several address spaces."""
    mapped: dict[Mapping, int] = {}
    for kind, where, pfn in steps:
        if kind == "revoke":
            mapped = {w: f for w, f in mapped.items() if f != pfn}
        elif kind == "enter" or where not in mapped:
            mapped[where] = pfn
    return mapped


def _pfns(uvm: Uvm, asid: int, va: int, n: int) -> list[int]:
    """The frames of the anons behind [va, va + n pages) of asid."""
    e = uvm.spaces[asid].map.lookup(va)
    assert e is not None
    assert e.amap is not None
    out = []
    for i in range(n):
        anon = e.amap.lookup(e.slot(va + i * PAGE_SIZE))
        assert anon is not None
        out.append(anon.page)
    return out


async def _race_waiting(seed: int, monkeypatch: Any) -> tuple[dict[str, Any], dict[str, int]]:
    """The race of `_race`, for faults that wait, each wait forced by its real holder:
    pages the page daemon has claimed (BUSY until its finish: the faults sleep in
    fltpgwait), and pages paged out while memory is short (the swap-ins sleep for a
    frame, fltnoram, until the kernel gives its frames back). => the mappings when
    uvm's order and the mmu's differ, and how many faults waited, of each kind."""
    async with SimMachine.boot(
        seed=seed, ram_bytes=MIB, swap_bytes=8 * MIB, latency_s=(0.0, 400e-6)
    ) as sim:
        svc, mmu = sim.service("uvm"), sim.service("mmu")
        assert isinstance(svc, UvmService)
        assert isinstance(mmu, MmuService)
        uvm = svc.vm
        steps, counts = _record_the_order(svc, monkeypatch)
        async with sim.attach() as m:
            p = await m.spawn()
            va = await p.mmap(8 * PAGE_SIZE)
            for i in range(8):
                await p.store(va + i * PAGE_SIZE, bytes([i + 1]))

            async def loads(first: int) -> None:
                for i in range(first, first + 4):
                    assert await p.load(va + i * PAGE_SIZE, 1) == bytes([i + 1])

            # A BUSY page: the daemon claimed pages 0-3 (to deactivate them).
            held = [(PdOp.DEACTIVATE, pfn) for pfn in _pfns(uvm, p.asid, va, 4)]
            assert len(pdops.claim(uvm, held)) == 4
            busy = asyncio.create_task(loads(0))
            await poll_for(lambda: uvm.stats.fltpgwait > 0, what="a fault asleep on a busy page")
            await pdops.finish(uvm, held)
            await busy
            # A swap-in that waits for memory: pages 4-7 paged out as the daemon does
            # (deactivate, claim, revoke, finish), then every free frame taken.
            out = _pfns(uvm, p.asid, va + 4 * PAGE_SIZE, 4)
            for op in (PdOp.DEACTIVATE, PdOp.PAGEOUT):
                assert len(pdops.claim(uvm, [(op, pfn) for pfn in out])) == 4
                await uvm.pmap.page_protect(out, int(Prot.NONE), "pageout")
                await pdops.finish(uvm, [(op, pfn) for pfn in out])
            taken = []
            with contextlib.suppress(UserError):
                while True:
                    taken.append(uvm.alloc_page(who=KERNEL))
            short = asyncio.create_task(loads(4))
            await poll_for(lambda: uvm.stats.fltnoram > 0, what="a swap-in asleep for memory")
            for pfn in taken:
                uvm.unbusy(pfn)  # owned by nobody: freed
            uvm.wakeup_free()
            await short
            await poll_for(lambda: counts[0] == 0, what="every page_protect answered")
            want = {w: f for w, f in _replay_steps(steps).items() if w[0] == p.asid}
            have = {
                (p.asid, v): pte.pfn
                for v in range(va, va + 8 * PAGE_SIZE, PAGE_SIZE)
                if (pte := mmu.mmu.extract(p.asid, v)) is not None
            }
            await p.exit()
        assert await SimHarness(sim).audit() == []
        st = uvm.stats
        waits = {"answered alone": counts[1], "fltanget": st.fltanget, "fltpgwait": st.fltpgwait}
        waits["fltnoram"] = st.fltnoram
        return ({} if want == have else {"uvm's order": want, "mmu": have}), waits


@pytest.mark.timeout(120)
def test_no_enter_lands_after_a_revocation_when_the_fault_waited(monkeypatch: Any) -> None:
    """The ordering rule for faults that had to wait (swap-in, a BUSY page, memory):
    such a fault answers alone, in a pmap.resolve notice sent from its own task, and
    releases its pages after. A revocation sent the instant a page is released (uvm's,
    or the page daemon's once it has claimed the page) must land after the answer: the
    mmu's mappings are exactly what the order of uvm's decisions implies. Catches a
    release before the notice is sent (the revocation would overtake the enter)."""
    seen = {"answered alone": 0, "fltanget": 0, "fltpgwait": 0, "fltnoram": 0}
    for seed in range(6):
        with monkeypatch.context() as mp:
            diff, waits = run_simulation(_race_waiting(seed, mp), limit_s=3600)
        assert diff == {}, f"seed {seed}: {diff}"
        for k in seen:
            seen[k] += waits[k]
    assert all(seen.values()), seen  # every kind of wait was exercised
