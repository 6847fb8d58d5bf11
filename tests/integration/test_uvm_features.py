"""Copy-on-write fork, files, wiring, mprotect, swap: client-level, on both transports."""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path

import pytest

from machine.client import Machine, RequestError, Segv
from machine.params import PAGE_SIZE
from machine.proto import NO_HEADER, Errno, UvmPageout, UvmPageoutReply
from tests.conftest import Harness, boot_real


def _name(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}.bin"


async def test_fork_gives_copy_on_write_memory(harness: Harness) -> None:
    async with harness.attach() as m:
        parent = await m.spawn()
        va = await parent.mmap(8 * PAGE_SIZE)
        await parent.store(va, b"original" * 1024)
        child = await parent.fork()
        assert await child.load(va, 8) == b"original"
        await child.store(va, b"CHILD")
        await parent.store(va + PAGE_SIZE, b"PARENT")
        assert await parent.load(va, 8) == b"original"
        assert await child.load(va + PAGE_SIZE, 8) == b"original"
        assert await child.load(va, 5) == b"CHILD"
        grandchild = await child.fork()
        await child.exit()
        assert await grandchild.load(va, 5) == b"CHILD"
        assert await harness.audit() == []
        st = await m.stats()
        assert st["roles"]["uvm"]["counters"]["flt_acow"] >= 2
    assert await harness.audit() == []


async def test_shared_file_mapping_reaches_the_host_file(harness: Harness) -> None:
    name = _name("shared")
    async with harness.attach() as m:
        f = await m.open(name, create=True, size=3 * PAGE_SIZE)
        assert f.size == 3 * PAGE_SIZE
        p = await m.spawn()
        va = await p.mmap(3 * PAGE_SIZE, file=f, shared=True)
        await p.store(va + 100, b"synced bytes")
        assert await p.msync(va, 3 * PAGE_SIZE) == 1
        assert (harness.disk / name).read_bytes()[100:112] == b"synced bytes"
        await p.store(va + 2 * PAGE_SIZE, b"unmapped later")
        q = await m.spawn()  # another process sees the same page
        vq = await q.mmap(3 * PAGE_SIZE, file=f, shared=True)
        assert await q.load(vq + 2 * PAGE_SIZE, 14) == b"unmapped later"
        await p.munmap(va, 3 * PAGE_SIZE)
        assert (harness.disk / name).read_bytes()[2 * PAGE_SIZE :][:14] == b"unmapped later"
        await q.store(vq, b"at exit")
        await q.exit()
        assert (harness.disk / name).read_bytes()[:7] == b"at exit"
        await f.close()


async def test_private_file_mapping_is_copy_on_write(harness: Harness) -> None:
    name = _name("private")
    harness.disk.mkdir(parents=True, exist_ok=True)
    (harness.disk / name).write_bytes(b"file contents" + bytes(PAGE_SIZE))
    async with harness.attach() as m:
        f = await m.open(name)
        p = await m.spawn()
        va = await p.mmap(2 * PAGE_SIZE, file=f)
        assert await p.load(va, 13) == b"file contents"
        await p.store(va, b"FILE")
        assert await p.load(va, 13) == b"FILE contents"
        await p.msync(va, PAGE_SIZE)
        await p.exit()
    assert (harness.disk / name).read_bytes()[:13] == b"file contents"


async def test_bad_file_names_and_handles_are_refused(harness: Harness) -> None:
    async with harness.attach() as m:
        for bad in ("../escape.bin", "/etc/passwd"):
            with pytest.raises(RequestError) as ei:
                await m.open(bad, create=True, size=10)
            assert ei.value.errno is Errno.EINVAL
        with pytest.raises(RequestError) as ei:
            await m.open(_name("missing"))
        assert ei.value.errno is Errno.ENOENT
        p = await m.spawn()
        f = await m.open(_name("closed"), create=True, size=PAGE_SIZE)
        await f.close()
        with pytest.raises(RequestError) as ei:
            await p.mmap(PAGE_SIZE, file=f, shared=True)
        assert ei.value.errno is Errno.EBADF


async def test_mlock_wires_and_munlock_unwires(harness: Harness) -> None:
    async with harness.attach() as m:
        before = (await m.stats())["frames"]["wired"]
        p = await m.spawn()
        va = await p.mmap(4 * PAGE_SIZE)
        await p.mlock(va, 4 * PAGE_SIZE)
        assert (await m.stats())["frames"]["wired"] == before + 4
        await p.store(va, b"no fault needed")
        assert p.faults == 0  # mlock faulted every page in, writable
        rep = await harness.kcall("uvm", UvmPageout(h=NO_HEADER, asid=p.asid, va=va))
        assert rep.errno is Errno.EBUSY  # a wired page never leaves RAM
        await p.munlock(va, 4 * PAGE_SIZE)
        assert (await m.stats())["frames"]["wired"] == before
        with pytest.raises(RequestError) as ei:
            await p.mlock(va, 8 * PAGE_SIZE)
        assert ei.value.errno is Errno.ENOMEM


async def test_pageout_and_pagein_keep_the_data(harness: Harness) -> None:
    async with harness.attach() as m:
        p = await m.spawn()
        va = await p.mmap(4 * PAGE_SIZE)
        data = bytes(range(256)) * 64
        await p.store(va, data)
        for i in range(4):
            rep = await harness.kcall(
                "uvm", UvmPageout(h=NO_HEADER, asid=p.asid, va=va + i * PAGE_SIZE)
            )
            assert isinstance(rep, UvmPageoutReply), rep
        st = await m.stats()
        assert st["frames"]["swpgonly"] >= 4
        assert await p.load(va, len(data)) == data
        assert await harness.audit() == []


async def test_mprotect(harness: Harness) -> None:
    async with harness.attach() as m:
        p = await m.spawn()
        va = await p.mmap(2 * PAGE_SIZE)
        await p.store(va, b"rw")
        await p.mprotect(va, PAGE_SIZE, "r")
        with pytest.raises(Segv):
            await p.store(va, b"no")
        assert await p.load(va, 2) == b"rw"
        await p.mprotect(va, PAGE_SIZE, "rw")
        await p.store(va, b"ok")
        assert await harness.audit() == []


async def test_files_are_complete_after_a_clean_shutdown(tmp_path: Path) -> None:
    rm = boot_real(tmp_path / "state", "--ram", "16M")
    try:
        async with Machine.attach(rm.endpoint) as m:
            f = await m.open("kept.bin", create=True, size=8 * PAGE_SIZE)
            p = await m.spawn()
            va = await p.mmap(8 * PAGE_SIZE, file=f, shared=True)
            payload = bytes((i * 13) & 0xFF for i in range(8 * PAGE_SIZE))
            await p.store(va, payload)
            info = json.loads((rm.state / "machine.json").read_text())
            assert info["ram"]["bytes"] == 16 << 20
            # no msync, no munmap, no exit: the shutdown must write the pages back
            assert rm.stop(signal.SIGTERM) == 0
    finally:
        if rm.proc.poll() is None:
            rm.stop(signal.SIGKILL)
    assert (tmp_path / "state" / "disk" / "kept.bin").read_bytes() == payload
