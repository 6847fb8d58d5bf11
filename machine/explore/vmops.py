"""The explorer's ops of the VM calls (issue 20), each checking every byte it reads.

    class _Player(VmOps): ...              # machine.explore.run: await self.vm_op(p, s, op, tag)

Also what every op of the run shares: `fill` (a page pattern that names its op and
page), `buffer` (a fresh anonymous or file mapping), `sees` (a load that must equal
what the process stored), `faults` (an access that must raise Segv or Sigbus), and
WorkloadError (a rule the machine broke, the run's `error`).

What each op does and what it must see (workload.py's module doc has the args):

  trunc    a new file of `pages` pages mapped shared and stored into (the file's
           bytes); a "private" view beside it with the `cow` pages stored into
           (copy-on-write copies); with `loan`, the shared view is sent (loaned)
           and the file truncated while the send is in flight: the payload is
           what memory held at send. After ftruncate(cut): the shared view reads
           the bytes before `cut` and zeros after it up to the end of its page;
           every page wholly beyond the end raises Sigbus, for a load and for a
           store (which changes nothing); the private view's copies keep their
           bytes wherever they are, its other pages read the file (or Sigbus).
           With `grow`, a store past the end inside the last page (no fault)
           is seen, then ftruncate back to `pages`: everything beyond `cut`
           reads zeros, that store too (the growth zeroes the old last page's
           tail), the private copies still theirs. uvm_vnp_setsize, ftruncate(2).
  inherit  minherit(inherit) on a fresh buffer (anon, or a shared or private
           file mapping) stored into, maybe sent (loaned), then fork: NONE: the
           child's load and store raise Segv; ZERO: the child reads zeros; COPY:
           the child reads the parent's bytes and its stores stay its own (also
           for a shared mapping: NetBSD's fork makes it copy-on-write); SHARE:
           the child reads them, and each sees the other's stores. The parent's
           bytes are its own throughout (except the child's SHARE stores).
  advise   madvise(DONTNEED or FREE) on a fresh buffer stored into, maybe sent
           (loaned: the payload stays what memory held at send, a FREE'd loaned
           anon lives on as its loan's), maybe while a forked child holds the
           pages. DONTNEED changes no byte. FREE: a shared file mapping's bytes
           stay (cleaned, then freed: read back from the file); an anonymous or
           private page reads either its bytes or zeros (NetBSD's uvm_map_clean
           frees a resident, unbusy, unwired anon of an amap with one reference;
           a page out on swap or held by the page daemon stays, so under
           pressure both happen) -- whole pages, never a mix; with a child
           holding them (its amap shared), nothing is freed and no byte changes,
           and the child's bytes never do. mincore then has a byte per page, 0
           or 1. Stores after the advice are seen.
  lockall  in a process of its own: `pages` mapped and stored, mlockall(flags),
           `more` pages mapped: MCL_CURRENT makes the first resident (mincore
           all 1), MCL_FUTURE the later one as it is mapped (all 1 before a
           touch; without it, untouched pages are not resident: all 0); both
           read their stores; maybe the later one is sent; then munlockall (a
           mapping made after it is not wired: mincore 0) or exit straight.

The machine may refuse to wire (mlock's EAGAIN, mlockall's and an MCL_FUTURE mmap's
ENOMEM: its wiredmax, which under 1999 loans fill too): no failure, but then nothing
may be left locked (`mlock` checks it; a refused lockall's process exits).
Every op keeps the machine's state what the final checks expect: a file handle
is closed and a forked child exits even when the op fails midway (else its frames
would be a false leak).
Invariant: an op's requests depend only on its args and the machine's replies (a
run stays a function of its seeds).
"""

from __future__ import annotations

import contextlib
import functools
import struct
from typing import Any

from machine.client import (
    MADV_DONTNEED,
    MADV_FREE,
    MAP_INHERIT_COPY,
    MAP_INHERIT_NONE,
    MAP_INHERIT_SHARE,
    MAP_INHERIT_ZERO,
    MCL_CURRENT,
    MCL_FUTURE,
    File,
    Machine,
    MachineError,
    OutOfMemory,
    Process,
    RequestError,
    Segv,
    Sigbus,
    Socket,
)
from machine.explore.workload import Op
from machine.params import PAGE_SIZE
from machine.proto import Errno

