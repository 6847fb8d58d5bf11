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
  * mbuf_bytes is the sum of the copied mbufs held: 0 when none is queued.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from machine.net.knobs import new_stats
from machine.net.socket import Socket
from machine.net.synch import WaitChannel


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
    """Storage for copied data: at most `limit` bytes over every session."""

    def __init__(self, chan: WaitChannel, limit: int, stats: dict[str, int] | None = None):
        self.chan = chan  # woken on every free
        self.limit = limit
        self.stats = stats if stats is not None else new_stats()  # counts mbufwaits
        self.mbuf_bytes = 0

    def _room(self, n: int) -> bool:
        return self.mbuf_bytes == 0 or self.mbuf_bytes + n <= self.limit

    async def mclget(self, n: int) -> None:
        """Take n bytes of storage, waiting while the pool cannot hold them."""
        if self.mbuf_bytes + n > self.limit:
            self.stats["mbufwaits"] += 1
        await self.chan.sleep_until(lambda: self._room(n))
        self.mbuf_bytes += n

    def mclfree(self, n: int) -> None:
        """Give back n bytes of storage; wakes every sleeper."""
        self.mbuf_bytes -= n
        self.chan.wakeup()
