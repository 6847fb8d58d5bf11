"""The pmap interface as uvm sees it: async calls that the service sends to the mmu.

uvm never imports the mmu's core; the service passes an object with these
coroutines (a RemotePmap over the kernel bus, or a test double over an
in-process Mmu). Batched where NetBSD loops: page_protect and attrs take
lists of frames, so one message serves a whole range.
"""

from __future__ import annotations

from typing import Protocol


class PmapOps(Protocol):
    async def create(self, asid: int, owner: int) -> None: ...

    async def destroy(self, asid: int) -> int: ...

    async def enter(self, asid: int, va: int, pfn: int, prot: int, flags: int) -> None: ...

    async def remove(self, asid: int, sva: int, eva: int) -> int: ...

    async def protect(self, asid: int, sva: int, eva: int, prot: int) -> int: ...

    async def page_protect(self, pfns: list[int], prot: int, why: str = "") -> int: ...

    async def kenter(self, va: int, pfns: list[int], prot: int) -> None: ...

    async def kenter_chunks(self, chunks: list[tuple[int, list[int]]], prot: int) -> None:
        """kenter of several (va, pfns) chunks, all or nothing (a whole-send loan's)."""
        ...

    async def kremove_ranges(self, ranges: list[tuple[int, int]]) -> int:
        """kremove of several (va, npages) ranges (a failed whole-send loan's undo)."""
        ...

    async def unwire(self, asid: int, sva: int, eva: int) -> int: ...

    async def attrs(self, pfns: list[int], clear_ref: bool, clear_mod: bool) -> list[int]:
        """R/M bits per frame (machine.proto.pageinfo REFERENCED | MODIFIED), before clearing."""
        ...

    async def check(self) -> list[str]:
        """The pmap's own consistency problems (pv lists vs page tables)."""
        ...

    async def mappings(self, asid: int) -> list[tuple[int, int, int, bool]]:
        """Every mapping of an address space as (va, pfn, prot, wired)."""
        ...
