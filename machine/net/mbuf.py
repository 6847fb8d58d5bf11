"""mbufs and the pool their copied data comes from (NetBSD's nmbclusters).

An mbuf holds one chunk of one send: either its bytes (the copy path, `data`) or
external storage at loan KVA (the loan path: `kva` + `pgoff`, over the loaned pages
`pfns`). The pool bounds the bytes of copied data net holds over every session by
`limits.mbufs`; loaned data is bounded by loan KVA instead (machine.net.kva).

Invariants:
  * an mbuf is loaned iff it has pfns; a loaned mbuf's bytes are
    [kva + pgoff, kva + pgoff + length), within its pfns' pages;
  * 0 <= mbuf_bytes <= limit, except one chunk let into an empty pool
    (m_get with M_WAIT: a copy larger than the pool still goes, alone);
  * mbuf_bytes is the sum of the copied mbufs held: 0 when none is queued;
    per session, share.held is the sum of its sockets' copied mbufs.
Fair shares (machine.share, n = the sessions net has seen and not forgotten + 1):
a copy that would take a session past its share of `limits.mbufs`, beyond what
the other sessions could still claim, waits (m_get M_WAIT, counted in
`mbufwaits`) until storage is freed, while the other
sessions' copies are served; it is never refused (a send's copy path has no
errno for it). The one-chunk exception above still holds for an empty pool.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from machine.net.knobs import new_stats
from machine.net.socket import Socket
from machine.net.synch import WaitChannel
from machine.share import FairShare


@dataclass(eq=False)
class Mbuf:
    sock: Socket
    seq: int
    off: int  # offset of this mbuf's bytes in its send
    total: int  # bytes of the whole send
    length: int
    data: bytes = b""  # copy path: the bytes themselves
    kva: int = 0  # loan path: external storage at kva + pgoff
    pgoff: int = 0
    pfns: list[int] = field(default_factory=list)

    @property
    def loaned(self) -> bool:
        return bool(self.pfns)

    @property
    def npages(self) -> int:
        """Pages of loan KVA the mbuf's storage spans (0 for a copied one)."""
        return len(self.pfns)


class MbufPool:
    """Storage for copied data: at most `limit` bytes over every session, each session's
    share of them fair (machine.share: `share.held` per session, `share.total` ==
    mbuf_bytes)."""

    def __init__(
        self,
        chan: WaitChannel,
        limit: int,
        stats: dict[str, int] | None = None,
        live: Collection[int] = (),
    ):
        self.chan = chan  # woken on every free
        self.limit = limit
        self.stats = stats if stats is not None else new_stats()  # counts mbufwaits
        self.share = FairShare("mbufs", limit, live, "bytes of mbuf storage")

    @property
    def mbuf_bytes(self) -> int:
        return self.share.total

    def _room(self, session: int, n: int) -> bool:
        return self.share.total == 0 or self.share.grants(session, n)

    async def mclget(self, n: int, session: int = 0) -> None:
        """Take n bytes of storage for session, waiting while the pool cannot hold them
        or they would pass the session's fair share (machine.share): a greedy session's
        copy waits while the others' go ahead."""
        if not self._room(session, n):
            self.stats["mbufwaits"] += 1
        await self.chan.sleep_until(lambda: self._room(session, n))
        self.share.take(session, n)

    def mclfree(self, n: int, session: int = 0) -> None:
        """Give back n bytes of session's storage; wakes every sleeper."""
        self.share.give(session, n)
        self.chan.wakeup()
