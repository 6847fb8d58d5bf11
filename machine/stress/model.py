"""Byte models: what a user's memory, file or wire should hold, byte for byte.

Pure (no gevent, no client): the users (users*.py) keep one model per region
they write, apply every store they make to it, and compare every byte they
read against it; tests/stress/test_model.py checks the models alone.

  ByteModel         a region's bytes (anonymous memory, a shared mapping, a
                    file): a bytearray; stores write it, `diff` compares a read
  PrivateFileModel  a private (copy-on-write) mapping of a file: a page not
                    yet stored to in this mapping reads the file's current
                    bytes; the first store to a page copies the file's page
                    then (the COW fault), and from then on the page is its own
  PageSignatures    the hog's pages: each touched page holds a signature of
                    (salt, page index, generation) at its start and its end,
                    zeros elsewhere; untouched pages are all zeros
  SendLedger        the sender's sends in flight: (sock, seq) -> the bytes
                    memory held at send; matching a packet says which earlier
                    sends of that socket were lost (sends arrive in order)
  Mismatch          a read that differs: the first wrong byte's index in the
                    read and offset in the region, both values; `.corruption()`
                    makes the outcome.Corruption a user raises

Invariants:
  - a model changes only through the stores the user made (store / touch /
    record); reads never change it;
  - `diff(off, got)` compares every byte of `got` against the model at `off`
    and returns None only when all are equal; a Mismatch's `offset` is the
    first differing byte's offset in the region (not the read's start), and
    it holds the whole expected and read bytes;
  - a copy (ByteModel.copy, fork) is independent: stores to one never reach
    the other, as private memory after fork.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any

from machine.stress.outcome import Corruption, first_difference


@dataclass(frozen=True)
class Mismatch:
    """A read that differs from its model: `start` is the read's offset in the region,
    `index` the first wrong byte's index in the read (so `offset` = start + index is
    its offset in the region); `expected` and `got` are the whole compared bytes."""

    start: int
    index: int
    expected: bytes
    got: bytes

    @property
    def offset(self) -> int:
        return self.start + self.index

    def corruption(self, what: str, **ctx: Any) -> Corruption:
        """The Corruption a user raises: offset from the read's start, both values
        (outcome.Corruption keeps a window around it), the region offset in ctx."""
        return Corruption(
            what, self.index, self.expected, self.got, region_offset=self.offset, **ctx
        )


def compare(start: int, expected: bytes | bytearray, got: bytes) -> Mismatch | None:
    """`got` read at region offset `start` against `expected`. => None if equal."""
    if expected == got:
        return None
    i = first_difference(bytes(expected), got)
    if i is None:
        return None
    return Mismatch(start, i, bytes(expected), bytes(got))


class ByteModel:
    """A region of `size` bytes: what it should hold (zero-filled at first, as fresh
    anonymous memory and a new file are)."""

    def __init__(self, size: int, data: bytes | None = None) -> None:
        assert size >= 0
        self.size = size
        self.buf = bytearray(data) if data is not None else bytearray(size)
        assert len(self.buf) == size

    def _check_range(self, off: int, n: int) -> None:
        assert 0 <= off <= off + n <= self.size, (off, n, self.size)

    def store(self, off: int, data: bytes) -> None:
        """A store of `data` at `off` (=> the model holds it there)."""
        self._check_range(off, len(data))
        self.buf[off : off + len(data)] = data

    def expect(self, off: int, n: int) -> bytes:
        self._check_range(off, n)
        return bytes(self.buf[off : off + n])

    def diff(self, off: int, got: bytes) -> Mismatch | None:
        """Compare a read of len(got) bytes at `off`. => the first wrong byte, or None."""
        self._check_range(off, len(got))
        return compare(off, self.buf[off : off + len(got)], got)

    def copy(self) -> ByteModel:
        """An independent copy (a forked child's private memory)."""
        return ByteModel(self.size, bytes(self.buf))


class PrivateFileModel:
    """A private mapping of the file `file` (a ByteModel of the whole file) from file
    offset `offset`, `size` bytes: pages this mapping never stored to show the file's
    current bytes; the first store to a page copies it (copy-on-write)."""

    def __init__(self, file: ByteModel, offset: int, size: int, page: int) -> None:
        assert offset % page == 0
        assert size % page == 0
        assert offset + size <= file.size
        self.file, self.offset, self.size, self.page = file, offset, size, page
        self.own: dict[int, bytearray] = {}  # page index in the mapping -> its copy

    def _pages(self, off: int, n: int) -> range:
        assert 0 <= off <= off + n <= self.size, (off, n, self.size)
        return range(off // self.page, (off + n + self.page - 1) // self.page)

    def store(self, off: int, data: bytes) -> None:
        for pi in self._pages(off, len(data)):
            if pi not in self.own:  # the COW fault: the file's page as it is now
                src = self.offset + pi * self.page
                self.own[pi] = bytearray(self.file.buf[src : src + self.page])
            lo = max(off, pi * self.page)
            hi = min(off + len(data), (pi + 1) * self.page)
            at = lo - pi * self.page
            self.own[pi][at : at + hi - lo] = data[lo - off : hi - off]

    def expect(self, off: int, n: int) -> bytes:
        out = bytearray()
        for pi in self._pages(off, n):
            lo = max(off, pi * self.page)
            hi = min(off + n, (pi + 1) * self.page)
            if pi in self.own:
                at = lo - pi * self.page
                out += self.own[pi][at : at + hi - lo]
            else:
                out += self.file.buf[self.offset + lo : self.offset + hi]
        return bytes(out)

    def diff(self, off: int, got: bytes) -> Mismatch | None:
        return compare(off, self.expect(off, len(got)), got)


class PageSignatures:
    """The hog's model: `npages` pages, each untouched (all zeros) or touched at a
    generation (its signature at its start and its end, zeros between)."""

    SIG = 32  # bytes of a signature

    def __init__(self, npages: int, page: int, salt: int) -> None:
        assert page >= 2 * self.SIG
        self.npages, self.page, self.salt = npages, page, salt
        self.gen: list[int] = [-1] * npages  # -1: never touched

    def signature(self, pi: int, gen: int) -> bytes:
        """SIG bytes naming (salt, page, generation): a page from elsewhere, an older
        generation or another user's page cannot pass for this one."""
        head = f"{self.salt:x}:{pi}:{gen}".encode()
        return hashlib.blake2b(head, digest_size=self.SIG).digest()

    def stores(self, pi: int, gen: int) -> list[tuple[int, bytes]]:
        """The (page offset, bytes) stores that touch page `pi` at `gen`."""
        sig = self.signature(pi, gen)
        return [(0, sig), (self.page - self.SIG, sig)]

    def touch(self, pi: int, gen: int) -> None:
        """Record that page `pi` was stored at generation `gen` (after its stores)."""
        assert 0 <= pi < self.npages
        assert gen >= 0
        self.gen[pi] = gen

    def expected_page(self, pi: int) -> bytes:
        g = self.gen[pi]
        if g < 0:
            return bytes(self.page)
        sig = self.signature(pi, g)
        return sig + bytes(self.page - 2 * self.SIG) + sig

    def diff(self, pi: int, got: bytes) -> Mismatch | None:
        """A read of the whole page `pi`; offsets are in the region (pi * page + ...)."""
        return compare(pi * self.page, self.expected_page(pi), got)


@dataclass(frozen=True)
class Sent:
    sock: int
    seq: int
    va: int
    payload: bytes  # what memory held at send
    action: str  # what the sender did right after


class SendLedger:
    """The sends whose packets have not arrived: (sock, seq) -> Sent."""

    def __init__(self) -> None:
        self.pending: dict[tuple[int, int], Sent] = {}

    def record(self, s: Sent) -> None:
        assert (s.sock, s.seq) not in self.pending
        self.pending[(s.sock, s.seq)] = s

    def match(self, sock: int, seq: int) -> tuple[Sent | None, list[Sent]]:
        """A packet (sock, seq) arrived. => (its send, or None if not one of ours; the
        earlier sends of the same socket still pending: lost, removed)."""
        s = self.pending.pop((sock, seq), None)
        lost = [v for (k, q), v in self.pending.items() if k == sock and q < seq]
        for v in lost:
            del self.pending[(v.sock, v.seq)]
        return s, lost


def log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    """An integer in [lo, hi], log-uniform (as many 1-10 B sizes as 100 K-1 M)."""
    assert 1 <= lo <= hi
    return min(hi, max(lo, int(math.exp(rng.uniform(math.log(lo), math.log(hi + 1))))))


def random_range(rng: random.Random, size: int, max_len: int) -> tuple[int, int]:
    """A random (offset, length >= 1) inside a region of `size` bytes."""
    n = rng.randint(1, min(max_len, size))
    return rng.randrange(0, size - n + 1), n
