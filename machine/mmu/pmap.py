"""The pmap: per-address-space translation tables, pv lists, R/M bits, CPU accesses.

This is the machine-dependent layer of pmap(9). uvm is its only writer of
user translations; clients only load and store through it.

State:
  * pmaps[asid].ptes: vpn -> Pte(pfn, prot, wired, managed). asid 0 is the
    kernel pmap. kenter mappings there are unmanaged (no pv entry) under
    KENTER_MODE=unmanaged (i386, alpha, modern) and managed wired mappings
    with a pv entry under KENTER_MODE=managed (hp300, mips, sparc, powerpc in
    1999): pmap_page_protect(NONE) then finds and removes them.
  * krevoked[vpn]: who revoked a kernel mapping (page_protect of a managed
    kenter), the evidence a later kernel fault at that VA reports.
  * pv[pfn]: the set of (asid, vpn) of every *managed* mapping of a frame.
  * attrs[pfn]: the frame's referenced (bit 0) and modified (bit 1) bits.
  * kpt: the kernel pmap's entries in shared memory (machine.kpt), written here on
    every kenter and cleared on every removal of a kernel mapping; kpt_hits: the
    pages cleared while a reader (net's DMA) was inside: the reply waits (K3).

Invariants (checked by check()):
  P1  (asid, vpn) in pv[pfn]  <=>  pmaps[asid].ptes[vpn] is managed with pfn.
  P2  every pte's pfn < nframes and prot != NONE.
  P3  an unmanaged pte is in the kernel pmap.
pmap_page_protect(NONE) on a wired managed mapping does what PPP_WIRED says:
remove it (i386, mips, powerpc), skip it (alpha, hp300, sh3's work-around), or
panic (Silvers: page_protect is ill-defined for wired pages).
  P4  only managed mappings set referenced/modified bits; the bits of a frame
      survive the removal of its mappings (pmap_is_modified after remove).

Mmu.load/store (kernel loads, tests) are all-or-nothing: every page is translated and
checked before any byte moves. User accesses go page by page (machine.mmu.cpu).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from machine.kassert import kassert
from machine.kpt import KernelPageTable
from machine.mmu.hold import Holds
from machine.params import (
    KERNEL_ASID,
    KERNEL_MIN,
    KERNEL_TOP,
    PAGE_MASK,
    PAGE_SHIFT,
    PAGE_SIZE,
    USER_MIN,
    USER_TOP,
)
from machine.proto import Errno, UserError
from machine.proto.pageinfo import MODIFIED, REFERENCED
from machine.proto.types import EnterFlags, Prot
from machine.ram import Ram

_WIRED = int(EnterFlags.WIRED)
_CLEAN = int(EnterFlags.CLEAN)


@dataclass(slots=True)
class Pte:
    pfn: int
    prot: int  # VM_PROT bits, a plain int: IntFlag arithmetic costs ~0.5 us per operation
    wired: bool
    managed: bool


@dataclass(slots=True)
class Pmap:
    asid: int
    owner: int  # the client session allowed to issue mmu.* on it (0: kernel)
    ptes: dict[int, Pte] = field(default_factory=dict)
    wired_count: int = 0


@dataclass(slots=True, frozen=True)
class Fault:
    """A trap: the access to `va` of type `access` found no valid translation."""

    va: int
    access: Prot
    reason: str


@dataclass(slots=True)
class PmapStats:
    loads: int = 0
    stores: int = 0
    kloads: int = 0
    traps: int = 0
    enters: int = 0
    removes: int = 0
    protects: int = 0
    page_protects: int = 0
    kenters: int = 0
    kremoves: int = 0


@dataclass(slots=True, frozen=True)
class Revocation:
    """A kernel mapping removed by pmap_page_protect: the evidence for a later trap."""

    pfn: int
    by: str  # the role that asked
    why: str  # what it was doing (deactivate, loan break, anon free, ...)

    def describe(self, va: int) -> str:
        return (
            f"kernel mapping {va:#x} -> page {self.pfn} was revoked by {self.by}: "
            f"pmap_page_protect(NONE) ({self.why})"
        )


class Mmu:
    """All pmaps of the machine and the CPU that uses them."""

    def __init__(
        self, ram: Ram, kenter_mode: str = "unmanaged", ppp_wired: str = "remove",
        kpt: KernelPageTable | None = None,
    ) -> None:  # fmt: skip
        self.ram = ram
        self.kpt = kpt
        self.kpt_hits: set[int] = set()
        self.kenter_managed = kenter_mode == "managed"
        self.ppp_wired = ppp_wired
        self.krevoked: dict[int, Revocation] = {}
        self.nframes = ram.nframes
        self.pmaps: dict[int, Pmap] = {KERNEL_ASID: Pmap(KERNEL_ASID, 0)}
        self.pv: dict[int, set[tuple[int, int]]] = {}
        self.attrs = bytearray(self.nframes)
        self.stats = PmapStats()
        self.holds = Holds()  # frames net copies from (machine.mmu.hold)

    # -- argument checks (bad input never changes state) --------------------

    def _pmap(self, asid: int) -> Pmap:
        pm = self.pmaps.get(asid)
        if pm is None:
            raise UserError(Errno.ESRCH, f"no pmap for asid {asid}")
        return pm

    def _check_user_range(self, sva: int, eva: int) -> None:
        if sva & PAGE_MASK or eva & PAGE_MASK:
            raise UserError(Errno.EINVAL, f"range [{sva:#x}, {eva:#x}) not page aligned")
        if not (USER_MIN <= sva <= eva <= USER_TOP):
            raise UserError(Errno.EINVAL, f"range [{sva:#x}, {eva:#x}) outside user space")

    def _check_pfn(self, pfn: int) -> None:
        if not 0 <= pfn < self.nframes:
            raise UserError(Errno.EINVAL, f"pfn {pfn} beyond RAM ({self.nframes} frames)")

    def _check_pfns(self, pfns: list[int]) -> None:
        if pfns and not (0 <= min(pfns) and max(pfns) < self.nframes):
            for pfn in pfns:
                self._check_pfn(pfn)  # the first bad one, in order

    # -- address spaces -----------------------------------------------------

    def create(self, asid: int, owner: int) -> None:
        if asid == KERNEL_ASID or asid in self.pmaps:
            raise UserError(Errno.EINVAL, f"asid {asid} exists or is the kernel's")
        self.pmaps[asid] = Pmap(asid, owner)

    def destroy(self, asid: int) -> int:
        if asid == KERNEL_ASID:
            raise UserError(Errno.EINVAL, "cannot destroy the kernel pmap")
        pm = self._pmap(asid)
        n = self._remove_vpns(pm, list(pm.ptes))
        del self.pmaps[asid]
        return n

    def owner_of(self, asid: int) -> int | None:
        pm = self.pmaps.get(asid)
        return None if pm is None or asid == KERNEL_ASID else pm.owner

    # -- pmap(9) ------------------------------------------------------------

    def enter(self, asid: int, va: int, pfn: int, prot: int, flags: int) -> None:
        """pmap_enter: create or replace the managed mapping va -> pfn (prot: VM_PROT
        bits, flags: EnterFlags bits, plain ints: enum arithmetic is slow here)."""
        pm = self._pmap(asid)
        if asid == KERNEL_ASID:
            raise UserError(Errno.EINVAL, "pmap.enter into the kernel pmap: use kenter")
        self._check_user_range(va, va + PAGE_SIZE)
        self._check_pfn(pfn)
        if not prot:
            raise UserError(Errno.EINVAL, "pmap.enter with VM_PROT_NONE")
        vpn = va >> PAGE_SHIFT
        old = pm.ptes.get(vpn)
        if old is not None:
            self._remove_vpns(pm, [vpn])
        wired = bool(flags & _WIRED)
        pm.ptes[vpn] = Pte(pfn, int(prot), wired, True)
        if flags & _CLEAN:
            self.attrs[pfn] &= ~MODIFIED
        if wired:
            pm.wired_count += 1
        self.pv.setdefault(pfn, set()).add((asid, vpn))
        self.stats.enters += 1

    def _remove_vpns(self, pm: Pmap, vpns: list[int]) -> int:
        n = 0
        for vpn in vpns:
            pte = pm.ptes.pop(vpn, None)
            if pte is None:
                continue
            self.holds.removed(pte.pfn)  # a held frame: the reply waits (hold.py)
            if pm.asid == KERNEL_ASID:
                self._kclear(vpn)
            n += 1
            if pte.wired:
                pm.wired_count -= 1
            if pte.managed:
                s = self.pv.get(pte.pfn)
                kassert(
                    s is not None and (pm.asid, vpn) in s,
                    "pmap_remove: managed mapping %#x of asid %d missing from pv of %d",
                    vpn << PAGE_SHIFT,
                    pm.asid,
                    pte.pfn,
                )
                assert s is not None
                s.discard((pm.asid, vpn))
                if not s:
                    del self.pv[pte.pfn]
        self.stats.removes += n
        return n

    def _vpns_in(self, pm: Pmap, sva: int, eva: int) -> list[int]:
        lo, hi = sva >> PAGE_SHIFT, eva >> PAGE_SHIFT
        if hi - lo <= len(pm.ptes):
            return [v for v in range(lo, hi) if v in pm.ptes]
        return [v for v in pm.ptes if lo <= v < hi]

    def remove(self, asid: int, sva: int, eva: int) -> int:
        pm = self._pmap(asid)
        self._check_user_range(sva, eva)
        return self._remove_vpns(pm, self._vpns_in(pm, sva, eva))

    def protect(self, asid: int, sva: int, eva: int, prot: Prot) -> int:
        """pmap_protect: lower protection in a range; NONE removes."""
        pm = self._pmap(asid)
        self._check_user_range(sva, eva)
        vpns = self._vpns_in(pm, sva, eva)
        if prot == Prot.NONE:
            return self._remove_vpns(pm, vpns)
        mask = int(prot)
        for vpn in vpns:
            pte = pm.ptes[vpn]
            pte.prot &= mask
        self.stats.protects += len(vpns)
        return len(vpns)

    def unwire(self, asid: int, sva: int, eva: int) -> int:
        """pmap_unwire over a range: the mappings stay, no longer wired."""
        pm = self._pmap(asid)
        self._check_user_range(sva, eva)
        n = 0
        for vpn in self._vpns_in(pm, sva, eva):
            pte = pm.ptes[vpn]
            if pte.wired:
                pte.wired = False
                pm.wired_count -= 1
                n += 1
        return n

    def page_protect(self, pfns: list[int], prot: Prot, by: str = "", why: str = "") -> int:
        """pmap_page_protect: lower every managed mapping of each frame.

        => NONE on a wired mapping follows PPP_WIRED (remove / skip / panic).
        => a managed kernel mapping removed here is recorded in krevoked."""
        self._check_pfns(pfns)
        n = 0
        mask = int(prot)
        none = mask == 0  # Prot.NONE (an IntFlag comparison costs ~0.5 us: once, not per pte)
        pv = self.pv
        for pfn in pfns:
            s = pv.get(pfn)
            if not s:
                continue
            for asid, vpn in sorted(s) if len(s) > 1 else tuple(s):
                pm = self.pmaps[asid]
                if none:
                    if pm.ptes[vpn].wired:
                        if self.ppp_wired == "skip":
                            continue
                        kassert(
                            self.ppp_wired != "panic",
                            "pmap_page_protect: wired mapping %#x of page %d (asid %d): %s",
                            vpn << PAGE_SHIFT,
                            pfn,
                            asid,
                            why or by,
                        )
                    if asid == KERNEL_ASID:
                        self.krevoked[vpn] = Revocation(pfn, by or "?", why or "page_protect")
                    n += self._remove_vpns(pm, [vpn])
                else:
                    pte = pm.ptes[vpn]
                    pte.prot &= mask
                    n += 1
        self.stats.page_protects += 1
        return n

    def _check_kernel_range(self, va: int, npages: int) -> None:
        if va & PAGE_MASK:
            raise UserError(Errno.EINVAL, f"kernel va {va:#x} not page aligned")
        if not (KERNEL_MIN <= va and va + npages * PAGE_SIZE <= KERNEL_TOP):
            raise UserError(Errno.EINVAL, f"kernel range at {va:#x} outside kernel space")

    def kenter(self, va: int, pfns: list[int], prot: Prot | int) -> None:
        """pmap_kenter_pa for a chunk: unmanaged, wired, untouched by page_protect
        (managed under KENTER_MODE=managed: a pv entry, revocable)."""
        n = len(pfns)
        self._check_kernel_range(va, n)
        self._check_pfns(pfns)
        kpm = self.pmaps[KERNEL_ASID]
        ptes = kpm.ptes
        base = va >> PAGE_SHIFT
        for vpn in range(base, base + n):
            if vpn in ptes:
                kassert(False, "pmap_kenter_pa: mapping already present at %#x", vpn << PAGE_SHIFT)
        managed, p, krevoked, pv = self.kenter_managed, int(prot), self.krevoked, self.pv
        vpn, kpt = base, self.kpt
        for pfn in pfns:
            ptes[vpn] = Pte(pfn, p, True, managed)
            if kpt is not None:
                kpt.put(vpn, pfn)
            if krevoked:
                krevoked.pop(vpn, None)
            if managed:  # pmap_enter(pmap_kernel(), va, pa, prot, PMAP_WIRED)
                pv.setdefault(pfn, set()).add((KERNEL_ASID, vpn))
            vpn += 1
        kpm.wired_count += n
        self.stats.kenters += n

    def _kclear(self, vpn: int) -> None:
        if self.kpt is not None and self.kpt.clear(vpn):
            self.kpt_hits.add(vpn)  # a reader is inside: the shootdown waits for it

    def kremove(self, va: int, npages: int) -> int:
        self._check_kernel_range(va, npages)
        kpm = self.pmaps[KERNEL_ASID]
        base = va >> PAGE_SHIFT
        n = 0
        ptes, krevoked = kpm.ptes, self.krevoked
        for vpn in range(base, base + npages):
            if krevoked:
                krevoked.pop(vpn, None)
            pte = ptes.get(vpn)
            if pte is None:
                continue
            if pte.managed:
                # A managed-kenter port removes its kernel mappings with pmap_remove;
                # on an unmanaged one a PG_PVLIST mapping here is a caller's bug.
                kassert(
                    self.kenter_managed,
                    "pmap_kremove: PG_PVLIST mapping for va %#x",
                    vpn << PAGE_SHIFT,
                )
                self._remove_vpns(kpm, [vpn])
                self.stats.removes -= 1
            else:
                del ptes[vpn]
                self._kclear(vpn)
                kpm.wired_count -= 1
            n += 1
        self.stats.kremoves += n
        return n

    def kextract(self, va: int, npages: int) -> list[int] | Fault:
        """Translate a kernel range page by page (a NIC's DMA setup). => pfns or the trap."""
        self._check_kernel_range(va, npages)
        ptes = self.pmaps[KERNEL_ASID].ptes
        base = va >> PAGE_SHIFT
        try:
            out = [ptes[vpn].pfn for vpn in range(base, base + npages)]
        except KeyError:  # the trap, at the first page without a translation
            vpn = next(v for v in range(base, base + npages) if v not in ptes)
            self.stats.traps += 1
            rev = self.krevoked.get(vpn)
            reason = "no translation" + (
                f": {rev.describe(vpn << PAGE_SHIFT)}" if rev is not None else ""
            )
            return Fault(vpn << PAGE_SHIFT, Prot.READ, reason)
        self.stats.kloads += 1
        return out

    def extract(self, asid: int, va: int) -> Pte | None:
        pm = self._pmap(asid)
        return pm.ptes.get(va >> PAGE_SHIFT)

    def get_attrs(self, pfns: list[int], clear_ref: bool, clear_mod: bool) -> list[int]:
        for pfn in pfns:
            self._check_pfn(pfn)
        out = [self.attrs[p] for p in pfns]
        mask = ~((REFERENCED if clear_ref else 0) | (MODIFIED if clear_mod else 0)) & 0xFF
        if mask != 0xFF:
            for p in pfns:
                self.attrs[p] &= mask
        return out

    def mappings_of(self, pfn: int) -> list[tuple[int, int, int, bool, bool]]:
        """Every mapping of a frame: managed ones from pv, plus kernel unmanaged ones."""
        self._check_pfn(pfn)
        out = []
        for asid, vpn in sorted(self.pv.get(pfn, ())):
            pte = self.pmaps[asid].ptes[vpn]
            out.append((asid, vpn << PAGE_SHIFT, int(pte.prot), pte.wired, True))
        for vpn, pte in self.pmaps[KERNEL_ASID].ptes.items():
            if pte.pfn == pfn and not pte.managed:
                out.append((KERNEL_ASID, vpn << PAGE_SHIFT, int(pte.prot), True, False))
        return out

    # -- the CPU ------------------------------------------------------------

    def _translate(self, pm: Pmap, va: int, n: int, access: Prot) -> list[Pte] | Fault:
        ptes = []
        acc = int(access)
        first = va >> PAGE_SHIFT
        last = (va + n - 1) >> PAGE_SHIFT
        for vpn in range(first, last + 1):
            pte = pm.ptes.get(vpn)
            fva = max(va, vpn << PAGE_SHIFT)
            if pte is None:
                return Fault(fva, access, "no translation")
            if not pte.prot & acc:
                return Fault(fva, access, "protection")
            ptes.append(pte)
        return ptes

    def _check_access(self, asid: int, va: int, n: int) -> Pmap:
        # An address outside the pmap's range has no translation: a plain fault.
        return self._pmap(asid)

    def load(self, asid: int, va: int, n: int) -> bytes | Fault:
        pm = self._check_access(asid, va, n)
        res = self._translate(pm, va, n, Prot.READ)
        if isinstance(res, Fault):
            self.stats.traps += 1
            return res
        if asid == KERNEL_ASID:
            self.stats.kloads += 1
        else:
            self.stats.loads += 1
        view = self.ram.view
        out = bytearray()
        pos = va
        end = va + n
        for pte in res:
            off = pos & PAGE_MASK
            take = min(PAGE_SIZE - off, end - pos)
            base = (pte.pfn << PAGE_SHIFT) + off
            out += view[base : base + take]
            if pte.managed:
                self.attrs[pte.pfn] |= REFERENCED
            pos += take
        return bytes(out)

    def store(self, asid: int, va: int, data: bytes) -> Fault | None:
        pm = self._check_access(asid, va, len(data))
        res = self._translate(pm, va, len(data), Prot.WRITE)
        if isinstance(res, Fault):
            self.stats.traps += 1
            return res
        self.stats.stores += 1
        view = self.ram.view
        pos = va
        src = 0
        end = va + len(data)
        for pte in res:
            off = pos & PAGE_MASK
            take = min(PAGE_SIZE - off, end - pos)
            base = (pte.pfn << PAGE_SHIFT) + off
            view[base : base + take] = data[src : src + take]
            if pte.managed:
                self.attrs[pte.pfn] |= REFERENCED | MODIFIED
            pos += take
            src += take
        return None

    # -- audit --------------------------------------------------------------

    def check(self) -> list[str]:
        """Check P1-P3 and K1 (machine.mmu.audit); => the problems found (empty: none)."""
        from machine.mmu.audit import check_pmaps

        return check_pmaps(self)

    def resident(self) -> int:
        return sum(len(pm.ptes) for pm in self.pmaps.values())
