"""PmapOps over an in-process Mmu: the uvm core's tests without any transport."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from machine.mmu.pmap import Mmu
from machine.params import PAGE_SIZE
from machine.profile import Settings, load_profile
from machine.proto.types import EnterFlags, Prot
from machine.ram import Ram
from machine.tuning import targets
from machine.uvm.state import Uvm
from machine.uvm.swap import SwapDevice


class LocalPmap:
    def __init__(self, mmu: Mmu) -> None:
        self.mmu = mmu
        self.calls = 0

    async def create(self, asid: int, owner: int) -> None:
        self.mmu.create(asid, owner)

    async def destroy(self, asid: int) -> int:
        return self.mmu.destroy(asid)

    async def enter(self, asid: int, va: int, pfn: int, prot: int, flags: int) -> None:
        self.calls += 1
        self.mmu.enter(asid, va, pfn, Prot(prot), EnterFlags(flags))

    async def remove(self, asid: int, sva: int, eva: int) -> int:
        return self.mmu.remove(asid, sva, eva)

    async def protect(self, asid: int, sva: int, eva: int, prot: int) -> int:
        return self.mmu.protect(asid, sva, eva, Prot(prot))

    async def page_protect(self, pfns: list[int], prot: int, why: str = "") -> int:
        return self.mmu.page_protect(pfns, Prot(prot), "uvm", why)

    async def kenter(self, va: int, pfns: list[int], prot: int) -> None:
        self.mmu.kenter(va, pfns, Prot(prot))

    async def kenter_chunks(self, chunks: list[tuple[int, list[int]]], prot: int) -> None:
        for va, pfns in chunks:
            self.mmu._check_kernel_range(va, len(pfns))
        for va, pfns in chunks:
            self.mmu.kenter(va, pfns, Prot(prot))

    async def kremove_ranges(self, ranges: list[tuple[int, int]]) -> int:
        return sum(self.mmu.kremove(va, n) for va, n in ranges)

    async def unwire(self, asid: int, sva: int, eva: int) -> int:
        return self.mmu.unwire(asid, sva, eva)

    async def attrs(self, pfns: list[int], clear_ref: bool, clear_mod: bool) -> list[int]:
        return self.mmu.get_attrs(pfns, clear_ref, clear_mod)

    async def check(self) -> list[str]:
        return self.mmu.check()

    async def mappings(self, asid: int) -> list[tuple[int, int, int, bool]]:
        return [
            (v << 12, p.pfn, int(p.prot), p.wired)
            for v, p in sorted(self.mmu.pmaps[asid].ptes.items())
        ]


def settings_of(knobs: dict[str, Any] | None = None) -> Settings:
    """Typed settings: some of a profile's knobs over the modern profile's."""
    return Settings.of({**load_profile("modern").knobs, **(knobs or {})})


def make_uvm(
    nframes: int = 64,
    tmp: Path | None = None,
    swap_pages: int = 64,
    events: list[int] | None = None,
    knobs: dict[str, Any] | None = None,
    sessions: Collection[int] | None = None,
) -> tuple[Uvm, Mmu]:
    """An in-process uvm + pmap. knobs: some of a profile's knobs (ERA, KENTER_MODE, ...),
    over the modern profile's; sessions: the attached sessions (fair shares; default:
    none known, every session is live and alone)."""
    settings = settings_of(knobs)
    ram = Ram.anonymous(nframes * PAGE_SIZE)
    mmu = Mmu(ram, settings.kenter_mode, settings.ppp_wired)
    disk = swap = None
    if tmp is not None:
        disk = tmp / "disk"
        disk.mkdir(exist_ok=True)
        swap = SwapDevice(tmp / "swap.img", swap_pages)
    uvm = Uvm(
        ram,
        LocalPmap(mmu),
        disk=disk,
        swap=swap,
        rules=settings.rules,
        targets=targets(settings.pd_policy, ram.nframes),
        on_pressure=events.append if events is not None else None,
        diagnostic=settings.diagnostic,
        sessions=sessions,
    )
    uvm.alloc_wait_s = 0.01  # no page daemon here: give up quickly
    return uvm, mmu