INHERIT = {
    "none": MAP_INHERIT_NONE,
    "copy": MAP_INHERIT_COPY,
    "share": MAP_INHERIT_SHARE,
    "zero": MAP_INHERIT_ZERO,
}
ADVICE = {"dontneed": MADV_DONTNEED, "free": MADV_FREE}
MCL = {"current": MCL_CURRENT, "future": MCL_FUTURE, "both": MCL_CURRENT | MCL_FUTURE}
#: Added to an op's tag for its second and third patterns (a child's, a later store's).
_OTHER, _AGAIN = 1 << 20, 2 << 20


class WorkloadError(Exception):
    """A client saw the machine break a rule it checks (its own stores, COW)."""


def fill(tag: int, n: int) -> bytes:
    """n bytes a client stores: each page starts with (tag, page number), then a pattern
    of the tag, so a page from another buffer or offset is told apart (and it is fast)."""
    rest = _pattern((tag * 131) & 0xFF)
    pages = -(-n // PAGE_SIZE)
    out = b"".join([struct.pack("<II", tag, pg) + rest for pg in range(pages)])
    return out[:n]


@functools.lru_cache(maxsize=256)
def _pattern(c: int) -> bytes:
    """A page's bytes after its 8-byte head: byte i is (c + 7 i) mod 256 (one per c)."""
    return bytes((c + i * 7) & 0xFF for i in range(8, PAGE_SIZE))


def _page(b: bytes, pg: int) -> bytes:
    return b[pg * PAGE_SIZE : (pg + 1) * PAGE_SIZE]


async def _quietly_exit(c: Process) -> None:
    if not c.exited:
        with contextlib.suppress(MachineError):
            await c.exit()


async def _quietly_close(f: File) -> None:
    with contextlib.suppress(MachineError):
        await f.close()


class VmOps:
    """The ops above, for the run's player (which has `m`, `files` and `expect`)."""

    m: Machine
    files: int

    def expect(self, tag: int, r: Any, data: bytes) -> None:
        raise NotImplementedError  # the player's: send r's packet must hold `data`

    # -- shared by every op ----------------------------------------------------------

    async def new_file(self, n: int) -> File:
        self.files += 1
        return await self.m.open(f"explore-{self.files}.bin", create=True, size=n)

    async def buffer(self, p: Process, n: int, buf: str) -> int:
        """A fresh mapping of n bytes: anonymous, or a new file's (shared or private)."""
        length = -(-n // PAGE_SIZE) * PAGE_SIZE
        if buf == "anon":
            return await p.mmap(length, "rw")
        f = await self.new_file(length)
        try:
            return await p.mmap(length, "rw", file=f, shared=buf == "shared")
        finally:
            await f.close()  # the mapping keeps the vnode

    async def sees(self, p: Process, va: int, data: bytes, what: str) -> None:
        got = await p.load(va, len(data))
        if got != data:
            bad = next(i for i in range(len(data)) if got[i] != data[i])
            raise WorkloadError(f"process {p.asid} does not see {what}: offset {bad:#x} differs")

    async def faults(
        self, p: Process, va: int, signal: type[Segv | Sigbus], what: str, store: bool = False
    ) -> None:
        """A load (or a one-byte store) at va must raise `signal` (Segv or Sigbus)."""
        how = "store" if store else "load"
        try:
            if store:
                await p.store(va, b"\xbb")
            else:
                await p.load(va, 1)
        except (Segv, Sigbus) as e:
            if isinstance(e, signal):
                return
            raise WorkloadError(
                f"process {p.asid}'s {how} at {va:#x} ({what}) raised {type(e).__name__},"
                f" not {signal.__name__}"
            ) from None
        raise WorkloadError(f"process {p.asid}'s {how} at {va:#x} ({what}) did not fault")

    async def mlock(self, p: Process, va: int, data: bytes) -> bool:
        """mlock of what va holds (`data`). => False when the machine refused it with
        EAGAIN (its wiredmax reached: under 1999 loans wire their pages too); then
        nothing is locked (munlock answers ENOMEM) and the bytes are the same."""
        try:
            await p.mlock(va, len(data))
            return True
        except RequestError as e:
            if e.errno != Errno.EAGAIN:
                raise
        try:
            await p.munlock(va, len(data))
        except OutOfMemory:
            await self.sees(p, va, data, "its bytes after a refused mlock")
            return False
        raise WorkloadError(f"process {p.asid}: a refused mlock (EAGAIN) left {va:#x} locked")

    async def vm_op(self, p: Process, s: Socket, op: Op, tag: int) -> None:
        a = op.args
        if op.kind == "trunc":
            await self.trunc(p, s, a, tag)
        elif op.kind == "inherit":
            await self.inherit(p, s, a, tag)
        elif op.kind == "advise":
            await self.advise(p, s, a, tag)
        else:
            await self.lockall(a, tag)

    # -- trunc ------------------------------------------------------------------------

    async def trunc(self, p: Process, s: Socket, a: dict[str, Any], tag: int) -> None:
        pages, cut = int(a["pages"]), int(a["cut"])
        n = pages * PAGE_SIZE
        private = a.get("view") == "private"
        cow = int(a.get("cow", 0)) if private else 0
        f = await self.new_file(n)
        try:
            vs = await p.mmap(n, "rw", file=f, shared=True)
            data = fill(tag, n)
            await p.store(vs, data)
            vp, mine = 0, fill(tag + _OTHER, n)
            if private:
                vp = await p.mmap(n, "rw", file=f, shared=False)
                for pg in range(pages):
                    if cow >> pg & 1:
                        await p.store(vp + pg * PAGE_SIZE, _page(mine, pg))
            if a.get("loan"):
                self.expect(tag, await p.send(s, vs, n), data)
            await f.ftruncate(cut)
            end = -(-cut // PAGE_SIZE)  # the pages that still hold some of the file
            now = data[:cut] + bytes(end * PAGE_SIZE - cut)
            await self.sees(p, vs, now, f"its file truncated to {cut} B (zeros past the end)")
            for pg in range(end, pages):
                await self.faults(p, vs + pg * PAGE_SIZE, Sigbus, "beyond the end of its file")
            if end < pages:
                await self.faults(p, vs + end * PAGE_SIZE, Sigbus, "beyond the end", store=True)
            if private:
                await self.private_view(p, vp, pages, cow, mine, now, "after ftruncate")
            if a.get("grow"):
                if cut % PAGE_SIZE:  # a store past the end inside the last page is no fault,
                    junk = b"\xdd" * (len(now) - cut)  # and the growth zeroes it
                    await p.store(vs + cut, junk)
                    await self.sees(p, vs + cut, junk, "its store past the end of its file")
                await f.ftruncate(n)
                grown = now + bytes(n - len(now))
                await self.sees(p, vs, grown, "its file grown back (zeros past the old end)")
                if private:
                    await self.private_view(p, vp, pages, cow, mine, grown, "after the growth")
        finally:
            await _quietly_close(f)

    async def private_view(
        self, p: Process, vp: int, pages: int, cow: int, mine: bytes, file: bytes, when: str
    ) -> None:
        """The private view: its copies (cow) keep their bytes, its other pages read the
        file (`file`, its pages that exist) or raise Sigbus beyond its end."""
        for pg in range(pages):
            va = vp + pg * PAGE_SIZE
            if cow >> pg & 1:
                await self.sees(p, va, _page(mine, pg), f"its private copy of page {pg} {when}")
            elif pg * PAGE_SIZE < len(file):
                await self.sees(p, va, _page(file, pg), f"the file through its private view {when}")
            else:
                await self.faults(p, va, Sigbus, f"its private view beyond the end {when}")

    # -- inherit ----------------------------------------------------------------------

    async def inherit(self, p: Process, s: Socket, a: dict[str, Any], tag: int) -> None:
        n, how = int(a["pages"]) * PAGE_SIZE, str(a["inherit"])
        va = await self.buffer(p, n, str(a.get("buf", "anon")))
        data = fill(tag, n)
        await p.store(va, data)
        await p.minherit(va, n, INHERIT[how])
        if a.get("send"):
            self.expect(tag, await p.send(s, va, n), data)
        c = await p.fork()
        try:
            if how == "none":
                await self.faults(c, va, Segv, "minherit NONE: nothing there")
                await self.faults(c, va, Segv, "minherit NONE: nothing there", store=True)
                await self.sees(p, va, data, "its bytes after a fork that left them out")
                return
            first = bytes(n) if how == "zero" else data
            await self.sees(c, va, first, f"what minherit {how.upper()} gave it at fork")
            kid = fill(tag + _OTHER, n)
            await c.store(va, kid)
            await self.sees(c, va, kid, "its own stores after fork")
            if how != "share":
                await self.sees(p, va, data, f"its bytes after its child's stores ({how})")
                return
            await self.sees(p, va, kid, "its child's stores (minherit SHARE)")
            again = fill(tag + _AGAIN, n)
            await p.store(va, again)
            await self.sees(c, va, again, "its parent's stores (minherit SHARE)")
        finally:
            await _quietly_exit(c)

    # -- advise -----------------------------------------------------------------------

    async def advise(self, p: Process, s: Socket, a: dict[str, Any], tag: int) -> None:
        pages, buf, advice = int(a["pages"]), str(a.get("buf", "anon")), str(a["advice"])
        n = pages * PAGE_SIZE
        va = await self.buffer(p, n, buf)
        data = fill(tag, n)
        await p.store(va, data)
        if a.get("send"):
            self.expect(tag, await p.send(s, va, n), data)
        c = await p.fork() if a.get("fork") else None
        try:
            await p.madvise(va, n, ADVICE[advice])
            got = await p.load(va, n)
            for pg in range(pages):
                was, now = _page(data, pg), _page(got, pg)
                may_free = advice == "free" and buf != "shared" and c is None
                if now != was and not (may_free and now == bytes(PAGE_SIZE)):
                    what = "zeros or its bytes" if may_free else "its bytes"
                    raise WorkloadError(
                        f"process {p.asid} reads page {pg} after madvise {advice.upper()}"
                        f" ({buf}{', a child holds it' if c else ''}): neither {what}"
                    )
            if c is not None:
                await self.sees(c, va, data, f"its copy after its parent's madvise {advice}")
            vec = await p.mincore(va, n)
            if len(vec) != pages or set(vec) - {0, 1}:
                raise WorkloadError(f"mincore of {pages} pages gave {vec!r}")
            again = fill(tag + _AGAIN, n)
            await p.store(va, again)
            await self.sees(p, va, again, f"its stores after madvise {advice.upper()}")
        finally:
            if c is not None:
                await _quietly_exit(c)

    # -- lockall ----------------------------------------------------------------------

    async def lockall(self, a: dict[str, Any], tag: int) -> None:
        n1, n2 = int(a["pages"]) * PAGE_SIZE, int(a["more"]) * PAGE_SIZE
        flags = MCL[str(a["flags"])]
        q = await self.m.spawn()
        try:
            va1 = await q.mmap(n1, "rw")
            d1 = fill(tag, n1)
            await q.store(va1, d1)
            await q.mlockall(flags)
            if flags & MCL_CURRENT:
                await self.resident(q, va1, n1, 1, "mlockall(MCL_CURRENT)")
            va2 = await q.mmap(n2, "rw")
            await self.resident(q, va2, n2, 1 if flags & MCL_FUTURE else 0, "a later mapping")
            d2 = fill(tag + _OTHER, n2)
            await q.store(va2, d2)
            await self.sees(q, va1, d1, "its bytes after mlockall")
            await self.sees(q, va2, d2, "its later mapping's bytes")
            if a.get("send"):
                sock = await q.socket()
                self.expect(tag, await q.send(sock, va2, n2), d2)
            if a.get("end") == "munlockall":
                await q.munlockall()
                va3 = await q.mmap(PAGE_SIZE, "rw")
                await self.resident(q, va3, PAGE_SIZE, 0, "a mapping after munlockall")
                await self.sees(q, va1, d1, "its bytes after munlockall")
                await self.sees(q, va2, d2, "its later mapping's bytes after munlockall")
        except OutOfMemory:
            pass  # killed under pressure, or refused: it exits now (as a hog)
        finally:
            await _quietly_exit(q)

    async def resident(self, q: Process, va: int, n: int, want: int, what: str) -> None:
        vec = await q.mincore(va, n)
        if vec != bytes([want]) * (n // PAGE_SIZE):
            raise WorkloadError(f"mincore of {what} in process {q.asid}: {vec!r}, want all {want}")
