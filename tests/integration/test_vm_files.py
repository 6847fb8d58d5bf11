"""Files end to end through the client API, on the in-memory machine and on real
processes: open flags, the maximum protection of a file mapping, File.ftruncate and
Sigbus (with the faulting address) from Process.load and store, msync's flags with the
host file checked byte for byte, and a truncation while the net driver holds a loan."""

from __future__ import annotations

import uuid

import pytest

from machine.client import RequestError, Sigbus
from machine.params import PAGE_SIZE
from machine.proto import (
    MS_ASYNC,
    MS_INVALIDATE,
    MS_SYNC,
    NO_HEADER,
    O_CREAT,
    O_EXCL,
    O_RDONLY,
    O_RDWR,
    O_TRUNC,
    O_WRONLY,
    Errno,
    NetLink,
)
from machine.proto.types import Prot
from machine.wirecheck import WireCheck
from tests.conftest import Harness

P = PAGE_SIZE


def _name(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}.bin"


async def test_open_flags_and_the_maximum_protection(harness: Harness) -> None:
    name = _name("modes")
    async with harness.attach() as m:
        with pytest.raises(RequestError) as ei:
            await m.open(name, flags=O_RDWR)
        assert ei.value.errno is Errno.ENOENT
        f = await m.open(name, size=2 * P, flags=O_RDWR | O_CREAT | O_EXCL)
        assert f.size == 2 * P
        with pytest.raises(RequestError) as ei:
            await m.open(name, flags=O_RDWR | O_CREAT | O_EXCL)
        assert ei.value.errno is Errno.EEXIST
        for bad in (3, O_RDWR | 0x8):
            with pytest.raises(RequestError) as ei:
                await m.open(name, flags=bad)
            assert ei.value.errno is Errno.EINVAL
        ro = await m.open(name, flags=O_RDONLY)
        wo = await m.open(name, flags=O_WRONLY)
        p = await m.spawn()
        with pytest.raises(RequestError) as ei:
            await p.mmap(P, file=ro, shared=True)  # PROT_READ|PROT_WRITE by default
        assert ei.value.errno is Errno.EACCES
        va = await p.mmap(P, prot=Prot.READ, file=ro, shared=True)
        with pytest.raises(RequestError) as ei:
            await p.mprotect(va, P, Prot.READ | Prot.WRITE)
        assert ei.value.errno is Errno.EACCES
        with pytest.raises(RequestError) as ei:
            await p.mmap(P, prot=Prot.READ, file=wo, shared=True)
        assert ei.value.errno is Errno.EACCES
        pva = await p.mmap(P, file=ro)  # private: writable, never writes the file
        await p.store(pva, b"private")
        with pytest.raises(RequestError) as ei:
            await ro.ftruncate(0)
        assert ei.value.errno is Errno.EINVAL
        # O_TRUNC on the open file: its pages leave the read-only mapping too.
        await p.load(va, 1)
        t = await m.open(name, flags=O_RDWR | O_TRUNC)
        assert t.size == 0
        assert (harness.disk / name).stat().st_size == 0
        with pytest.raises(Sigbus) as eb:
            await p.load(va + 7, 1)
        assert eb.value.va == va + 7
        assert await p.load(pva, 7) == b"private"
        await p.exit()
        for h in (f, ro, wo, t):
            await h.close()
    assert await harness.audit() == []


