"""Client-level behaviour, run on both transports (in-memory and real processes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from machine.client import OutOfMemory, RequestError, Segv
from machine.params import MAX_ACCESS_BYTES, PAGE_SIZE
from machine.proto import NO_HEADER, Errno, MmuLoad, MmuStore, UvmFault, UvmMmap
from machine.proto.vmcalls import RLIMIT_MEMLOCK
from machine.testing import SimMachine
from machine.uvm.page import RESERVE_KERNEL
from machine.uvm.service import UvmService
from tests.conftest import Harness

_H = NO_HEADER


async def test_issue_example_store_load_munmap_exit(harness: Harness) -> None:
    async with harness.attach() as m:
        p = await m.spawn()
        va = await p.mmap(64 * 4096, prot="rw")
        await p.store(va + 10, b"hello")
        assert await p.load(va + 10, 5) == b"hello"
        assert p.faults == 1
        await p.munmap(va, 64 * 4096)
        await p.exit()
    assert await harness.audit() == []


async def test_fresh_memory_reads_zero_and_first_touch_faults_once(harness: Harness) -> None:
    async with harness.attach() as m:
        p = await m.spawn()
        va = await p.mmap(8 * PAGE_SIZE)
        assert await p.load(va, 8 * PAGE_SIZE) == bytes(8 * PAGE_SIZE)
        assert p.faults == 8
        await p.store(va + 3, b"abc")
        assert p.faults == 8  # already mapped writable: no new fault
        assert await p.load(va, 6) == b"\0\0\0abc"


async def test_segv_on_unmapped_address_and_machine_stays_up(harness: Harness) -> None:
    async with harness.attach() as m:
        p = await m.spawn()
        with pytest.raises(Segv) as ei:
            await p.load(0x5000_0000, 4)
        assert ei.value.va == 0x5000_0000
        assert "no mapping" in ei.value.reason
        va = await p.mmap(PAGE_SIZE)
        await p.store(va, b"ok")
        assert await p.load(va, 2) == b"ok"


async def test_segv_on_write_to_read_only_mapping(harness: Harness) -> None:
    async with harness.attach() as m:
        p = await m.spawn()
        va = await p.mmap(2 * PAGE_SIZE, prot="r")
        assert await p.load(va, 4) == b"\0" * 4
        with pytest.raises(Segv) as ei:
            await p.store(va + 8, b"x")
        assert "w" in ei.value.reason
        assert await p.load(va + 8, 1) == b"\0"


async def test_access_past_the_end_of_a_mapping_segfaults_after_the_pages_before_it(
    harness: Harness,
) -> None:
    """Page by page, as a CPU's string instruction: the mapped page is written, the
    fault is at the first byte of the unmapped one."""
    async with harness.attach() as m:
        p = await m.spawn()
        va = await p.mmap(PAGE_SIZE, va=0x4000_0000, fixed=True)
        assert va == 0x4000_0000
        with pytest.raises(Segv) as ei:
            await p.store(va + PAGE_SIZE - 2, b"abcd")  # spans into the unmapped page
        assert ei.value.va == va + PAGE_SIZE
        assert await p.load(va + PAGE_SIZE - 2, 2) == b"ab"
        with pytest.raises(Segv) as ei:
            await p.load(va + PAGE_SIZE - 2, 4)
        assert ei.value.va == va + PAGE_SIZE


async def test_cross_page_and_large_accesses(harness: Harness) -> None:
    n = MAX_ACCESS_BYTES + 3 * PAGE_SIZE + 17
    data = bytes((i * 7 + i // 4096) & 0xFF for i in range(n))
    async with harness.attach() as m:
        p = await m.spawn()
        va = await p.mmap(n + PAGE_SIZE)
        await p.store(va + 5, data)
        assert await p.load(va + 5, n) == data
        assert await p.load(va + 4090, 12) == data[4085:4097]


async def test_munmap_frees_frames_and_later_access_segfaults(harness: Harness) -> None:
    async with harness.attach() as m:
        base = (await m.stats())["frames"]["free"]
        p = await m.spawn()
        va = await p.mmap(16 * PAGE_SIZE)
        await p.touch(va, 16)
        assert (await m.stats())["frames"]["free"] == base - 16
        await p.munmap(va + 4 * PAGE_SIZE, 4 * PAGE_SIZE)  # a hole in the middle
        assert (await m.stats())["frames"]["free"] == base - 12
        with pytest.raises(Segv):
            await p.load(va + 5 * PAGE_SIZE, 1)
        assert await p.load(va + 3 * PAGE_SIZE, 1) == b"\x01"
        assert await p.load(va + 8 * PAGE_SIZE, 1) == b"\x01"
        assert await harness.audit() == []
        await p.exit()
        assert (await m.stats())["frames"]["free"] == base


async def test_exit_and_detach_free_every_frame(harness: Harness) -> None:
    before = await harness.frames()
    async with harness.attach() as m:
        ps = [await m.spawn() for _ in range(3)]
        for p in ps:
            va = await p.mmap(10 * PAGE_SIZE)
            await p.touch(va, 10)
        assert (await m.stats())["frames"]["free"] == before["free"] - 30
        await ps[0].exit()
        assert (await m.stats())["frames"]["free"] == before["free"] - 20
    # leaving the context detached the session: the other two processes exited
    assert (await harness.frames())["free"] == before["free"]
    assert await harness.audit() == []


async def test_a_client_cannot_touch_another_clients_address_space(harness: Harness) -> None:
    async with harness.attach() as a, harness.attach() as b:
        pa = await a.spawn()
        va = await pa.mmap(PAGE_SIZE)
        await pa.store(va, b"secret")
        for req, role in (
            (MmuLoad(h=_H, asid=pa.asid, va=va, n=6), "mmu"),
            (MmuStore(h=_H, asid=pa.asid, va=va, data=b"XXXXXX"), "mmu"),
            (UvmFault(h=_H, asid=pa.asid, va=va, access=2), "uvm"),
            (UvmMmap(h=_H, asid=pa.asid, length=PAGE_SIZE, prot=3), "uvm"),
        ):
            with pytest.raises(RequestError) as ei:
                await b.call_role(role, req)
            # The same answer as for an asid nobody has: no oracle of what exists.
            assert ei.value.errno is Errno.ESRCH
            with pytest.raises(RequestError) as unknown:
                await b.call_role(role, msgspec.structs.replace(req, asid=99999))
            assert unknown.value.errno is Errno.ESRCH
            assert ei.value.detail.replace(str(pa.asid), "N") == unknown.value.detail.replace(
                "99999", "N"
            )
        assert await pa.load(va, 6) == b"secret"


async def test_bad_mmap_arguments_are_refused(harness: Harness) -> None:
    async with harness.attach() as m:
        p = await m.spawn()
        va = await p.mmap(2 * PAGE_SIZE, va=0x1000_0000, fixed=True)
        for kw in (  # (MAP_FIXED over a mapping replaces it: tests/integration/test_vm_advice.py)
            {"va": 0x1000_0001, "fixed": True},  # unaligned
            {"va": 0, "fixed": True},  # page 0
            {"va": (1 << 47), "fixed": True},  # beyond user space
        ):
            with pytest.raises(RequestError) as ei:
                await p.mmap(PAGE_SIZE, **kw)  # type: ignore[arg-type]
            assert ei.value.errno is Errno.EINVAL
        with pytest.raises(RequestError) as ei:
            await p.mmap(0)
        assert ei.value.errno is Errno.EINVAL
        with pytest.raises(ValueError, match="bad protection"):
            await p.mmap(PAGE_SIZE, prot="rq")
        await p.store(va, b"still fine")
        assert await p.load(va, 10) == b"still fine"


async def test_many_processes_in_parallel_keep_their_data(harness: Harness) -> None:
    async def worker(m: object, k: int) -> None:
        p = await m.spawn()  # type: ignore[attr-defined]
        va = await p.mmap(8 * PAGE_SIZE)
        for i in range(8):
            await p.store(va + i * PAGE_SIZE + k, bytes([k, i]) * 8)
        for i in range(8):
            assert await p.load(va + i * PAGE_SIZE + k, 16) == bytes([k, i]) * 8
        await p.exit()

    async with harness.attach() as m:
        await asyncio.gather(*(worker(m, k) for k in range(8)))
    assert await harness.audit() == []


async def test_status_reports_roles_and_frames(harness: Harness) -> None:
    async with harness.attach() as m:
        st = await m.stats()
    assert set(st["roles"]) == {"mmu", "uvm", "pdaemon", "net"}
    for r in st["roles"].values():
        assert r["alive"] is True
        assert isinstance(r["pid"], int)
        assert r["incarnation"] > 0
    assert st["frames"]["total"] == 16 * 256 if harness.kind == "inmemory" else 4096
    assert st["frames"]["free"] <= st["frames"]["total"]
    assert {"faults", "flt_przero"} <= set(st["roles"]["uvm"]["counters"])
    assert st["state"] == "running"


async def test_after_exit_the_process_is_gone(harness: Harness) -> None:
    async with harness.attach() as m:
        p = await m.spawn()
        await p.exit()
        with pytest.raises(RequestError) as ei:
            await p.mmap(PAGE_SIZE)
        assert ei.value.errno is Errno.ESRCH
        with pytest.raises(RequestError):
            await p.load(0x1000, 1)


async def test_out_of_memory_kills_the_process_and_the_machine_carries_on() -> None:
    """RAM 64 pages, swap 16: the page daemon pages out until swap is full; then the fault
    that neither can serve gets ENOMEM and its process is killed; others carry on."""
    async with (
        SimMachine.boot(
            seed=3, ram_bytes=64 * PAGE_SIZE, swap_bytes=16 * PAGE_SIZE, latency_s=(0.0, 0.0)
        ) as sim,
        sim.attach() as m,
    ):
        other = await m.spawn()
        ova = await other.mmap(PAGE_SIZE)
        await other.store(ova, b"survivor")
        hog = await m.spawn()
        va = await hog.mmap(200 * PAGE_SIZE)
        stored: list[int] = []

        async def fill() -> None:
            for i in range(200):
                await hog.store(va + i * PAGE_SIZE, bytes([i]) * 8)
                stored.append(i)

        with pytest.raises(OutOfMemory, match="killed"):
            await fill()
        assert len(stored) > 64 - RESERVE_KERNEL  # the daemon made room: swap was used
        st = await m.stats()
        assert st["roles"]["pdaemon"]["counters"]["pdpageouts"] > 0
        assert st["roles"]["uvm"]["counters"]["oomkills"] == 1
        with pytest.raises(RequestError) as ei:
            await hog.load(va, 1)
        assert ei.value.errno is Errno.ESRCH  # killed
        assert await other.load(ova, 8) == b"survivor"
        p = await m.spawn()
        vb = await p.mmap(PAGE_SIZE)
        await p.store(vb, b"room again")
        assert await p.load(vb, 10) == b"room again"


async def test_write_back_of_more_frames_than_one_message_carries() -> None:
    """A file object with more resident pages than one pmap.attrs message may name
    (4096) is written back in batches (regression: this used to panic uvm)."""
    npages = 4100
    async with (
        SimMachine.boot(seed=4, ram_bytes=(npages + 256) * PAGE_SIZE, latency_s=(0.0, 0.0)) as sim,
        sim.attach() as m,
    ):
        f = await m.open("big.bin", create=True, size=npages * PAGE_SIZE)
        p = await m.spawn()
        va = await p.mmap(npages * PAGE_SIZE, file=f, shared=True)
        uvm = sim.service("uvm")
        assert isinstance(uvm, UvmService)
        uvm.vm.wiredmax = npages + 256  # beyond the default third of RAM: this test only
        ram = (npages + 256) * PAGE_SIZE
        await p.setrlimit(RLIMIT_MEMLOCK, ram, ram)
        await p.mlock(va, npages * PAGE_SIZE)  # every page resident
        await p.store(va + (npages - 1) * PAGE_SIZE, b"last")
        assert await p.msync(va, npages * PAGE_SIZE) >= 1
        await p.exit()
        data = (Path(sim.state_dir) / "disk" / "big.bin").read_bytes()
        assert data[(npages - 1) * PAGE_SIZE :][:4] == b"last"


async def test_the_directory_holds_what_a_client_may_rely_on(harness: Harness) -> None:
    """ctl.directory (1.7): the page size, the lease, the profile's knobs, the loan
    threshold and every limit, readable over the protocol (docs/client-guide.md)."""
    from machine.limits import Limits
    from machine.profile import load_profile

    async with harness.attach() as m:
        d = m.directory
        assert d is not None
        assert d.page_size == PAGE_SIZE
        assert d.lease_s > 0
        prof = load_profile(d.profile)
        assert d.loan_threshold == prof.settings.loan_threshold
        assert d.knobs == dict(prof.knobs)
        assert set(d.limits) == set(Limits().to_dict())
        assert all(v > 0 for v in d.limits.values())
