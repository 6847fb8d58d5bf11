"""Model-based test of the whole machine (in-memory transport, virtual time).

A Hypothesis state machine drives emulated processes with spawn, mmap,
store, load, munmap and exit, against a plain-Python reference model (the
bytes every process should see at every address). After every step the
auditor (uvm.audit: vm_page queues, maps, uvm<->mmu agreement, frame
conservation) must find nothing, and no more frames may be in use than the
model says are resident (fewer when the page daemon paged some out).

Runs in CI with a fixed seed and a bounded number of examples;
HYPOTHESIS_PROFILE=long runs more.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from machine.client import Process, Segv
from machine.params import PAGE_SIZE
from machine.proto.types import Prot
from machine.uvm.service import UvmService
from machine.uvm.trap import Outcome
from tests.model.simrun import MODEL_TIMEOUT_S, SimStateMachine

NFRAMES = 48

settings.register_profile(
    "ci",
    max_examples=25,
    stateful_step_count=30,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=500,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class ModelProc:
    def __init__(self, p: Process) -> None:
        self.p = p
        self.maps: dict[int, tuple[int, str]] = {}  # start -> (npages, prot)
        self.data: dict[int, int] = {}  # va -> byte (absent = 0)
        self.touched: set[int] = set()  # resident pages (vpn)

    def mapping_of(self, va: int) -> tuple[int, int, str] | None:
        for start, (n, prot) in self.maps.items():
            if start <= va < start + n * PAGE_SIZE:
                return start, n, prot
        return None

    def walk(self, va: int, n: int, need: str) -> tuple[bool, set[int]]:
        """What the CPU does: pages in order until one faults for good.

        => (whole access succeeds, pages made resident on the way). A faulting
           access leaves the pages before the bad one resident, as a real CPU
           that faulted them in before reaching the bad page would.
        """
        pages: set[int] = set()
        for vpn in range(va // PAGE_SIZE, (va + n - 1) // PAGE_SIZE + 1):
            m = self.mapping_of(vpn * PAGE_SIZE if vpn * PAGE_SIZE >= va else va)
            if m is None or need not in m[2]:
                return False, pages
            pages.add(vpn)
        return True, pages


class MachineModel(SimStateMachine):
    SEED = 11
    NFRAMES = 48
    procs = Bundle("procs")

    def __init__(self) -> None:
        super().__init__()
        self.live: list[ModelProc] = []

    def resident(self) -> int:
        return sum(len(mp.touched) for mp in self.live)

    @initialize(target=procs)
    def first(self) -> ModelProc:
        mp = ModelProc(self.run(self.m.spawn()))
        self.live.append(mp)
        return mp

    @precondition(lambda self: len(self.live) < 4)
    @rule(target=procs)
    def spawn(self) -> ModelProc:
        mp = ModelProc(self.run(self.m.spawn()))
        self.live.append(mp)
        return mp

    @rule(mp=procs, npages=st.integers(1, 6), prot=st.sampled_from(["rw", "r", "rw"]))
    def mmap(self, mp: ModelProc, npages: int, prot: str) -> None:
        if mp not in self.live:
            return
        va = self.run(mp.p.mmap(npages * PAGE_SIZE, prot))
        assert mp.mapping_of(va) is None
        mp.maps[va] = (npages, prot)

    def _target(self, mp: ModelProc, data: st.DataObject, n: int) -> int:
        if mp.maps and data.draw(st.integers(0, 9)) > 0:
            start, (npages, _) = data.draw(st.sampled_from(sorted(mp.maps.items())))
            return start + data.draw(st.integers(0, npages * PAGE_SIZE - 1))
        return data.draw(st.sampled_from([0x1000, 0x7000_0000, 0x1234_5000]))

    @rule(mp=procs, data=st.data(), payload=st.binary(min_size=1, max_size=2 * PAGE_SIZE + 8))
    def store(self, mp: ModelProc, data: st.DataObject, payload: bytes) -> None:
        if mp not in self.live:
            return
        va = self._target(mp, data, len(payload))
        ok, pages = mp.walk(va, len(payload), "w")
        if self.resident() + len(pages - mp.touched) > NFRAMES - 4:
            return  # stay clear of ENOMEM: the page daemon comes in a later issue
        fault_va = -1
        try:
            self.run(mp.p.store(va, payload))
        except Segv as e:
            fault_va = e.va
        if fault_va < 0:
            assert ok, f"store at {va:#x} succeeded but the model says it must fault"
            fault_va = va + len(payload)
        else:
            assert not ok, f"store at {va:#x} segfaulted but the model says it is mapped rw"
            # Page by page, as a CPU's string store: the bytes before the fault landed.
            assert va <= fault_va < va + len(payload)
            assert fault_va == va or mp.walk(va, fault_va - va, "w")[0]
            assert not mp.walk(fault_va, 1, "w")[0], f"{fault_va:#x} is writable in the model"
        for i, b in enumerate(payload[: fault_va - va]):
            mp.data[va + i] = b
        mp.touched |= pages

    @rule(mp=procs, data=st.data(), payload=st.binary(min_size=1, max_size=PAGE_SIZE))
    def store_while_the_daemon_revokes(
        self, mp: ModelProc, data: st.DataObject, payload: bytes
    ) -> None:
        """A store whose every fault has its page revoked by the page daemon the moment
        uvm answers (pmap_page_protect NONE, as a deactivation does): the revocation
        lands after the access (one ordered connection), so the store completes against
        the mapping its fault entered and its bytes are there."""
        if mp not in self.live:
            return
        va = self._target(mp, data, len(payload))
        ok, pages = mp.walk(va, len(payload), "w")
        if not ok or self.resident() + len(pages - mp.touched) > NFRAMES - 4:
            return
        uvm = self.sim.service("uvm")
        assert isinstance(uvm, UvmService)
        server = uvm.traps
        release = server.release
        revoked: list[int] = []

        def release_then_revoke(outcomes: list[Outcome]) -> None:
            release(outcomes)  # the answers are sent: they are released right after
            for o in outcomes:
                if o.answer.mappings:
                    pfn = o.answer.mappings[0].pfn
                    revoked.append(pfn)
                    uvm.spawn(
                        uvm.vm.pmap.page_protect([pfn], int(Prot.NONE), "deactivate"), "revoke"
                    )

        server.release = release_then_revoke  # type: ignore[method-assign]
        try:
            self.run(mp.p.store(va, payload))
        finally:
            server.release = release  # type: ignore[method-assign]
        for i, b in enumerate(payload):
            mp.data[va + i] = b
        mp.touched |= pages
        assert self.run(mp.p.load(va, len(payload))) == payload

    @rule(mp=procs, data=st.data(), n=st.integers(1, PAGE_SIZE + 16))
    def load(self, mp: ModelProc, data: st.DataObject, n: int) -> None:
        if mp not in self.live:
            return
        va = self._target(mp, data, n)
        ok, pages = mp.walk(va, n, "r")
        if self.resident() + len(pages - mp.touched) > NFRAMES - 4:
            return
        try:
            got = self.run(mp.p.load(va, n))
        except Segv:
            assert not ok, f"load at {va:#x} segfaulted but the model says it is mapped"
        else:
            assert ok, f"load at {va:#x} succeeded but the model says it must fault"
            assert got == bytes(mp.data.get(va + i, 0) for i in range(n))
        mp.touched |= pages

    @rule(mp=procs, data=st.data())
    def munmap(self, mp: ModelProc, data: st.DataObject) -> None:
        if mp not in self.live or not mp.maps:
            return
        start, (npages, prot) = data.draw(st.sampled_from(sorted(mp.maps.items())))
        first = data.draw(st.integers(0, npages - 1))
        count = data.draw(st.integers(1, npages - first))
        lo, hi = start + first * PAGE_SIZE, start + (first + count) * PAGE_SIZE
        self.run(mp.p.munmap(lo, hi - lo))
        del mp.maps[start]
        if first:
            mp.maps[start] = (first, prot)
        if first + count < npages:
            mp.maps[hi] = (npages - first - count, prot)
        mp.data = {a: b for a, b in mp.data.items() if not lo <= a < hi}
        mp.touched = {v for v in mp.touched if not lo // PAGE_SIZE <= v < hi // PAGE_SIZE}

    @rule(mp=consumes(procs))
    def exit(self, mp: ModelProc) -> None:
        if mp not in self.live:
            return
        self.run(mp.p.exit())
        self.live.remove(mp)

    @invariant()
    def auditor_finds_nothing_and_frames_are_conserved(self) -> None:
        assert self.audit() == []
        frames = self.run(self.m.stats())["frames"]
        # the page daemon may have paged some out: never more in RAM than the model has
        assert frames["total"] - frames["free"] <= self.resident()


settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
# A passing run takes seconds; a failing one shrinks for minutes. The default 120 s
# would interrupt the shrink mid-example, and Hypothesis would report that as flaky.
pytestmark = pytest.mark.timeout(MODEL_TIMEOUT_S)
TestMachineModel = MachineModel.TestCase
