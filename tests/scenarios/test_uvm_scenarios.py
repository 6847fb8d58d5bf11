"""uvm-semantics.md section 14: the scenarios that need neither the page daemon nor the
network, on the whole in-process machine (client library -> uvm -> mmu).

13. wire forces COW now        14. fork with a wired entry        20. allocation reserves
"""

from __future__ import annotations

from pathlib import Path

import pytest

from machine.client import OutOfMemory
from machine.params import PAGE_SIZE
from machine.proto.vmcalls import RLIMIT_MEMLOCK
from machine.testing import SimMachine
from machine.uvm.page import KERNEL, NIL, PAGEDAEMON, RESERVE_KERNEL, PageFlag
from machine.uvm.service import UvmService
from machine.uvm.state import Uvm


def _uvm(sim: SimMachine) -> Uvm:
    svc = sim.service("uvm")
    assert isinstance(svc, UvmService)
    return svc.vm


async def test_13_wire_forces_cow_now(tmp_path: Path) -> None:
    """A private writable file mapping never written; mlock. Expected: amap created, each
    page copied into a new anon at once, anon pages wc=1, off the queues, PG_CLEAN clear,
    no swap slot; later writes take no faults."""
    async with SimMachine.boot(seed=13, ram_bytes=256 * PAGE_SIZE) as sim, sim.attach() as m:
        (Path(sim.state_dir) / "disk").mkdir(exist_ok=True)
        (Path(sim.state_dir) / "disk" / "lib.so").write_bytes(b"\x7fELF" * (PAGE_SIZE))
        f = await m.open("lib.so")
        p = await m.spawn()
        va = await p.mmap(4 * PAGE_SIZE, "rw", file=f)  # private, needs copy
        uvm = _uvm(sim)
        await p.mlock(va, 4 * PAGE_SIZE)
        e = uvm.spaces[p.asid].map.lookup(va)
        assert e is not None
        assert e.amap is not None
        assert e.amap.nused == 4
        assert uvm.stats.flt_prcopy == 4
        for _, anon in e.amap.used():
            assert uvm.pages.wire_count[anon.page] == 1
            assert uvm.pages.pqflags[anon.page] == 0
            assert not uvm.pages.flags[anon.page] & PageFlag.CLEAN
            assert anon.swslot == 0
        await p.store(va + 4 * PAGE_SIZE - 4, b"mine")
        assert p.faults == 0
        assert (Path(sim.state_dir) / "disk" / "lib.so").read_bytes()[:4] == b"\x7fELF"


async def test_14_fork_with_a_wired_entry_copies_at_fork_time() -> None:
    """Parent has wired anon memory; fork. Expected: the child gets copies of every anon
    page at fork time (amap_cow_now); parent mappings not write-protected; parent writes
    do not fault."""
    async with SimMachine.boot(seed=14, ram_bytes=256 * PAGE_SIZE) as sim, sim.attach() as m:
        uvm = _uvm(sim)
        parent = await m.spawn()
        va = await parent.mmap(8 * PAGE_SIZE)
        await parent.mlock(va, 8 * PAGE_SIZE)
        await parent.store(va, b"before fork")
        free = uvm.pages.free.count
        child = await parent.fork()
        assert uvm.pages.free.count == free - 8  # copied now
        faults = parent.faults
        await parent.store(va, b"after  fork")
        assert parent.faults == faults  # no fault: the parent was not write-protected
        assert await child.load(va, 11) == b"before fork"
        ce = uvm.spaces[child.asid].map.lookup(va)
        pe = uvm.spaces[parent.asid].map.lookup(va)
        assert ce is not None
        assert pe is not None
        assert ce.amap is not pe.amap
        assert not ce.needs_copy


async def test_20_allocation_reserves() -> None:
    """free = 5: a user allocation fails (after uvm_wait: the page daemon is woken but
    finds nothing to reclaim, every other page being wired) and its process is killed;
    a kernel-object allocation succeeds; free = 1: only the page daemon's succeeds."""
    async with (
        SimMachine.boot(seed=20, ram_bytes=64 * PAGE_SIZE, latency_s=(0.0, 0.0)) as sim,
        sim.attach() as m,
    ):
        uvm = _uvm(sim)
        uvm.alloc_wait_s = 0.05
        holder = await m.spawn()
        uvm.wiredmax = 64  # every page wired: beyond the default third of RAM
        await holder.setrlimit(RLIMIT_MEMLOCK, 64 * PAGE_SIZE, 64 * PAGE_SIZE)
        va = await holder.mmap((64 - RESERVE_KERNEL) * PAGE_SIZE)
        await holder.mlock(va, (64 - RESERVE_KERNEL) * PAGE_SIZE)  # wired: never reclaimed
        assert uvm.pages.free.count == RESERVE_KERNEL
        woke = (await m.stats())["roles"]["pdaemon"]["counters"]["pdwoke"]
        victim = await m.spawn()
        vv = await victim.mmap(PAGE_SIZE)
        with pytest.raises(OutOfMemory, match="killed"):
            await victim.store(vv, b"u")
        st = await m.stats()
        assert st["roles"]["uvm"]["counters"]["fltnoram"] >= 1
        assert st["roles"]["pdaemon"]["counters"]["pdwoke"] > woke
        kernel = [uvm.pages.alloc(obj=999, who=KERNEL) for _ in range(RESERVE_KERNEL - 1)]
        assert NIL not in kernel
        assert uvm.pages.free.count == 1
        assert uvm.pages.alloc(obj=999, who=KERNEL) == NIL
        last = uvm.pages.alloc(obj=999, who=PAGEDAEMON)
        assert last != NIL
        for pfn in (*kernel, last):  # give them back so the machine stays consistent
            uvm.pages.flags[pfn] = 0
            uvm.pages.free_page(pfn)


async def test_28_the_page_daemon_never_waits_for_itself(tmp_path: Path) -> None:
    """The page daemon calls uvm_wait: "pagedaemon: deadlock detected!", a short sleep,
    and no wait for memory it alone could free."""
    from machine.proto import UserError
    from tests.unit.uvm.localpmap import make_uvm

    uvm, _ = make_uvm(16, tmp_path)
    uvm.alloc_wait_s = 0.08
    while uvm.pages.free.count:
        uvm.pages.alloc(obj=999, who=PAGEDAEMON)
    with pytest.raises(UserError) as ei:
        await uvm.alloc_page_wait(obj=None, who=PAGEDAEMON)
    assert ei.value.errno == "ENOMEM"
    assert uvm.stats.pddeadlock == 1
    assert list(uvm.dmesg) == ["pagedaemon: deadlock detected!"]
