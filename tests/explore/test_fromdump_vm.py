"""A recording that holds the VM calls of issue 20 replays: open with flags, ftruncate and
the SIGBUS beyond the end, msync flags, minherit NONE at fork (the child's Segv),
madvise, mincore, getrlimit/setrlimit, mlockall/munlockall, close. From a simulated
machine's live dump and from a real one's (`uvm-machine dump`): every request is played,
the file handle the open made is mapped to the replay's, the two accesses that faulted
when recorded fault again (and only they), and the child's access that minherit NONE
left without a mapping is the one request outside the replay's mappings."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from machine.client import (
    MADV_DONTNEED,
    MADV_FREE,
    MAP_INHERIT_NONE,
    MCL_CURRENT,
    MCL_FUTURE,
    MS_ASYNC,
    MS_INVALIDATE,
    MS_SYNC,
    O_CREAT,
    O_RDWR,
    RLIMIT_MEMLOCK,
    Machine,
    Segv,
    Sigbus,
)
from machine.dumpfile import read_dump
from machine.explore.explore import run_seed
from machine.explore.fromdump import extract
from machine.explore.run import run_workload
from machine.ipc.inmemory import run_simulation
from machine.proto import NO_HEADER, CtlDumpsys, CtlDumpsysReply
from machine.testing import SimMachine
from tests.conftest import boot_real

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]
PAGE = 4096

#: The session's requests, in order (what the extracted client must hold).
TAGS = [
    "uvm.spawn",
    "uvm.open",
    "uvm.mmap",
    "mmu.store",
    "uvm.msync",
    "uvm.ftruncate",
    "mmu.load",  # beyond the end: SIGBUS
    "mmu.load",  # the partial page: zeros past the end
    "uvm.ftruncate",
    "uvm.msync",
    "uvm.close",
    "uvm.mmap",
    "mmu.store",
    "uvm.minherit",
    "uvm.fork",
    "mmu.load",  # the child's, where minherit NONE left nothing: SIGSEGV
    "uvm.exit",
    "uvm.madvise",
    "uvm.madvise",
    "uvm.mincore",
    "uvm.getrlimit",
    "uvm.setrlimit",
    "uvm.mlockall",
    "uvm.mmap",
    "uvm.mincore",
    "uvm.munlockall",
    "uvm.exit",
]


async def vm_calls(m: Machine) -> dict[str, Any]:
    """The calls, each checked as it is made. => what the test compares the dump with."""
    p = await m.spawn()
    f = await m.open("vm-calls.bin", create=True, size=4 * PAGE, flags=O_RDWR | O_CREAT)
    vs = await p.mmap(4 * PAGE, file=f, shared=True)
    await p.store(vs, b"v" * 4 * PAGE)
    await p.msync(vs, 4 * PAGE, MS_ASYNC | MS_INVALIDATE)
    await f.ftruncate(5000)
    with pytest.raises(Sigbus):
        await p.load(vs + 2 * PAGE, 1)
    assert await p.load(vs + 4096, 8) == b"v" * 8
    await f.ftruncate(4 * PAGE)
    await p.msync(vs, 4 * PAGE, MS_SYNC)
    await f.close()
    va = await p.mmap(2 * PAGE)
    await p.store(va, b"w" * 2 * PAGE)
    await p.minherit(va, 2 * PAGE, MAP_INHERIT_NONE)
    c = await p.fork()
    with pytest.raises(Segv):
        await c.load(va, 1)
    await c.exit()
    await p.madvise(va, PAGE, MADV_DONTNEED)
    await p.madvise(va, 2 * PAGE, MADV_FREE)
    assert len(await p.mincore(va, 2 * PAGE)) == 2
    cur, hard = await p.getrlimit(RLIMIT_MEMLOCK)
    await p.setrlimit(RLIMIT_MEMLOCK, cur // 2, hard)
    await p.mlockall(MCL_CURRENT | MCL_FUTURE)
    later = await p.mmap(PAGE)
    assert await p.mincore(later, PAGE) == b"\x01"  # MCL_FUTURE: wired as it is mapped
    await p.munlockall()
    await p.exit()
    return {"handle": f.handle, "asid": p.asid, "child": c.asid, "session": str(m.session)}


def check_replay(dump: dict[str, Any], made: dict[str, Any], detached: bool) -> None:
    ex = extract(dump)
    (mine,) = [ops for ops in ex.workload.clients if ops[0].args.get("session") == made["session"]]
    assert [op.args["t"] for op in mine] == TAGS + ["uvm.detach"] * detached
    assert mine[1].args["makes"] == made["handle"]  # uvm.open made the handle
    assert mine[14].args["makes"] == made["child"]
    steps = "\n".join(ex.workload.steps())
    assert f"uvm.ftruncate(handle={made['handle']}, length=5000)" in steps
    assert "uvm.minherit(asid=" in steps
    assert f"inherit={MAP_INHERIT_NONE}" in steps
    r = run_workload(ex.workload, "modern", run_seed(0, 0), follow=ex.follow())
    assert r.outcome == "ok", r.message
    assert r.calls is not None
    assert r.calls.calls >= len(TAGS)
    assert r.calls.failed_calls == 2, r.calls  # the SIGBUS and the child's SIGSEGV, again
    assert r.calls.va_mismatch == 1, r.calls.va_notes
    assert "mmu.load" in r.calls.va_notes[0]


async def _sim(state: Path, made: dict[str, Any]) -> None:
    async with (
        SimMachine.boot(
            seed=11, ram_bytes=2 << 20, swap_bytes=4 << 20, profile="modern", state_dir=str(state)
        ) as sim,
        sim.attach() as m,
    ):
        made.update(await vm_calls(m))
        rep = await sim.kcall("supervisor", CtlDumpsys(h=NO_HEADER, reason="vm calls"))
        assert isinstance(rep, CtlDumpsysReply)
        made["path"] = rep.path


@pytest.mark.timeout(60)
def test_a_simulated_recording_of_the_vm_calls_replays(tmp_path: Path) -> None:
    made: dict[str, Any] = {}
    run_simulation(_sim(tmp_path, made))
    check_replay(read_dump(made["path"]), made, detached=False)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_real_machines_recording_of_the_vm_calls_replays(tmp_path: Path) -> None:
    rm = boot_real(tmp_path / "state", "--ram", "4M", "--profile", "modern")
    try:

        async def session() -> dict[str, Any]:
            async with Machine.attach(rm.endpoint) as m:
                return await vm_calls(m)

        made = asyncio.run(session())
        p = subprocess.run(
            [PY, "-m", "machine", "dump", "--state", str(rm.state), "--reason", "vm calls"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert p.returncode == 0, p.stderr
        dump = read_dump(Path(p.stdout.strip().splitlines()[-1]))
    finally:
        assert rm.stop() == 0
    assert dump["kind"] == "live"
    check_replay(dump, made, detached=True)  # the session ended before the dump
