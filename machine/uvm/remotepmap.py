"""RemotePmap: the uvm core's pmap operations (PmapOps) over the kernel bus to the mmu.

One pmap.* request per call; `page_protect` is cut into batches of PFN_BATCH frames
(the request's bound). Errors come back as RemoteError / PeerPanic from
Peer.call_ok: the uvm service turns them into its replies.
"""

from __future__ import annotations

from machine.ipc.peer import Peer
from machine.proto import (
    NO_HEADER,
    CtlAck,
    PmapAttrs,
    PmapAttrsReply,
    PmapCheck,
    PmapCheckReply,
    PmapCountReply,
    PmapCreate,
    PmapDestroy,
    PmapEnter,
    PmapKenter,
    PmapKenterChunks,
    PmapKremoveRanges,
    PmapMappings,
    PmapMappingsReply,
    PmapPageProtect,
    PmapProtect,
    PmapRemove,
    PmapUnwire,
)
from machine.proto.pageinfo import PFN_BATCH, pack_attrs

#: Placeholder header; Peer.call stamps the real one.
_H = NO_HEADER


class RemotePmap:
    """PmapOps over the kernel bus: one pmap.* request per call."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def create(self, asid: int, owner: int) -> None:
        await self.peer.call_ok(PmapCreate(h=_H, asid=asid, owner=owner), CtlAck)

    async def destroy(self, asid: int) -> int:
        return (await self.peer.call_ok(PmapDestroy(h=_H, asid=asid), PmapCountReply)).count

    async def enter(self, asid: int, va: int, pfn: int, prot: int, flags: int) -> None:
        await self.peer.call_ok(
            PmapEnter(h=_H, asid=asid, va=va, pfn=pfn, prot=prot, flags=flags), CtlAck
        )

    async def remove(self, asid: int, sva: int, eva: int) -> int:
        rep = await self.peer.call_ok(PmapRemove(h=_H, asid=asid, sva=sva, eva=eva), PmapCountReply)
        return rep.count

    async def protect(self, asid: int, sva: int, eva: int, prot: int) -> int:
        rep = await self.peer.call_ok(
            PmapProtect(h=_H, asid=asid, sva=sva, eva=eva, prot=prot), PmapCountReply
        )
        return rep.count

    async def page_protect(self, pfns: list[int], prot: int, why: str = "") -> int:
        n = 0
        for i in range(0, len(pfns), PFN_BATCH):
            rep = await self.peer.call_ok(
                PmapPageProtect(h=_H, pfns=pfns[i : i + PFN_BATCH], prot=prot, why=why[:4096]),
                PmapCountReply,
            )
            n += rep.count
        return n

    async def kenter(self, va: int, pfns: list[int], prot: int) -> None:
        await self.peer.call_ok(PmapKenter(h=_H, va=va, pfns=pfns, prot=prot), CtlAck)

    async def kenter_chunks(self, chunks: list[tuple[int, list[int]]], prot: int) -> None:
        await self.peer.call_ok(PmapKenterChunks(h=_H, chunks=chunks, prot=prot), CtlAck)

    async def kremove_ranges(self, ranges: list[tuple[int, int]]) -> int:
        rep = await self.peer.call_ok(PmapKremoveRanges(h=_H, ranges=ranges), PmapCountReply)
        return rep.count

    async def unwire(self, asid: int, sva: int, eva: int) -> int:
        rep = await self.peer.call_ok(PmapUnwire(h=_H, asid=asid, sva=sva, eva=eva), PmapCountReply)
        return rep.count

    async def attrs(self, pfns: list[int], clear_ref: bool, clear_mod: bool) -> list[int]:
        rep = await self.peer.call_ok(
            PmapAttrs(h=_H, pfns=pfns, clear_reference=clear_ref, clear_modify=clear_mod),
            PmapAttrsReply,
        )
        return pack_attrs(rep.referenced, rep.modified)

    async def check(self) -> list[str]:
        return (await self.peer.call_ok(PmapCheck(h=_H), PmapCheckReply)).problems

    async def mappings(self, asid: int) -> list[tuple[int, int, int, bool]]:
        rep = await self.peer.call_ok(PmapMappings(h=_H, asid=asid), PmapMappingsReply)
        return [tuple(m) for m in rep.mappings]  # type: ignore[misc]
