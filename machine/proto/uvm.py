"""uvm.*: the machine-independent VM: address spaces, mappings, faults.

Clients create address spaces (uvm.spawn), map and unmap memory, and trap
into uvm.fault when the mmu answers a load or store with a fault. A client
first attaches (uvm.attach: a session and its key), then signs every
request; it may name only address spaces its own session created (else
ESRCH, which does not tell whether the space exists).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from machine.proto.base import Errno, Event, Reply, Request, Scope
from machine.proto.pageinfo import PD_SCAN_LIMIT
from machine.proto.pmap import MAX_CHUNKS, SESSIONS_BATCH, PageRange
from machine.proto.types import Asid, Length, PfnList, ProtBits, Va


class UvmAttach(Request, frozen=True, kw_only=True, tag="uvm.attach"):
    """Make a client session (public: sent unsigned, from incarnation 0).

    => client -> uvm. Reply: UvmAttachReply with the session's public id and
       its secret key (32 bytes). From then on the client puts `session` in the
       incarnation of every header and appends HMAC-SHA256(key, body)[:16] to
       every request's bytes (machine.ipc.auth); the machine refuses anything
       else for that session with EPERM. EAGAIN when the machine holds its
       limit of sessions and none of them can be reclaimed (one holding no
       process and no file, silent for a second: the least recently seen
       such session is ended to make room).
    """

    scope: ClassVar[Scope] = Scope.USER


class UvmAttachReply(Reply, frozen=True, kw_only=True, tag="uvm.attach.reply"):
    session: int = 0
    key: bytes = b""
    lease_s: float = 0.0


class UvmSpawn(Request, frozen=True, kw_only=True, tag="uvm.spawn"):
    """Create an emulated process: a new, empty address space owned by the caller.

    => client -> uvm. Reply: UvmSpawnReply with its asid (its pid).
    Errnos: EAGAIN (the procs or maxproc limit, or the session's fair share of
    maxproc: docs/design.md "Fair shares"), ESESSION (the session ended, by
    detach or reap, while the process was being made: it has exited).
    """

    scope: ClassVar[Scope] = Scope.USER


class UvmSpawnReply(Reply, frozen=True, kw_only=True, tag="uvm.spawn.reply"):
    asid: int = 0


class UvmMmap(Request, frozen=True, kw_only=True, tag="uvm.mmap"):
    """Map `length` bytes of memory (uvm_map).

    => length > 0 (rounded up to pages); prot in VM_PROT bits.
    => without fixed, va is a hint (NetBSD's uvm_map: the first free range at or
       above it, else from the bottom; rounded up to a page, as uvm_mmap does; a
       hint outside user space is ignored): never a reason to fail while the
       address space has room. With fixed (MAP_FIXED), va is page
       aligned and used exactly; whatever is mapped in the range is replaced, as
       one operation (1.6; before, EINVAL); va 0 with fixed is EINVAL.
    => handle 0: anonymous, zero-filled memory; else an open file (uvm.open)
       at byte `offset` (page aligned). The maximum protection of a file
       mapping comes from the open mode (1.6, NetBSD's vn_mmap): PROT_READ needs
       the file open for reading, a shared mapping's PROT_WRITE needs it open for
       writing (EACCES otherwise); a private mapping may always be written.
    => shared: stores are seen by every process mapping it (and reach the
       file); private: copy-on-write, the file is never written.
       Fork inherits shared entries shared and private ones copied (minherit
       changes it). After mlockall(MCL_FUTURE) the new mapping is wired.
    Reply: UvmMmapReply with the start VA. Errnos: EINVAL (length, alignment,
    fixed outside user space or at 0), ENOMEM (no room, vsize, map_entries,
    maxentries or the session's fair share of it; under MCL_FUTURE, beyond
    RLIMIT_MEMLOCK or wiredmax or no frame: the new mapping is undone, what
    MAP_FIXED replaced stays removed, as NetBSD's uvm_mmap), EBADF, EACCES (open
    mode).
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    length: Length
    prot: ProtBits
    va: Va = 0
    fixed: bool = False
    handle: Annotated[int, msgspec.Meta(ge=0, le=(1 << 31) - 1)] = 0
    offset: Annotated[int, msgspec.Meta(ge=0, le=1 << 40)] = 0
    shared: bool = False


class UvmMmapReply(Reply, frozen=True, kw_only=True, tag="uvm.mmap.reply"):
    va: int = 0


class UvmMunmap(Request, frozen=True, kw_only=True, tag="uvm.munmap"):
    """Unmap [va, va+length) (uvm_unmap): translations first, then frames are freed.

    => va page aligned; unmapped holes in the range are allowed (POSIX).
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    va: Va
    length: Length


class UvmFault(Request, frozen=True, kw_only=True, tag="uvm.fault"):
    """Resolve a fault at va and enter its mapping (uvm_fault), a prefault.

    => a client's loads and stores need not call it: the mmu hands their traps
       to uvm itself (pmap.trapwait); kernel faults (uvm.kfault) use the same
       handler. access is the access to resolve for (READ or WRITE).
    Reply: ok once the translation is entered; EFAULT (SIGSEGV) with the
    reason when no mapping covers va or the mapping's protection forbids the
    access; ENOMEM when no frame can be had.
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    va: Va
    access: ProtBits


class UvmFork(Request, frozen=True, kw_only=True, tag="uvm.fork"):
    """fork(2): a child process with copy-on-write copies of the parent's private memory.

    => afterwards stores in either are invisible to the other; shared
       mappings stay shared; wired private memory is copied at once.
    Reply: UvmForkReply with the child's asid (owned by the same session).
    Errnos: EAGAIN (the procs or maxproc limit, or the session's fair share of
    maxproc), ENOMEM (the machine's map entries, maxentries or the session's fair
    share of it: the child's are charged first; or no frame to copy
    wired memory into), ESRCH (no such process), ESESSION (the session ended, by
    detach or reap, while the child was being made: it has exited).
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid


class UvmForkReply(Reply, frozen=True, kw_only=True, tag="uvm.fork.reply"):
    asid: int = 0


class UvmMprotect(Request, frozen=True, kw_only=True, tag="uvm.mprotect"):
    """mprotect(2) on [va, va+length): lowering takes effect at once in the mmu.

    Errnos: ENOMEM (range not fully mapped), EACCES (beyond max protection), EINVAL.
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    va: Va
    length: Length
    prot: ProtBits


class UvmPageout(Request, frozen=True, kw_only=True, tag="uvm.pageout"):
    """Page out the page backing va in asid: revoke its mappings, write it if
    dirty (anon/aobj pages to swap, file pages to the file), free the frame.

    => kernel endpoint (tests; the page daemon's decisions arrive later).
    Reply: UvmPageoutReply with the frame freed. Errnos: EBUSY (busy or
    wired page), ENOENT (nothing resident), ENOMEM (swap full), ESRCH.
    """

    asid: Asid
    va: Va


class UvmPageoutReply(Reply, frozen=True, kw_only=True, tag="uvm.pageout.reply"):
    pfn: int = 0


class UvmExit(Request, frozen=True, kw_only=True, tag="uvm.exit"):
    """End an emulated process: remove its pmap, free every frame it held."""

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid


class UvmDetach(Request, frozen=True, kw_only=True, tag="uvm.detach"):
    """The client session is leaving: exit every process it created.

    (A session that vanishes without detaching is reaped when its lease,
    renewed by any request it sends, runs out.)
    Reply: UvmDetachReply with the asids that were exited.
    """

    scope: ClassVar[Scope] = Scope.USER


class UvmDetachReply(Reply, frozen=True, kw_only=True, tag="uvm.detach.reply"):
    exited: list[int] = msgspec.field(default_factory=list)


class UvmAudit(Request, frozen=True, kw_only=True, tag="uvm.audit"):
    """Check uvm's invariants and its agreement with the mmu.

    => kernel endpoint (tests, the kernel debugger, stress runs).
    Reply: UvmAuditReply; `problems` is empty when every invariant holds.
    """


class UvmAuditReply(Reply, frozen=True, kw_only=True, tag="uvm.audit.reply"):
    problems: list[str] = msgspec.field(default_factory=list)
    checked: int = 0


class UvmOwners(Request, frozen=True, kw_only=True, tag="uvm.owners"):
    """Which session owns each of these processes, and are these sessions live?

    => kernel endpoint (net: the owner check of net.socket, and its periodic
       reconciliation, which closes the sockets of processes whose
       uvm.proc_exited event it missed). Asids are never reused.
    Reply: UvmOwnersReply; owners[i]: the session owning asids[i], 0 when it
    is no live process; live[i]: sessions[i] is attached.
    """

    asids: Annotated[list[Asid], msgspec.Meta(max_length=65536)] = msgspec.field(
        default_factory=list
    )
    sessions: Annotated[list[int], msgspec.Meta(max_length=65536)] = msgspec.field(
        default_factory=list
    )


class UvmOwnersReply(Reply, frozen=True, kw_only=True, tag="uvm.owners.reply"):
    owners: list[int] = msgspec.field(default_factory=list)
    live: list[bool] = msgspec.field(default_factory=list)


class UvmSessionsSeen(Request, frozen=True, kw_only=True, tag="uvm.sessions_seen"):
    """The sessions a role served since its last report: each one's lease is renewed. (1.7)

    => kernel endpoint; net sends one every lease_s / 4 while it served any session
       (the mmu's report rides on pmap.sessions, which uvm sends). Never one message
       per request: a role collects the sessions and reports them in batches.
    Reply: UvmSessionsSeenReply; `ended`: those of `sessions` that uvm no longer
    holds (the role answers their requests ESESSION from then on).
    """

    sessions: Annotated[list[int], msgspec.Meta(max_length=SESSIONS_BATCH)] = msgspec.field(
        default_factory=list
    )


class UvmSessionsSeenReply(Reply, frozen=True, kw_only=True, tag="uvm.sessions_seen.reply"):
    ended: Annotated[list[int], msgspec.Meta(max_length=SESSIONS_BATCH)] = msgspec.field(
        default_factory=list
    )


class UvmSessionEnded(Event, frozen=True, kw_only=True, tag="uvm.session_ended"):
    """A session ended (detach, lease reaped, reclaimed): its requests get ESESSION. (1.7)"""

    session: int
    reason: str


class UvmPressure(Event, frozen=True, kw_only=True, tag="uvm.pressure"):
    """Free memory fell below the page daemon's wake-up point."""

    free: int
    freemin: int
    freetarg: int


class UvmProcExited(Event, frozen=True, kw_only=True, tag="uvm.proc_exited"):
    """A process ended: by exit, by detach, or reaped after its session lapsed."""

    asid: int
    reason: str


class UvmPdSnapshot(Request, frozen=True, kw_only=True, tag="uvm.pd_snapshot"):
    """The page daemon reads the paging queues (up to `limit` pages of each, from the head,
    and each queue's length: nactive, ninactive).

    => kernel endpoint (pdaemon). Reply: UvmPdSnapshotReply; each page is [pfn, bits]
       (machine.proto.pageinfo: SWAP_BACKED, CLEAN, BUSY, WIRED, LOANED, OWNED, HAS_ANON,
       SWSLOT).
    """

    limit: Annotated[int, msgspec.Meta(ge=1, le=1 << 20)] = PD_SCAN_LIMIT


class UvmPdSnapshotReply(Reply, frozen=True, kw_only=True, tag="uvm.pd_snapshot.reply"):
    free: int = 0
    npages: int = 0
    paging: int = 0
    swpages: int = 0
    swpginuse: int = 0
    swpgonly: int = 0
    active: list[list[int]] = msgspec.field(default_factory=list)
    inactive: list[list[int]] = msgspec.field(default_factory=list)
    nactive: int = -1  # the queues' lengths (the rows may be a prefix); -1: len(rows)
    ninactive: int = -1


class UvmPdClaim(Request, frozen=True, kw_only=True, tag="uvm.pd_claim"):
    """The page daemon claims pages for actions; uvm re-checks each page's current state
    under the profile's rules and marks the accepted ones BUSY.

    => items: [op, pfn] with op in reactivate, deactivate, free, pageout, dropswap
       (machine.proto.pageinfo.PdOp).
    Reply: UvmPdClaimReply with the pfns claimed (the rest were refused).
    """

    items: list[tuple[str, int]]


class UvmPdClaimReply(Reply, frozen=True, kw_only=True, tag="uvm.pd_claim.reply"):
    claimed: list[int] = msgspec.field(default_factory=list)


class UvmPdFinish(Request, frozen=True, kw_only=True, tag="uvm.pd_finish"):
    """Carry out claimed actions (the daemon revoked mappings where its policy asked),
    and unbusy every page named. Reply: UvmPdFinishReply with counts per op."""

    items: list[tuple[str, int]]


class UvmPdFinishReply(Reply, frozen=True, kw_only=True, tag="uvm.pd_finish.reply"):
    done: dict[str, int] = msgspec.field(default_factory=dict)


Owner = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


class UvmLoan(Request, frozen=True, kw_only=True, tag="uvm.loan"):
    """Loan npages of a user's memory from va to the kernel (uvm_loan, UVM_LOAN_TOPAGE). (1.2)

    => kernel endpoint (net's sosend); owner is the client session owning asid.
    => every page is made resident (swap-in, pgo_get, or the zero page for
       untouched anonymous memory); the first loan of a page write-protects
       every managed mapping of it; what else happens (wire, dequeue, nothing)
       is the profile's ERA. One message per 64 KiB chunk, never per page.
    Reply: UvmLoanReply with one pfn per page. All or nothing: EFAULT (hole or
    no read access), EBUSY (ERA=modern refuses a wired page), ENOMEM.

    Superseded by uvm.loan_chunks (1.4): no role serves it; kept so 1.x encodings decode.
    """

    asid: Asid
    owner: Owner
    va: Va
    npages: Annotated[int, msgspec.Meta(ge=1, le=4096)]


class UvmLoanReply(Reply, frozen=True, kw_only=True, tag="uvm.loan.reply"):
    pfns: list[int] = msgspec.field(default_factory=list)


class UvmUnloan(Request, frozen=True, kw_only=True, tag="uvm.unloan"):
    """End kernel loans of pages (uvm_unloan, UVM_LOAN_TOPAGE), after the kernel
    removed its mappings at [kva, kva + npages pages). (1.2)

    => a page whose owner let it go meanwhile (an orphan) is freed with its last
       loan; a page that is not loaned panics ("uvm_unloanpage: page isn't loaned").
    => kernel_object pages that a kernel fault put in the KVA range
       (LOAN_KVA=kernel_object) are freed too.

    Superseded by uvm.unloan_chunks (1.4): no role serves it; kept so 1.x encodings decode.
    """

    pfns: list[int]
    kva: Va = 0
    npages: Annotated[int, msgspec.Meta(ge=0, le=4096)] = 0


class UvmLoanChunks(Request, frozen=True, kw_only=True, tag="uvm.loan_chunks"):
    """Loan chunks of a user's memory to the kernel (uvm_loan, UVM_LOAN_TOPAGE). (1.2)

    => kernel endpoint (net's sosend: the loaned chunks of one window, in send order);
       owner is the client session owning asid. chunks: (va, npages) each, page aligned.
    => each chunk is loaned as its own uvm_loan, in order: every page is made resident
       (swap-in, pgo_get, or the zero page for untouched anonymous memory); the first
       loan of a page write-protects every managed mapping of it; what else happens
       (wire, dequeue, nothing) is the profile's ERA.
    => kvas (1.8, optional): one page-aligned kernel VA per chunk: uvm then enters every
       loaned chunk's pages read-only there (one pmap.kenter_chunks on its ordered pmap
       connection, after the write-protects) before it answers: a whole-send loan, no
       kenter of net's. EINVAL (nothing loaned) if their number or a VA is bad; if the
       kenter fails, every chunk is unloaned and its error is the reply.
    Reply: UvmLoanChunksReply, per chunk: its pfns, one per page, and errno None; or, for a
    refused chunk (all or nothing per chunk), no pfns, its errno and detail: EFAULT (hole or no
    read access), EBUSY (ERA=modern refuses a wired page), ENOMEM, ESRCH.
    """

    asid: Asid
    owner: Owner
    chunks: Annotated[list[PageRange], msgspec.Meta(max_length=MAX_CHUNKS)]
    kvas: Annotated[list[Va], msgspec.Meta(max_length=MAX_CHUNKS)] = msgspec.field(
        default_factory=list
    )


class UvmLoanChunksReply(Reply, frozen=True, kw_only=True, tag="uvm.loan_chunks.reply"):
    pfns: list[list[int]] = msgspec.field(default_factory=list)
    errnos: list[Errno | None] = msgspec.field(default_factory=list)  # None: loaned
    details: list[str] = msgspec.field(default_factory=list)


class UvmUnloanChunks(Request, frozen=True, kw_only=True, tag="uvm.unloan_chunks"):
    """End kernel loans of chunks (uvm_unloan, UVM_LOAN_TOPAGE), in order, after the
    kernel removed its mappings of each: (pfns, kva, npages) per chunk. (1.2)

    => a page whose owner let it go meanwhile (an orphan) is freed with its last
       loan; a page that is not loaned panics ("uvm_unloanpage: page isn't loaned").
    => kernel_object pages that a kernel fault put in a chunk's KVA range
       (LOAN_KVA=kernel_object) are freed too.
    """

    chunks: Annotated[
        list[tuple[PfnList, Va, Annotated[int, msgspec.Meta(ge=0, le=4096)]]],
        msgspec.Meta(max_length=MAX_CHUNKS),
    ]


class UvmKfault(Request, frozen=True, kw_only=True, tag="uvm.kfault"):
    """A kernel-mode page fault (trap): resolve it or panic (section 9). (1.2)

    => asid 0: the fault is at kernel VA va (a driver reading loaned mbuf
       storage). LOAN_KVA=none: the loan KVA has no object ("case 0"), so uvm
       panics, naming the page and who revoked its mapping (evidence, from the
       mmu). LOAN_KVA=kernel_object (1999 uvm_km_valloc): a fresh zero page is
       entered at va and the fault "succeeds".
    => asid > 0: a copyin fault in the address space of client `owner`:
       resolved as that process's fault; EFAULT when it cannot be.
    """

    va: Va
    access: ProtBits
    asid: Asid = 0
    owner: Owner = 0
    evidence: Annotated[str, msgspec.Meta(max_length=4096)] = ""
    pfn: Annotated[int, msgspec.Meta(ge=-1, le=(1 << 40) - 1)] = -1  # the page loaned there
