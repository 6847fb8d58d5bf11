"""copyin(9) for net: a user range read straight from RAM through frame holds.

No byte of the copy travels in a message. For each piece of the range (at most
MAX_UHOLD_PAGES pages), net asks the mmu to translate it and hold its frames
(pmap.uhold), reads the bytes from the shared RAM, and releases the hold
(pmap.urelease) at once. While the frames are held, uvm cannot reuse them: the
mmu defers the reply of any pmap operation that removes a mapping of a held frame
until the release (machine.mmu.hold), as a TLB shootdown waits for the other CPU.

A page without a translation is a copyin fault: it is resolved through uvm.kfault
on the process's behalf (as the process's own READ fault) and the piece is asked
for again. A fault uvm cannot resolve ends the copy at the faulting VA: the bytes
before it are still copied (the caller keeps the chunks wholly before it).

Invariants:
  * a hold is released right after its bytes are read, whatever happens, and its
    release waits for nothing else (a hold kept while net waits on uvm could
    deadlock with a reply the mmu defers for it); the caller may leave the release's
    answer for later (`releases`), so the next hold need not wait for it;
  * the pieces returned, joined, are exactly [va, va + their length) of the
    process's memory as its pages held them while held (no view of RAM outlives its
    hold); they are every piece of `cuts` unless an error is returned.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from machine.ipc import eager
from machine.ipc.peer import PeerPanic, RemoteError
from machine.net.kernel import KernelOps, PageFault
from machine.params import PAGE_SHIFT, PAGE_SIZE, round_page, trunc_page
from machine.proto import Errno, UserError
from machine.proto.pmap import MAX_UHOLD_PAGES


class PhysMem(Protocol):
    """The machine's RAM, as net reads it (machine.ram.Ram)."""

    view: memoryview


async def copyin(
    ops: KernelOps,
    ram: PhysMem,
    asid: int,
    owner: int,
    va: int,
    n: int,
    releases: list[Awaitable[None]] | None = None,
    cuts: list[int] | None = None,
) -> tuple[list[bytes], UserError | None, int]:
    """Copy [va, va + n) of process asid (owned by session owner), cut in pieces of the
    lengths `cuts` (consecutive, summing to n; default one piece). => (every piece,
    None, kernel messages used), or (the pieces wholly before the fault, EFAULT,
    messages) when a fault cannot be resolved. PeerPanic and other errors of the mmu
    are raised. Each piece is one copy from RAM (b"".join of the page slices).
    => releases: each pmap.urelease is sent at once but its answer not awaited here:
       what awaits it goes in the list, for the caller to await before it answers."""
    bounds = iter(cuts if cuts is not None else [n])
    cut_end = va + next(bounds)
    pieces: list[bytes] = []
    cur: list[bytes | memoryview] = []  # the piece being copied
    msgs = 0
    err: UserError | None = None
    pos, end = va, va + n
    view = ram.view
    while pos < end:
        page = trunc_page(pos)
        npages = min((round_page(end) - page) >> PAGE_SHIFT, MAX_UHOLD_PAGES)
        msgs += 1
        try:
            hold, pfns = await ops.uhold(asid, owner, page, npages)
        except PageFault as f:
            fva = max(f.va, pos)
            msgs += 1
            try:
                await ops.kfault(fva, asid=asid, owner=owner)
            except PeerPanic:
                raise
            except RemoteError as e:
                err = UserError(Errno.EFAULT, f"send buffer: {e.detail}")
                end = fva  # copy what comes before the fault, then stop
            continue
        try:
            stop = min(end, page + (npages << PAGE_SHIFT))
            for i, pfn in enumerate(pfns):
                vpage = page + (i << PAGE_SHIFT)
                lo, hi = max(pos, vpage), min(stop, vpage + PAGE_SIZE)
                base = (pfn << PAGE_SHIFT) - vpage  # RAM offset of VA vpage's bytes
                while lo < hi:
                    upto = min(hi, cut_end)
                    cur.append(view[base + lo : base + upto])
                    lo = upto
                    if lo == cut_end:
                        pieces.append(b"".join(cur))
                        cur = []
                        cut_end += next(bounds, 0)
            if cur:  # a piece goes on under the next hold: its bytes leave RAM now
                cur = [b"".join(cur)]
        finally:
            msgs += 1
            if releases is None:
                await ops.urelease([hold])
            else:
                sent = eager.start(ops.urelease([hold]))  # sent: its answer comes later
                if isinstance(sent, eager.Resumed):
                    releases.append(sent)
        pos = stop
    got = sum(map(len, pieces)) + sum(map(len, cur))
    assert got == pos - va, (got, pos - va)
    return pieces, err, msgs
