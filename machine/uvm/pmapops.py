"""The pmap interface as uvm sees it: async calls that the service sends to the mmu.

uvm never imports the mmu's core; the service passes an object with these
coroutines (a RemotePmap over the kernel bus, or a test double).
"""

from __future__ import annotations

from typing import Protocol


class PmapOps(Protocol):
    async def create(self, asid: int, owner: int) -> None: ...

    async def destroy(self, asid: int) -> int: ...

    async def enter(self, asid: int, va: int, pfn: int, prot: int, flags: int) -> None: ...

    async def remove(self, asid: int, sva: int, eva: int) -> int: ...

    async def mappings(self, asid: int) -> list[tuple[int, int, int, bool]]:
        """Every mapping of an address space as (va, pfn, prot, wired)."""
        ...
