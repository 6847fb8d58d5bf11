"""Frame holds: copyin(9) without bytes in messages, safe against revocation.

A kernel copyin on another CPU: net asks the mmu to translate a user range
(pmap.uhold), the mmu holds the frames and answers their pfns, net copies the
bytes straight from the shared RAM into its mbuf storage, then releases the
hold (pmap.urelease). A hold is what a TLB shootdown waiting for the other CPU
is on a real machine: while a frame is held, a pmap operation that removes a
mapping of it (page_protect NONE, remove, protect NONE, destroy, an enter
replacing it) is applied at once (the mapping is gone for every later access
and translation) but its *reply* is deferred until no hold on the frame is
left. uvm awaits those replies before it frees or reuses a page, so a held
frame cannot be reused while net copies from it.

    holds = Holds()                                      # mmu.holds
    hold, pfns = uhold(mmu, asid, owner, va, npages)   # machine.mmu.copyin; or a Fault
    ...                                                  # read RAM at pfns
    holds.release([hold])                                # deferred replies go out

The pmap reports every removed mapping to `removed(pfn)`; the service takes
the frames hit by one operation (`take_hits`) right after applying it, and
waits (`wait_released`) before replying.

Invariants:
  H1  count[pfn] == the number of live holds that name pfn (a frame named twice
      by one hold counts twice); a frame with count 0 is not in `count`;
  H2  a waiter waits only for frames that were held when its operation ran, and
      is woken as soon as none of them is held any more (never before);
  H3  a hold is released at most once: an unknown hold is refused (EINVAL) and
      a release naming one releases nothing;
  H4  holds are bounded (MAX_HOLDS; EAGAIN beyond): net releases each right after
      its copy, waiting for nothing else (a hold waiting on uvm could deadlock
      with a deferred reply uvm waits for).
A hold is no reference: the frame's mappings may go meanwhile (only their
replies wait), and a dead holder (net) is a machine panic, as any dead role.
"""

from __future__ import annotations

import asyncio
import collections

from machine.proto import Errno, UserError

MAX_HOLDS = 4096  # live holds at once (H4)


class Holds:
    """The frames held by kernel copies, and the replies waiting for them."""

    def __init__(self) -> None:
        self.count: collections.Counter[int] = collections.Counter()  # pfn -> holds (H1)
        self.holds: dict[int, list[int]] = {}  # hold id -> its pfns
        self._next = 1
        self._hits: set[int] = set()
        self._waiters: list[tuple[set[int], asyncio.Future[None]]] = []
        self.taken = 0  # holds taken (counters)
        self.deferred = 0  # replies deferred by a hold (counters)

    def hold(self, pfns: list[int]) -> int:
        """Hold the frames. => the hold's id (EAGAIN past MAX_HOLDS)."""
        if len(self.holds) >= MAX_HOLDS:
            raise UserError(Errno.EAGAIN, f"{MAX_HOLDS} frame holds already live")
        hid = self._next
        self._next += 1
        self.holds[hid] = pfns
        self.count.update(pfns)
        self.taken += 1
        return hid

    def release(self, hids: list[int]) -> None:
        """Release holds (all or none: EINVAL for an unknown or repeated one); wake the
        waiters none of whose frames is held any more."""
        if len(set(hids)) != len(hids) or any(h not in self.holds for h in hids):
            raise UserError(Errno.EINVAL, f"pmap.urelease: no such holds in {hids[:8]}")
        for hid in hids:
            pfns = self.holds.pop(hid)
            self.count.subtract(pfns)
            for pfn in pfns:
                if self.count[pfn] <= 0:
                    del self.count[pfn]
        if self._waiters:
            still = []
            for frames, fut in self._waiters:
                if any(p in self.count for p in frames):
                    still.append((frames, fut))
                elif not fut.done():
                    fut.set_result(None)
            self._waiters = still

    def removed(self, pfn: int) -> None:
        """The pmap removed a mapping of pfn (called for every removed mapping)."""
        if pfn in self.count:
            self._hits.add(pfn)

    def take_hits(self) -> set[int]:
        """The held frames whose mappings the operation just applied removed (reset)."""
        hits, self._hits = self._hits, set()
        return hits

    async def wait_released(self, frames: set[int]) -> None:
        """Wait until none of frames is held (the deferred reply's wait)."""
        frames = {p for p in frames if p in self.count}
        if not frames:
            return
        self.deferred += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((frames, fut))
        await fut

    def check(self) -> list[str]:
        """H1, as problems found (empty when consistent)."""
        want: collections.Counter[int] = collections.Counter()
        for pfns in self.holds.values():
            want.update(pfns)
        return [] if +want == +self.count else [f"H1: holds count {dict(self.count)}"]
