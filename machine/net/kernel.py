"""The net core's kernel calls: what it asks of uvm and the mmu, and the bus adapter.

`KernelOps` is the whole of what the net core (sosend, the driver, the socket checks)
needs from the rest of the kernel, as awaitable operations; the core never builds a
message nor names a peer. `BusKernel` implements it over the kernel bus: every message
net sends to another role is built here and nowhere else, to the peers it holds as
typed attributes (`uvm`, `mmu`). Unit tests hand the core a fake KernelOps instead.

Errors, the same for every implementation:
  * a missing translation (mmu.copyin, pmap.kextract: EFAULT with the faulting VA)
    raises PageFault(va, detail), which the caller resolves through kfault;
  * an error reply raises RemoteError with its errno (a refused loan: EBUSY, EFAULT,
    ENOMEM), a panicked peer PeerPanic (EPANIC), no reply CallTimeout;
  * an answer of the wrong type is RemoteError(EBADMSG).
"""

from __future__ import annotations

from typing import Protocol

from machine.ipc.peer import Peer, RemoteError, raise_for
from machine.proto import (
    NO_HEADER,
    CtlAck,
    Errno,
    MmuAccessReply,
    MmuCopyin,
    PmapCountReply,
    PmapKenter,
    PmapKextract,
    PmapKextractReply,
    PmapKremove,
    Status,
    UvmKfault,
    UvmLoan,
    UvmLoanReply,
    UvmOwners,
    UvmOwnersReply,
    UvmUnloan,
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

    async def loan(self, asid: int, owner: int, va: int, npages: int) -> list[int]:
        """uvm.loan: loan npages from page-aligned va. => one pfn per page (all or
        nothing; a refusal raises RemoteError)."""
        ...

    async def kenter(self, va: int, pfns: list[int]) -> None:
        """pmap.kenter: enter pfns read-only at kernel va, one page each."""
        ...

    async def copyin(self, asid: int, owner: int, va: int, n: int) -> bytes:
        """mmu.copyin: n bytes from va in asid. => them; PageFault where unmapped."""
        ...

    async def kfault(
        self, va: int, *, asid: int = 0, owner: int = 0, evidence: str = "", pfn: int = -1
    ) -> None:
        """uvm.kfault, READ access: a copyin fault of process asid (asid > 0), or a kernel
        page fault at loan KVA (asid 0, with the mmu's evidence and the pfn loaned
        there). => resolved; RemoteError when it cannot be (uvm may panic instead)."""
        ...

    async def kextract(self, va: int, npages: int) -> list[int]:
        """pmap.kextract: the pfns at [va, va + npages pages). => PageFault at the first
        page without a translation."""
        ...

    async def kremove(self, va: int, npages: int) -> int:
        """pmap.kremove of [va, va + npages pages). => mappings removed."""
        ...

    async def unloan(self, pfns: list[int], kva: int, npages: int) -> None:
        """uvm.unloan: the loans of pfns end; the kernel removed their mappings at kva."""
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

    async def loan(self, asid: int, owner: int, va: int, npages: int) -> list[int]:
        rep = await self.uvm.call_ok(
            UvmLoan(h=NO_HEADER, asid=asid, owner=owner, va=va, npages=npages), UvmLoanReply
        )
        return rep.pfns

    async def kenter(self, va: int, pfns: list[int]) -> None:
        await self.mmu.call_ok(
            PmapKenter(h=NO_HEADER, va=va, pfns=pfns, prot=int(Prot.READ)), CtlAck
        )

    async def copyin(self, asid: int, owner: int, va: int, n: int) -> bytes:
        rep = await self.mmu.call(MmuCopyin(h=NO_HEADER, asid=asid, owner=owner, va=va, n=n))
        if isinstance(rep, MmuAccessReply):
            if rep.status == Status.OK:
                return rep.data
            if rep.errno == Errno.EFAULT:
                raise PageFault(rep.fault_va, rep.detail)
        raise_for(rep)  # EPANIC -> PeerPanic; other errnos -> RemoteError
        raise RemoteError(Errno.EBADMSG, f"mmu.copyin answered {rep!r}")

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

    async def kextract(self, va: int, npages: int) -> list[int]:
        rep = await self.mmu.call(PmapKextract(h=NO_HEADER, va=va, npages=npages))
        if isinstance(rep, PmapKextractReply):
            if rep.status == Status.OK:
                return rep.pfns
            if rep.errno == Errno.EFAULT:
                raise PageFault(rep.fault_va, rep.detail)
        raise_for(rep)
        raise RemoteError(Errno.EBADMSG, f"pmap.kextract answered {rep!r}")

    async def kremove(self, va: int, npages: int) -> int:
        rep = await self.mmu.call_ok(PmapKremove(h=NO_HEADER, va=va, npages=npages), PmapCountReply)
        return rep.count

    async def unloan(self, pfns: list[int], kva: int, npages: int) -> None:
        await self.uvm.call_ok(UvmUnloan(h=NO_HEADER, pfns=pfns, kva=kva, npages=npages), CtlAck)
