"""Sockets, sends and the wire at the client level, on both transports: what a receiver
gets, and bad sends (another client's socket or process, a bad buffer) answered with an
error that changes nothing."""

from __future__ import annotations

import pytest

from machine.client import RequestError
from machine.params import PAGE_SIZE
from machine.proto import NO_HEADER, Errno, NetSend
from tests.conftest import Harness


async def test_loaned_and_copied_sends_arrive_in_order_with_their_bytes(harness: Harness) -> None:
    async with harness.attach() as m, m.wire() as wire:
        p = await m.spawn()
        va = await p.mmap(32 * PAGE_SIZE, "rw")
        data = bytes((i * 13) & 0xFF for i in range(32 * PAGE_SIZE))
        await p.store(va, data)
        s = await p.socket()
        small = await p.send(s, va + 5, 1000)  # below the threshold: copied
        big = await p.send(s, va + 7, 20 * PAGE_SIZE)  # loaned, in 64 KiB chunks
        assert (small.copied_bytes, small.loaned_pages) == (1000, 0)
        assert big.loaned_pages == 17 + 5  # each chunk loans the pages it spans (unaligned)
        assert big.seq == small.seq + 1
        first, second = await wire.get(), await wire.get()
        assert (first.seq, first.payload, first.loaned) == (small.seq, data[5:1005], False)
        assert (second.seq, second.payload, second.loaned) == (
            big.seq,
            data[7 : 7 + 20 * PAGE_SIZE],
            True,
        )
        assert first.session == m.session
        assert first.asid == p.pid


async def test_bad_sends_get_errors_and_change_nothing(harness: Harness) -> None:
    async with harness.attach() as a, harness.attach() as b:
        pa = await a.spawn()
        va = await pa.mmap(4 * PAGE_SIZE, "rw")
        await pa.store(va, b"mine" * 1024)
        sa = await pa.socket()
        pb = await b.spawn()
        frames = (await a.stats())["frames"]
        with pytest.raises(RequestError) as ei:  # another client's socket
            await b.call_role("net", NetSend(h=NO_HEADER, asid=pb.pid, sock=sa.id, va=va, n=64))
        assert ei.value.errno is Errno.EPERM
        sb = await pb.socket()
        with pytest.raises(RequestError) as ei:  # a socket of another process
            await b.call_role("net", NetSend(h=NO_HEADER, asid=pa.pid, sock=sb.id, va=va, n=64))
        assert ei.value.errno is Errno.EINVAL
        with pytest.raises(RequestError) as ei:  # nothing mapped there (copy path)
            await pb.send(sb, 0x7000_0000, 100)
        assert ei.value.errno is Errno.EFAULT
        with pytest.raises(RequestError) as ei:  # nothing mapped there (loan path)
            await pb.send(sb, 0x7000_0000, 4 * PAGE_SIZE)
        assert ei.value.errno is Errno.EFAULT
        with pytest.raises(RequestError) as ei:
            await pb.send(type(sb)(pb, 999), va, 10)  # no such socket
        assert ei.value.errno is Errno.EBADF
        after = (await a.stats())["frames"]
        assert (after["free"], after["loaned"]) == (frames["free"], frames["loaned"])
        assert await pa.load(va, 4) == b"mine"
        assert await harness.audit() == []
