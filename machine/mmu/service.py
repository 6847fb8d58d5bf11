"""The mmu role's service: pmap.* from the kernel, mmu.* (CPU accesses) from clients.

A user access that traps is parked here and resolved by uvm (machine.mmu.cpu:
pmap.trapwait hands traps over, pmap.resolve brings the mappings back); the
client waits for its one reply.

Recovery contract: the mmu's state is a cache of uvm's, except wired
mappings (pmap(9)); restarting the mmu is not supported yet, so a dead mmu
is a machine panic (the supervisor's policy).

Ownership: a client may load/store only in address spaces whose pmap was
created for its session (pmap.create's `owner`, checked against the header's
session, which the Service has authenticated); another session's asid and an
unknown one are both ESRCH, the kernel's EPERM. A session uvm said ended
(pmap.sessions) is ESESSION; the sessions served here go to uvm on the next
pmap.sessions reply, which renews their leases (machine.uvm.service).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from machine.ipc.pending import Pending, deferred
from machine.ipc.service import Service
from machine.mmu.copyin import uhold
from machine.mmu.cpu import Access, TrapQueue, step
from machine.mmu.pmap import Fault, Mmu
from machine.params import KERNEL_ASID
from machine.proto import (
    SESSIONS_BATCH,
    Errno,
    MmuAccessReply,
    MmuKload,
    MmuLoad,
    MmuStore,
    PmapAttrs,
    PmapAttrsReply,
    PmapCheck,
    PmapCheckReply,
    PmapCountReply,
    PmapCreate,
    PmapDestroy,
    PmapEnter,
    PmapExtract,
    PmapExtractReply,
    PmapKenter,
    PmapKenterChunks,
    PmapKextractRanges,
    PmapKextractRangesReply,
    PmapKremoveRanges,
    PmapMappings,
    PmapMappingsReply,
    PmapPageProtect,
    PmapProtect,
    PmapPv,
    PmapPvReply,
    PmapRemove,
    PmapResolve,
    PmapSessions,
    PmapSessionsReply,
    PmapTrapwait,
    PmapTrapwaitReply,
    PmapUhold,
    PmapUholdReply,
    PmapUnwire,
    PmapUrelease,
    Reply,
    Request,
    Status,
    UserError,
)
from machine.proto.pageinfo import unpack_attrs
from machine.proto.types import Prot

KPT_POLL_MAX_S = 1e-3  # the shootdown's poll, at most (it starts at 10 us)


class MmuService(Service):
    role: ClassVar[str] = "mmu"
    user_errors: ClassVar[tuple[type[Exception], ...]] = (UserError,)
    serves: ClassVar[tuple[type[Request], ...]] = (
        PmapCreate,
        PmapDestroy,
        PmapEnter,
        PmapRemove,
        PmapProtect,
        PmapPageProtect,
        PmapKenter,
        PmapKenterChunks,
        PmapExtract,
        PmapAttrs,
        PmapPv,
        PmapMappings,
        PmapUnwire,
        PmapCheck,
        MmuLoad,
        MmuStore,
        MmuKload,
        PmapKextractRanges,
        PmapKremoveRanges,
        PmapUhold,
        PmapUrelease,
        PmapTrapwait,
        PmapSessions,
        PmapResolve,
    )

    def __init__(self, transport: Any, *, mmu: Mmu, **kw: Any) -> None:
        super().__init__(transport, **kw)
        self.mmu = mmu
        self.traps = TrapQueue(mmu)
        self.shootdowns = 0  # revocations that waited for a reader of the kernel table
        self.kenter_msgs = 0  # pmap.kenter_chunks handled (uvm's whole-send loans)

    def _count(self, msg: Request, n: int) -> Reply:
        return self.reply(msg, PmapCountReply, count=n)

    # -- pmap(9), kernel only -------------------------------------------------

    def on_create(self, msg: PmapCreate) -> Reply:
        self.mmu.create(msg.asid, msg.owner)
        return self.ack(msg)

    async def _shootdown(self) -> None:
        """The operation just applied removed mappings of held frames, or cleared kernel
        table entries a DMA was reading: its reply waits until they are released and the
        readers have left (machine.mmu.hold, machine.kpt K3; no wait when none was)."""
        hits = self.mmu.holds.take_hits()
        if hits:
            await self.mmu.holds.wait_released(hits)
        if self.mmu.kpt_hits:
            await self._kpt_shootdown()

    async def _kpt_shootdown(self) -> None:
        """Wait until no reader is inside a kernel table page just cleared (net's DMA
        copies for microseconds, off any await: a short poll, never a message)."""
        mmu = self.mmu
        vpns, mmu.kpt_hits = mmu.kpt_hits, set()
        assert mmu.kpt is not None
        self.shootdowns += 1
        delay = 0.0
        while mmu.kpt.inside(vpns):
            await asyncio.sleep(delay)
            delay = min(KPT_POLL_MAX_S, delay * 2 or 1e-5)

    async def on_destroy(self, msg: PmapDestroy) -> Reply:
        n = self.mmu.destroy(msg.asid)
        await self._shootdown()
        return self._count(msg, n)

    async def on_enter(self, msg: PmapEnter) -> Reply:
        self.mmu.enter(msg.asid, msg.va, msg.pfn, msg.prot, msg.flags & 7)
        await self._shootdown()
        return self.ack(msg)

    async def on_remove(self, msg: PmapRemove) -> Reply:
        n = self.mmu.remove(msg.asid, msg.sva, msg.eva)
        await self._shootdown()
        return self._count(msg, n)

    async def on_protect(self, msg: PmapProtect) -> Reply:
        n = self.mmu.protect(msg.asid, msg.sva, msg.eva, Prot(msg.prot))
        await self._shootdown()
        return self._count(msg, n)

    def on_check(self, msg: PmapCheck) -> Reply:
        return self.reply(msg, PmapCheckReply, problems=self.mmu.check())

    def on_unwire(self, msg: PmapUnwire) -> Reply:
        return self._count(msg, self.mmu.unwire(msg.asid, msg.sva, msg.eva))

    async def on_page_protect(self, msg: PmapPageProtect) -> Reply:
        n = self.mmu.page_protect(msg.pfns, Prot(msg.prot), msg.h.sender, msg.why)
        await self._shootdown()
        return self._count(msg, n)

    def on_kextract_ranges(self, msg: PmapKextractRanges) -> Reply:
        pfns: list[list[int]] = []
        fault_vas: list[int] = []
        details: list[str] = []
        for va, npages in msg.ranges:
            res = self.mmu.kextract(va, npages)
            if isinstance(res, Fault):
                pfns.append([])
                fault_vas.append(res.va)
                why = res.reason
                details.append(why if "revoked" in why else f"{why} at {res.va:#x}")
            else:
                pfns.append(res)
                fault_vas.append(0)
                details.append("")
        return self.reply(
            msg, PmapKextractRangesReply, pfns=pfns, fault_vas=fault_vas, details=details
        )

    def on_uhold(self, msg: PmapUhold) -> Reply:
        res = uhold(self.mmu, msg.asid, msg.owner, msg.va, msg.npages)
        if isinstance(res, Fault):
            return self.reply(
                msg,
                PmapUholdReply,
                status=Status.ERROR,
                errno=Errno.EFAULT,
                detail=f"{res.reason} at {res.va:#x}",
                fault_va=res.va,
            )
        return self.reply(msg, PmapUholdReply, hold=res[0], pfns=res[1])

    def on_urelease(self, msg: PmapUrelease) -> Reply:
        self.mmu.holds.release(msg.holds)
        return self.ack(msg)

    def on_kenter_chunks(self, msg: PmapKenterChunks) -> Reply:
        self.kenter_msgs += 1
        mmu, prot = self.mmu, int(msg.prot)
        for va, pfns in msg.chunks:  # all or nothing: every chunk checked first
            mmu._check_kernel_range(va, len(pfns))
            mmu._check_pfns(pfns)
        for va, pfns in msg.chunks:
            mmu.kenter(va, pfns, prot)
        return self.ack(msg)

    def on_kenter(self, msg: PmapKenter) -> Reply:
        self.mmu.kenter(msg.va, msg.pfns, Prot(msg.prot))
        return self.ack(msg)

    async def on_kremove_ranges(self, msg: PmapKremoveRanges) -> Reply:
        for va, npages in msg.ranges:  # checked first: bad input changes nothing
            self.mmu._check_kernel_range(va, npages)
        n = sum(self.mmu.kremove(va, n) for va, n in msg.ranges)
        await self._shootdown()
        return self._count(msg, n)

    def on_extract(self, msg: PmapExtract) -> Reply:
        pte = self.mmu.extract(msg.asid, msg.va)
        if pte is None:
            return self.reply(msg, PmapExtractReply)
        return self.reply(
            msg,
            PmapExtractReply,
            pfn=pte.pfn,
            prot=int(pte.prot),
            wired=pte.wired,
            managed=pte.managed,
        )

    def on_attrs(self, msg: PmapAttrs) -> Reply:
        bits = self.mmu.get_attrs(msg.pfns, msg.clear_reference, msg.clear_modify)
        referenced, modified = unpack_attrs(bits)
        return self.reply(msg, PmapAttrsReply, referenced=referenced, modified=modified)

    def on_pv(self, msg: PmapPv) -> Reply:
        return self.reply(msg, PmapPvReply, mappings=self.mmu.mappings_of(msg.pfn))

    def on_mappings(self, msg: PmapMappings) -> Reply:
        pm = self.mmu._pmap(msg.asid)
        rows = [(vpn << 12, p.pfn, int(p.prot), p.wired) for vpn, p in sorted(pm.ptes.items())]
        return self.reply(msg, PmapMappingsReply, mappings=rows)

    # -- the CPU -------------------------------------------------------------

    def _owned(self, msg: MmuLoad | MmuStore) -> None:
        owner = self.mmu.owner_of(msg.asid)
        if msg.asid == KERNEL_ASID:
            raise UserError(Errno.EPERM, "the kernel address space is not yours")
        if owner is None or owner != msg.h.incarnation:
            # Alike for an unknown space and another session's: no existence oracle.
            raise UserError(Errno.ESRCH, f"no address space {msg.asid}")

    def _access_reply(self, msg: Request, res: bytes | Fault | None) -> Reply:
        if isinstance(res, Fault):
            return self.reply(
                msg,
                MmuAccessReply,
                status=Status.ERROR,
                errno=Errno.EFAULT,
                detail=f"{res.reason} at {res.va:#x}",
                fault_va=res.va,
                fault_access=int(res.access),
            )
        return self.reply(msg, MmuAccessReply, data=res or b"")

    def _user_access(self, msg: MmuLoad | MmuStore, a: Access) -> Reply | Pending[Reply]:
        """Run a user access to its end, parking it on each trap until uvm resolves it.
        A parked access's reply is a Pending (machine.ipc.pending) that the handler of the
        answer that ends it sets: that handler sends the client's reply, no task wakes."""
        self._owned(msg)
        f = step(self.mmu, a)
        if f is None:
            return self.reply(msg, MmuAccessReply, data=bytes(a.out), traps=a.traps)
        self.traps.park(a, f)
        assert a.done is not None
        return a.done.map(lambda failed: self._ended(msg, a, failed))

    def _ended(self, msg: Request, a: Access, failed: tuple[str, str] | None) -> Reply:
        """The reply of an access that was parked (run in the answer's handler: it never
        raises, so the other answers of that message are applied all the same)."""
        if failed is None:
            return self.reply(msg, MmuAccessReply, data=bytes(a.out), traps=a.traps)
        try:
            errno, detail = failed
            flt = a.fault
            assert flt is not None
            return self.reply(
                msg,
                MmuAccessReply,
                status=Status.ERROR,
                errno=Errno(errno),
                detail=detail,
                fault_va=flt.va,
                fault_access=int(flt.access),
                traps=a.traps,
            )
        except Exception as e:  # e.g. an errno uvm should never send: a kernel bug
            return self.failure(e, msg.h.msg_id, "a parked access")

    @deferred
    def on_load(self, msg: MmuLoad) -> Reply | Pending[Reply]:
        return self._user_access(
            msg, Access(msg.asid, msg.h.incarnation, msg.va, msg.n, write=False)
        )

    @deferred
    def on_store(self, msg: MmuStore) -> Reply | Pending[Reply]:
        a = Access(msg.asid, msg.h.incarnation, msg.va, len(msg.data), write=True, data=msg.data)
        return self._user_access(msg, a)

    # -- traps: uvm's side ---------------------------------------------------

    @deferred
    def on_trapwait(self, msg: PmapTrapwait) -> Reply | Pending[Reply]:
        """Apply the answers (each access resumed here, its reply sent here), then hand
        over the queued traps, or reply when the next one is parked (in its handler)."""
        for ans in msg.answers:
            self.traps.resolve(ans)
        got = self.traps.wait()
        if isinstance(got, list):
            return self.reply(msg, PmapTrapwaitReply, traps=got)
        return got.map(lambda traps: self.reply(msg, PmapTrapwaitReply, traps=traps))

    def on_sessions(self, msg: PmapSessions) -> Reply:
        """uvm's lease report: forget the ended sessions (their requests get ESESSION);
        => the sessions served here since the last report (uvm renews their leases)."""
        for sid in msg.ended:
            self.auth.forget(sid)
        return self.reply(msg, PmapSessionsReply, seen=self.auth.take_seen(SESSIONS_BATCH))

    def on_resolve(self, msg: PmapResolve) -> None:
        for ans in msg.answers:
            self.traps.resolve(ans)

    def on_kload(self, msg: MmuKload) -> Reply:
        return self._access_reply(msg, self.mmu.load(KERNEL_ASID, msg.va, msg.n))

    # -- reporting -----------------------------------------------------------

    def counters(self) -> dict[str, int]:
        st = self.mmu.stats
        return {
            "pmaps": len(self.mmu.pmaps) - 1,
            "resident": self.mmu.resident(),
            "wired": sum(pm.wired_count for pm in self.mmu.pmaps.values()),
            "pv_frames": len(self.mmu.pv),
            "parked": len(self.traps.parked),  # user accesses waiting for uvm
            "resumed": self.traps.resumed,  # answers applied to a parked access
            "holds": len(self.mmu.holds.holds),
            "holds_taken": self.mmu.holds.taken,
            "holds_deferred": self.mmu.holds.deferred,
            "kpt_shootdowns": self.shootdowns,
            "kenter_msgs": self.kenter_msgs,
            **{k: getattr(st, k) for k in st.__slots__},
        }

    def dump_state(self) -> dict[str, Any]:
        return {
            "kenter_mode": "managed" if self.mmu.kenter_managed else "unmanaged",
            "ppp_wired": self.mmu.ppp_wired,
            "krevoked": {
                hex(vpn << 12): r.describe(vpn << 12)
                for vpn, r in list(self.mmu.krevoked.items())[:256]
            },
            "pmaps": {
                str(asid): {
                    "owner": pm.owner,
                    "mappings": [
                        [vpn << 12, pte.pfn, int(pte.prot), pte.wired, pte.managed]
                        for vpn, pte in sorted(pm.ptes.items())[:4096]
                    ],
                }
                for asid, pm in self.mmu.pmaps.items()
            },
            "audit": self.mmu.check(),
        }