async def test_ftruncate_shrink_sigbus_and_grow(harness: Harness) -> None:
    name = _name("trunc")
    async with harness.attach() as m:
        f = await m.open(name, create=True, size=3 * P)
        p = await m.spawn()
        q = await m.spawn()
        va = await p.mmap(3 * P, file=f, shared=True)
        vq = await q.mmap(3 * P, file=f, shared=True)
        await p.store(va, b"A" * (3 * P))
        assert await q.load(vq + 2 * P, 4) == b"AAAA"
        await f.ftruncate(P + 10)
        assert f.size == P + 10
        for proc, base in ((p, va), (q, vq)):
            with pytest.raises(Sigbus) as eb:
                await proc.load(base + 2 * P + 123, 4)
            assert eb.value.va == base + 2 * P + 123
            assert eb.value.access == Prot.READ
            with pytest.raises(Sigbus) as eb:
                await proc.store(base + 2 * P, b"x")
            assert eb.value.va == base + 2 * P
            assert eb.value.access & Prot.WRITE
        # The partial last page reads zeros past the end; none of it reaches the file.
        assert await q.load(vq + P, 12) == b"A" * 10 + bytes(2)
        await p.store(va + P + 5, b"past the end")
        assert await p.msync(va, 2 * P) == 2
        assert (harness.disk / name).read_bytes() == b"A" * P + b"A" * 5 + b"past "
        # Growing: zeros where the store went past the old end, and in the new pages.
        await f.ftruncate(3 * P)
        assert await q.load(vq + P, P) == b"A" * 5 + b"past " + bytes(P - 10)
        assert await q.load(vq + 2 * P, P) == bytes(P)
        with pytest.raises(RequestError) as ei:
            await f.ftruncate(1 << 61)
        assert ei.value.errno is Errno.EFBIG
        await p.exit()
        await q.exit()
        await f.close()
        want = b"A" * (P + 5) + b"past " + bytes(2 * P - 10)
        assert (harness.disk / name).read_bytes() == want
        st = await m.stats()
        assert st["roles"]["uvm"]["counters"]["truncations"] >= 2
        assert st["roles"]["uvm"]["counters"]["sigbus"] >= 4
    assert await harness.audit() == []


async def test_msync_flags_and_the_host_file_byte_for_byte(harness: Harness) -> None:
    name = _name("msync")
    async with harness.attach() as m:
        f = await m.open(name, create=True, size=4 * P)
        p = await m.spawn()
        va = await p.mmap(4 * P, file=f, shared=True)
        data = bytes((i * 7 + 3) & 0xFF for i in range(4 * P))
        await p.store(va, data)
        assert await p.msync(va + 10, 2 * P - 10, MS_SYNC) == 2  # va rounds down
        assert (harness.disk / name).read_bytes()[: 2 * P] == data[: 2 * P]
        assert await p.msync(va + 2 * P, 2 * P, MS_ASYNC) == 2
        assert (harness.disk / name).read_bytes() == data
        for bad in (0, MS_ASYNC | MS_SYNC, 0x10):
            with pytest.raises(RequestError) as ei:
                await p.msync(va, P, bad)
            assert ei.value.errno is Errno.EINVAL
        with pytest.raises(RequestError) as ei:
            await p.msync(va + 3 * P, 2 * P)
        assert ei.value.errno is Errno.EFAULT
        # MS_INVALIDATE: the cached pages go; a change behind the cache is then seen.
        with (harness.disk / name).open("r+b") as fh:
            fh.seek(P)
            fh.write(b"from the host")
        assert await p.msync(va, 4 * P, MS_SYNC | MS_INVALIDATE) == 0
        assert await p.load(va + P, 13) == b"from the host"
        await p.exit()
        await f.close()
    assert await harness.audit() == []


async def test_truncating_a_page_the_driver_still_borrows(harness: Harness) -> None:
    """A send in flight (the link held: the page stays loaned), then the file shrinks
    under it: the wire gets the bytes of send time (the default profile, modern)."""
    name = _name("loaned")
    async with harness.attach() as m:
        wire = await m.wire().open()
        check = WireCheck()
        f = await m.open(name, create=True, size=2 * P)
        p = await m.spawn()
        va = await p.mmap(2 * P, file=f, shared=True)
        sent = bytes(range(256)) * (2 * P // 256)
        await p.store(va, sent)
        s = await p.socket()
        await harness.kcall("net", NetLink(h=NO_HEADER, hold=True))
        try:
            r = await p.send(s, va, 2 * P)
            check.expect(r, sent)
            assert r.loaned_pages == 2
            await f.ftruncate(100)
            with pytest.raises(Sigbus):
                await p.load(va + P, 1)
        finally:
            await harness.kcall("net", NetLink(h=NO_HEADER, hold=False))
        check.check(await wire.get(30))
        assert check.missing() == []
        assert await p.load(va, P) == sent[:100] + bytes(P - 100)
        await p.exit()
        await f.close()
        await wire.close()
    assert await harness.audit() == []
