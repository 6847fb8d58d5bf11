"""The mmu role's service: pmap.* from the kernel, mmu.* (CPU accesses) from clients.

Recovery contract: the mmu's state is a cache of uvm's, except wired
mappings (pmap(9)); restarting the mmu is not supported yet, so a dead mmu
is a machine panic (the supervisor's policy).

Ownership: a client may load/store only in address spaces whose pmap was
created for its session (pmap.create's `owner`, checked against the header's
session, which the Service has authenticated); another session's asid and an
unknown one are both ESRCH, the kernel's EPERM.
"""

from __future__ import annotations

from typing import Any, ClassVar

from machine.ipc.service import Service
from machine.mmu.pmap import Fault, Mmu
from machine.params import KERNEL_ASID
from machine.proto import (
    Errno,
    MmuAccessReply,
    MmuCopyin,
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
    PmapKextract,
    PmapKextractReply,
    PmapKremove,
    PmapMappings,
    PmapMappingsReply,
    PmapPageProtect,
    PmapProtect,
    PmapPv,
    PmapPvReply,
    PmapRemove,
    PmapUnwire,
    Reply,
    Request,
    Status,
    UserError,
)
from machine.proto.pageinfo import unpack_attrs
from machine.proto.types import EnterFlags, Prot


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
        PmapKremove,
        PmapExtract,
        PmapAttrs,
        PmapPv,
        PmapMappings,
        PmapUnwire,
        PmapCheck,
        MmuLoad,
        MmuStore,
        MmuKload,
        PmapKextract,
        MmuCopyin,
    )

    def __init__(self, transport: Any, *, mmu: Mmu, **kw: Any) -> None:
        super().__init__(transport, **kw)
        self.mmu = mmu

    def _count(self, msg: Request, n: int) -> Reply:
        return self.reply(msg, PmapCountReply, count=n)

    # -- pmap(9), kernel only -------------------------------------------------

    def on_create(self, msg: PmapCreate) -> Reply:
        self.mmu.create(msg.asid, msg.owner)
        return self.ack(msg)

    def on_destroy(self, msg: PmapDestroy) -> Reply:
        return self._count(msg, self.mmu.destroy(msg.asid))

    def on_enter(self, msg: PmapEnter) -> Reply:
        self.mmu.enter(msg.asid, msg.va, msg.pfn, Prot(msg.prot), EnterFlags(msg.flags & 7))
        return self.ack(msg)

    def on_remove(self, msg: PmapRemove) -> Reply:
        return self._count(msg, self.mmu.remove(msg.asid, msg.sva, msg.eva))

    def on_protect(self, msg: PmapProtect) -> Reply:
        return self._count(msg, self.mmu.protect(msg.asid, msg.sva, msg.eva, Prot(msg.prot)))

    def on_check(self, msg: PmapCheck) -> Reply:
        return self.reply(msg, PmapCheckReply, problems=self.mmu.check())

    def on_unwire(self, msg: PmapUnwire) -> Reply:
        return self._count(msg, self.mmu.unwire(msg.asid, msg.sva, msg.eva))

    def on_page_protect(self, msg: PmapPageProtect) -> Reply:
        return self._count(
            msg, self.mmu.page_protect(msg.pfns, Prot(msg.prot), msg.h.sender, msg.why)
        )

    def on_kextract(self, msg: PmapKextract) -> Reply:
        res = self.mmu.kextract(msg.va, msg.npages)
        if isinstance(res, Fault):
            return self.reply(
                msg,
                PmapKextractReply,
                status=Status.ERROR,
                errno=Errno.EFAULT,
                detail=res.reason if "revoked" in res.reason else f"{res.reason} at {res.va:#x}",
                fault_va=res.va,
            )
        return self.reply(msg, PmapKextractReply, pfns=res)

    def on_copyin(self, msg: MmuCopyin) -> Reply:
        return self._access_reply(msg, self.mmu.copyin(msg.asid, msg.owner, msg.va, msg.n))

    def on_kenter(self, msg: PmapKenter) -> Reply:
        self.mmu.kenter(msg.va, msg.pfns, Prot(msg.prot))
        return self.ack(msg)

    def on_kremove(self, msg: PmapKremove) -> Reply:
        return self._count(msg, self.mmu.kremove(msg.va, msg.npages))

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

    def on_load(self, msg: MmuLoad) -> Reply:
        self._owned(msg)
        return self._access_reply(msg, self.mmu.load(msg.asid, msg.va, msg.n))

    def on_store(self, msg: MmuStore) -> Reply:
        self._owned(msg)
        return self._access_reply(msg, self.mmu.store(msg.asid, msg.va, msg.data))

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
