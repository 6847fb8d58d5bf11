"""pmap.* (kernel) and mmu.* (user CPU accesses): messages the mmu role serves.

pmap.* is pmap(9): uvm (and later pdaemon, net) manage translations with it.
mmu.* is the CPU: a client performs loads and stores; the mmu translates
page by page, performs the access on RAM and, where a page does not
translate, has uvm resolve the trap (machine.proto.trap) and goes on.

Frames are named by number (`pfn`); page bytes travel only in mmu.load and
mmu.store, which are user accesses, never in kernel messages.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from machine.proto.base import Reply, Request, Scope
from machine.proto.types import (
    U64,
    AccessBytes,
    AccessLen,
    Asid,
    Length,
    Pfn,
    PfnList,
    ProtBits,
    ShortText,
    Va,
)


class PmapCreate(Request, frozen=True, kw_only=True, tag="pmap.create"):
    """Create the pmap of a new user address space (pmap_create).

    => sender: uvm. `owner` is the client session allowed to use mmu.* on it.
    Errnos: EINVAL if asid is 0 (the kernel pmap) or already exists.
    """

    asid: Asid
    owner: U64


class PmapDestroy(Request, frozen=True, kw_only=True, tag="pmap.destroy"):
    """Remove every mapping of an address space and forget it (pmap_destroy).

    => sender: uvm. Reply: PmapCountReply with the number of mappings removed.
    Errnos: ESRCH if no such pmap.
    """

    asid: Asid


class PmapEnter(Request, frozen=True, kw_only=True, tag="pmap.enter"):
    """Create or replace the managed mapping va -> pfn in `asid` (pmap_enter).

    => sender: uvm. va page aligned, user range; prot nonzero.
    => flags: EnterFlags bits (WIRED; CLEAN resets the frame's modified bit).
    Errnos: ESRCH (no pmap), EINVAL (range, alignment, pfn beyond RAM).
    """

    asid: Asid
    va: Va
    pfn: Pfn
    prot: ProtBits
    flags: int = 0


class PmapRemove(Request, frozen=True, kw_only=True, tag="pmap.remove"):
    """Remove the managed mappings in [sva, eva) of `asid` (pmap_remove).

    Reply: PmapCountReply. Errnos: ESRCH, EINVAL.
    """

    asid: Asid
    sva: Va
    eva: Va


class PmapProtect(Request, frozen=True, kw_only=True, tag="pmap.protect"):
    """Lower the protection of the mappings in [sva, eva) to `prot` (pmap_protect).

    => never raises protection; prot NONE removes. Reply: PmapCountReply.
    """

    asid: Asid
    sva: Va
    eva: Va
    prot: ProtBits


class PmapPageProtect(Request, frozen=True, kw_only=True, tag="pmap.page_protect"):
    """Lower every managed mapping of each frame to `prot` (pmap_page_protect).

    => prot READ write-protects (COW, loans); NONE revokes every managed
       mapping. A wired one is removed, skipped or panics, by the profile's
       PPP_WIRED. Unmanaged kenter mappings are never touched; managed ones
       (KENTER_MODE=managed) are, and the mmu records who revoked them.
    => why: what the caller is doing (deactivate, loan break, anon free), kept
       as the evidence a later kernel fault at a revoked VA reports. (1.2)
    Reply: PmapCountReply with the number of mappings changed.
    """

    pfns: PfnList
    prot: ProtBits
    why: ShortText = ""


class PmapUnwire(Request, frozen=True, kw_only=True, tag="pmap.unwire"):
    """Clear the wired attribute of the mappings in [sva, eva) (pmap_unwire).

    Reply: PmapCountReply with the number of mappings unwired.
    """

    asid: Asid
    sva: Va
    eva: Va


class PmapKenter(Request, frozen=True, kw_only=True, tag="pmap.kenter"):
    """Enter unmanaged, wired kernel mappings va + i*PAGE_SIZE -> pfns[i] (pmap_kenter_pa).

    => sender: a kernel role. va page aligned in the kernel range.
    => one message per chunk (never per page).
    """

    va: Va
    pfns: PfnList
    prot: ProtBits


class PmapKextract(Request, frozen=True, kw_only=True, tag="pmap.kextract"):
    """Translate npages of kernel VA from va (a NIC's DMA setup for one mbuf). (1.2)

    Reply: PmapKextractReply with one pfn per page; EFAULT with fault_va at the
    first page that has no translation (a kernel page fault), the detail naming
    who revoked that mapping when the mmu knows.

    Superseded by pmap.kextract_ranges (1.4): no role serves it; kept so 1.x encodings decode.
    """

    va: Va
    npages: Annotated[int, msgspec.Meta(ge=1, le=4096)]


class PmapKextractReply(Reply, frozen=True, kw_only=True, tag="pmap.kextract.reply"):
    pfns: list[int] = msgspec.field(default_factory=list)
    fault_va: int = 0


class MmuCopyin(Request, frozen=True, kw_only=True, tag="mmu.copyin"):
    """copyin(9): the kernel reads n bytes of a user's memory on the user's behalf. (1.2)

    => kernel endpoint (net's copy path); owner is the client session that
       owns asid (EPERM otherwise). Reply: MmuAccessReply, EFAULT as mmu.load.

    Superseded by pmap.uhold (1.4): no role serves it; kept so 1.x encodings decode.
    """

    asid: Asid
    owner: Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
    va: Va
    n: AccessLen


class PmapKremove(Request, frozen=True, kw_only=True, tag="pmap.kremove"):
    """Remove kernel mappings [va, va + npages*PAGE_SIZE) (pmap_kremove).

    Reply: PmapCountReply.

    Superseded by pmap.kremove_ranges (1.4): no role serves it; kept so 1.x encodings decode.
    """

    va: Va
    npages: Length


#: Ranges (loan chunks, mbufs) in one batched kernel message: a caller sends more in batches.
MAX_CHUNKS = 64
#: Sessions per pmap.sessions / uvm.sessions_seen list (the rest go in the next one). (1.7)
SESSIONS_BATCH = 4096
#: Pages of one range in a batched kernel message (a loan KVA slot's worth at most).
ChunkPages = Annotated[int, msgspec.Meta(ge=1, le=4096)]
#: (va, npages): a page-aligned range.
PageRange = tuple[Va, ChunkPages]
#: Pages one pmap.uhold may hold: a caller holds a longer range in pieces.
MAX_UHOLD_PAGES = 1024


class PmapKenterChunks(Request, frozen=True, kw_only=True, tag="pmap.kenter_chunks"):
    """pmap.kenter for several chunks at once: each (va, pfns) entered as pmap.kenter would.

    => sender: uvm (uvm.loan_chunks with kvas: the loans of one window of a send; net
       before 1.7). All or nothing: every chunk is
       checked before any is entered (EINVAL). Reply: ack.
    """

    chunks: Annotated[list[tuple[Va, PfnList]], msgspec.Meta(max_length=MAX_CHUNKS)]
    prot: ProtBits


class PmapKextractRanges(Request, frozen=True, kw_only=True, tag="pmap.kextract_ranges"):
    """Translate ranges of kernel VA (a NIC's DMA setup for the mbufs of one ring pass).

    Reply: PmapKextractRangesReply, per range: its pfns, one per page; or, for a range with a
    page without a translation (a kernel page fault), no pfns, the VA of that first
    page in fault_vas (0: none) and the detail naming who revoked it when the mmu knows.
    """

    ranges: Annotated[list[PageRange], msgspec.Meta(max_length=MAX_CHUNKS)]


class PmapKextractRangesReply(Reply, frozen=True, kw_only=True, tag="pmap.kextract_ranges.reply"):
    pfns: list[list[int]] = msgspec.field(default_factory=list)
    fault_vas: list[int] = msgspec.field(default_factory=list)
    details: list[str] = msgspec.field(default_factory=list)


class PmapSessions(Request, frozen=True, kw_only=True, tag="pmap.sessions"):
    """uvm tells the mmu which sessions ended and learns which it served. (1.7)

    => uvm sends one every lease_s / 4 (its lease reaper) and one as a session ends,
       before its processes exit. The mmu answers the requests of every session in
       `ended` ESESSION from then on.
    Reply: PmapSessionsReply; `seen`: sessions whose user requests the mmu served
    since its last such reply (at most SESSIONS_BATCH; the rest in the next one):
    uvm renews their leases.
    """

    ended: Annotated[list[int], msgspec.Meta(max_length=SESSIONS_BATCH)] = msgspec.field(
        default_factory=list
    )


class PmapSessionsReply(Reply, frozen=True, kw_only=True, tag="pmap.sessions.reply"):
    seen: Annotated[list[int], msgspec.Meta(max_length=SESSIONS_BATCH)] = msgspec.field(
        default_factory=list
    )


class PmapUhold(Request, frozen=True, kw_only=True, tag="pmap.uhold"):
    """copyin(9)'s translation: hold the frames of npages of a user's memory from va.

    => kernel endpoint (net's copy path); owner is the client session that owns asid
       (EPERM otherwise). Reply: PmapUholdReply with the hold and one pfn per page; the
       caller reads the bytes from RAM, then sends pmap.urelease. While a frame is held,
       a pmap operation that removes a mapping of it (page_protect NONE, remove,
       protect NONE, destroy, an enter replacing it) is applied at once but answered
       only once the hold is released (machine.mmu.hold).
    => all or nothing: EFAULT with fault_va at the first page without a readable
       translation (nothing is held; resolve with uvm.kfault and ask again).
    """

    asid: Asid
    owner: U64
    va: Va
    npages: Annotated[int, msgspec.Meta(ge=1, le=MAX_UHOLD_PAGES)]


class PmapUholdReply(Reply, frozen=True, kw_only=True, tag="pmap.uhold.reply"):
    hold: int = 0
    pfns: list[int] = msgspec.field(default_factory=list)
    fault_va: int = 0


class PmapUrelease(Request, frozen=True, kw_only=True, tag="pmap.urelease"):
    """Release holds pmap.uhold took; the replies they deferred go out.

    => an unknown hold is EINVAL (nothing is released). Reply: ack.
    """

    holds: Annotated[list[U64], msgspec.Meta(max_length=MAX_CHUNKS)]


class PmapKremoveRanges(Request, frozen=True, kw_only=True, tag="pmap.kremove_ranges"):
    """Remove the kernel mappings of ranges (va, npages) (pmap_kremove), in order
    (sopendfree: the mbufs freed in one pass).

    Reply: PmapCountReply with the mappings removed over every range.
    """

    ranges: Annotated[list[PageRange], msgspec.Meta(max_length=MAX_CHUNKS)]


class PmapExtract(Request, frozen=True, kw_only=True, tag="pmap.extract"):
    """Translate one VA (pmap_extract). asid 0 is the kernel pmap.

    Reply: PmapExtractReply; pfn is -1 when there is no translation.
    """

    asid: Asid
    va: Va


class PmapExtractReply(Reply, frozen=True, kw_only=True, tag="pmap.extract.reply"):
    pfn: int = -1
    prot: int = 0
    wired: bool = False
    managed: bool = False


class PmapAttrs(Request, frozen=True, kw_only=True, tag="pmap.attrs"):
    """Read, and optionally clear, the referenced/modified bits of frames.

    pmap_is_referenced / pmap_is_modified, with clear_reference /
    clear_modify when the flags say so. Batched: one message per scan batch.
    Reply: PmapAttrsReply with the bits as they were before clearing (callers pack
    them as machine.proto.pageinfo's REFERENCED | MODIFIED).
    """

    pfns: PfnList
    clear_reference: bool = False
    clear_modify: bool = False


class PmapAttrsReply(Reply, frozen=True, kw_only=True, tag="pmap.attrs.reply"):
    referenced: list[bool] = msgspec.field(default_factory=list)
    modified: list[bool] = msgspec.field(default_factory=list)


class PmapPv(Request, frozen=True, kw_only=True, tag="pmap.pv"):
    """List the mappings of a frame (its pv list plus kernel mappings), for audits.

    Reply: PmapPvReply with [asid, va, prot, wired, managed] per mapping.
    """

    pfn: Pfn


class PmapPvReply(Reply, frozen=True, kw_only=True, tag="pmap.pv.reply"):
    mappings: list[tuple[int, int, int, bool, bool]] = msgspec.field(default_factory=list)


class PmapCountReply(Reply, frozen=True, kw_only=True, tag="pmap.count.reply"):
    count: int = 0


class MmuLoad(Request, frozen=True, kw_only=True, tag="mmu.load"):
    """A CPU load of n bytes at va in the caller's address space.

    => client -> mmu (user endpoint); asid must be the caller's.
    => page by page, as a CPU's string instruction: a page that does not
       translate traps to uvm (the kernel resolves it while the request waits:
       zero-fill, swap-in, copy-on-write, a loan break) and the access goes on.
    Reply: MmuAccessReply with `data` and `traps` (how many it took); or EFAULT
    (SIGSEGV: no mapping, or a protection the mapping forbids) with fault_va
    and fault_access, the bytes before fault_va having been accessed.
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    va: Va
    n: AccessLen


class MmuStore(Request, frozen=True, kw_only=True, tag="mmu.store"):
    """A CPU store of `data` at va in the caller's address space.

    => as mmu.load: page by page; on EFAULT the bytes before fault_va are written.
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    va: Va
    data: AccessBytes


class MmuAccessReply(Reply, frozen=True, kw_only=True, tag="mmu.access.reply"):
    """data: what a load read; traps: how many traps the access took (each resolved by
    uvm while the access waited, 1.4); on EFAULT, fault_va/fault_access: where it stopped."""

    data: bytes = b""
    fault_va: int = 0
    fault_access: int = 0
    traps: int = 0


class MmuKload(Request, frozen=True, kw_only=True, tag="mmu.kload"):
    """A kernel load through the kernel pmap (a driver's DMA read of an mbuf).

    => kernel endpoint only. Reply: MmuAccessReply; EFAULT is a kernel page
       fault, which the caller must resolve through uvm or panic on.
    """

    va: Va
    n: AccessLen


class PmapMappings(Request, frozen=True, kw_only=True, tag="pmap.mappings"):
    """List every mapping of one address space, for the auditor.

    Reply: PmapMappingsReply with [va, pfn, prot, wired] per mapping, by va.
    Errnos: ESRCH.
    """

    asid: Asid


class PmapMappingsReply(Reply, frozen=True, kw_only=True, tag="pmap.mappings.reply"):
    mappings: list[tuple[int, int, int, bool]] = msgspec.field(default_factory=list)


class PmapCheck(Request, frozen=True, kw_only=True, tag="pmap.check"):
    """The pmap's own consistency check: pv lists match page tables (P1), every
    translation names a frame of RAM with a protection (P2), unmanaged mappings only
    in the kernel pmap (P3), wired counts.

    => kernel endpoint (uvm's auditor). Reply: PmapCheckReply; empty when consistent.
    """


class PmapCheckReply(Reply, frozen=True, kw_only=True, tag="pmap.check.reply"):
    problems: list[str] = msgspec.field(default_factory=list)
