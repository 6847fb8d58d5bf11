"""The net core's kernel calls: what it asks of uvm and the mmu, and the bus adapter.

`KernelOps` is the whole of what the net core (sosend, the driver, the socket checks)
needs from the rest of the kernel, as awaitable operations; the core never builds a
message nor names a peer. `BusKernel` implements it over the kernel bus: every message
net sends to another role is built here and nowhere else, to the peers it holds as
typed attributes (`uvm`, `mmu`). Unit tests hand the core a fake KernelOps instead.

Every operation is one message. The batched ones (uvm.loan_chunks, which also has uvm
enter the loaned chunks at their kernel VA: a whole-send loan; pmap.kextract_ranges,
pmap.kremove_ranges, uvm.unloan_chunks) take at most MAX_CHUNKS chunks or ranges (the
caller cuts longer lists) and keep each chunk's semantics: a loan is answered per
chunk, a translation per range.

Errors, the same for every implementation:
  * a missing translation (pmap.uhold, a range of pmap.kextract_ranges: EFAULT with the
    faulting VA) is a PageFault(va, detail), which the caller resolves through kfault;
  * an error reply raises RemoteError with its errno (a refused loan chunk is answered
    as a RemoteError in its place: EBUSY, EFAULT, ENOMEM), a panicked peer PeerPanic
    (EPANIC), no reply CallTimeout;
  * an answer of the wrong type is RemoteError(EBADMSG).
"""

from __future__ import annotations

from typing import Protocol

from machine.ipc.peer import Peer, RemoteError, raise_for
from machine.proto import (
    NO_HEADER,
    CtlAck,
    Errno,
    PmapCountReply,
    PmapKextractRanges,
    PmapKextractRangesReply,
    PmapKremoveRanges,
    PmapUhold,
    PmapUholdReply,
    PmapUrelease,
    Status,
    UvmKfault,
    UvmLoanChunks,
    UvmLoanChunksReply,
    UvmOwners,
    UvmOwnersReply,
    UvmSessionsSeen,
    UvmSessionsSeenReply,
    UvmUnloanChunks,
)
from machine.proto.types import Prot


class PageFault(Exception):
    """No translation at `va` (the mmu's EFAULT); `detail` names who revoked it, if known."""

    def __init__(self, va: int, detail: str) -> None:
        super().__init__(f"page fault at {va:#x}: {detail}")
        self.va = va
        self.detail = detail


class KernelOps(Protocol):
    """What the net core asks of uvm and the mmu."""

    async def owners(self, asids: list[int], sessions: list[int]) -> tuple[list[int], list[bool]]:
        """uvm.owners: the session owning each asid (0: no live process), and whether
        each session is attached."""
        ...

    async def loan(
        self, asid: int, owner: int, chunks: list[tuple[int, int]], kvas: list[int]
    ) -> list[list[int] | RemoteError]:
        """uvm.loan_chunks: loan each chunk (page-aligned va, npages), in order, and enter
        each loaned one read-only at its kernel VA (kvas, one per chunk) before the answer.
        => per chunk one pfn per page, or the RemoteError of its refusal (all or nothing
        per chunk; a refused chunk is entered nowhere)."""
        ...

    async def uhold(self, asid: int, owner: int, va: int, npages: int) -> tuple[int, list[int]]:
        """pmap.uhold: hold the frames of npages from page-aligned va in asid. => (the
        hold, one pfn per page); PageFault at the first page unmapped (nothing held)."""
        ...

    async def urelease(self, holds: list[int]) -> None:
        """pmap.urelease: the copies from those holds are done."""
        ...

    async def kfault(
        self, va: int, *, asid: int = 0, owner: int = 0, evidence: str = "", pfn: int = -1
    ) -> None:
        """uvm.kfault, READ access: a copyin fault of process asid (asid > 0), or a kernel
        page fault at loan KVA (asid 0, with the mmu's evidence and the pfn loaned
        there). => resolved; RemoteError when it cannot be (uvm may panic instead)."""
        ...

    async def kextract(self, ranges: list[tuple[int, int]]) -> list[list[int] | PageFault]:
        """pmap.kextract_ranges: per range (va, npages) its pfns, or the PageFault at its first
        page without a translation."""
        ...

    async def kremove(self, ranges: list[tuple[int, int]]) -> int:
        """pmap.kremove_ranges: pmap_kremove of each range (va, npages), in order.
        => mappings removed."""
        ...

    async def unloan(self, chunks: list[tuple[list[int], int, int]]) -> None:
        """uvm.unloan_chunks: per chunk (pfns, kva, npages), in order, the loans of pfns end;
        the kernel removed their mappings at kva."""
        ...


class BusKernel:
    """KernelOps over the kernel bus, to uvm and the mmu (opened by NetService.connect
    before the role serves)."""

    def __init__(self, uvm: Peer, mmu: Peer) -> None:
        self.uvm = uvm
        self.mmu = mmu

    async def owners(self, asids: list[int], sessions: list[int]) -> tuple[list[int], list[bool]]:
        rep = await self.uvm.call_ok(
            UvmOwners(h=NO_HEADER, asids=asids, sessions=sessions), UvmOwnersReply
        )
        return list(rep.owners), list(rep.live)

    async def sessions_seen(self, sessions: list[int]) -> list[int]:
        """uvm.sessions_seen: renew the leases of sessions served here. => those ended."""
        rep = await self.uvm.call_ok(
            UvmSessionsSeen(h=NO_HEADER, sessions=sessions), UvmSessionsSeenReply
        )
        return list(rep.ended)

    async def loan(
        self, asid: int, owner: int, chunks: list[tuple[int, int]], kvas: list[int]
    ) -> list[list[int] | RemoteError]:
        req = UvmLoanChunks(h=NO_HEADER, asid=asid, owner=owner, chunks=chunks, kvas=kvas)
        rep = await self.uvm.call_ok(req, UvmLoanChunksReply)
        if not len(rep.pfns) == len(rep.errnos) == len(rep.details) == len(chunks):
            raise RemoteError(Errno.EBADMSG, f"uvm.loan_chunks answered {len(rep.pfns)} chunks")
        return [
            pfns if e is None else RemoteError(e, why)
            for pfns, e, why in zip(rep.pfns, rep.errnos, rep.details, strict=True)
        ]

    async def uhold(self, asid: int, owner: int, va: int, npages: int) -> tuple[int, list[int]]:
        rep = await self.mmu.call(
            PmapUhold(h=NO_HEADER, asid=asid, owner=owner, va=va, npages=npages)
        )
        if isinstance(rep, PmapUholdReply):
            if rep.status == Status.OK:
                return rep.hold, rep.pfns
            if rep.errno == Errno.EFAULT:
                raise PageFault(rep.fault_va, rep.detail)
        raise_for(rep)  # EPANIC -> PeerPanic; other errnos -> RemoteError
        raise RemoteError(Errno.EBADMSG, f"pmap.uhold answered {rep!r}")

    async def urelease(self, holds: list[int]) -> None:
        await self.mmu.call_ok(PmapUrelease(h=NO_HEADER, holds=holds), CtlAck)

    async def kfault(
        self, va: int, *, asid: int = 0, owner: int = 0, evidence: str = "", pfn: int = -1
    ) -> None:
        req = UvmKfault(
            h=NO_HEADER,
            va=va,
            access=int(Prot.READ),
            asid=asid,
            owner=owner,
            evidence=evidence[:4096],
            pfn=pfn,
        )
        await self.uvm.call_ok(req, CtlAck)

    async def kextract(self, ranges: list[tuple[int, int]]) -> list[list[int] | PageFault]:
        req = PmapKextractRanges(h=NO_HEADER, ranges=ranges)
        rep = await self.mmu.call_ok(req, PmapKextractRangesReply)
        if not len(rep.pfns) == len(rep.fault_vas) == len(rep.details) == len(ranges):
            raise RemoteError(Errno.EBADMSG, f"pmap.kextract_ranges: {len(rep.pfns)} answers")
        return [
            PageFault(fva, why) if fva else pfns
            for pfns, fva, why in zip(rep.pfns, rep.fault_vas, rep.details, strict=True)
        ]

    async def kremove(self, ranges: list[tuple[int, int]]) -> int:
        rep = await self.mmu.call_ok(PmapKremoveRanges(h=NO_HEADER, ranges=ranges), PmapCountReply)
        return rep.count

    async def unloan(self, chunks: list[tuple[list[int], int, int]]) -> None:
        await self.uvm.call_ok(UvmUnloanChunks(h=NO_HEADER, chunks=chunks), CtlAck)
