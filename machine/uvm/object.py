"""uvm_object: a memory object with pages of its own, and its pager (the pgops table).

Two kinds:
  * VnodeObject: a host file (machine.uvm.vnode). Pages read from the file on
    first touch (pgo_get); dirty pages written back by put (msync, munmap,
    exit, pageout, shutdown). One object per file, shared by every mapping.
  * AObj: anonymous memory shared between processes (MAP_ANON|MAP_SHARED):
    zero-filled on first touch, paged out to swap with a slot per page
    (uao_set_swslot / uao_find_swslot / uao_dropswap).

Fields [u]: refs (map entries + open handles), pages (page offset -> pfn).
Invariants (audit.py):
  O1  every page in `pages` is owned by this object at that offset
      (uobject == id, offset == pgoff, PG_TABLED).
  O2  an AObj slot is allocated on the swap device.
cf. NetBSD sys/uvm/uvm_object.h, uvm_vnode.c, uvm_aobj.c (concepts only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from machine.uvm.vnode import VnodeFile


@dataclass(eq=False)
class UvmObject:
    id: int
    refs: int = 1
    pages: dict[int, int] = field(default_factory=dict)

    @property
    def swap_backed(self) -> bool:
        return False

    @property
    def npages(self) -> int:
        raise NotImplementedError


@dataclass(eq=False)
class VnodeObject(UvmObject):
    file: VnodeFile | None = None
    name: str = ""

    @property
    def npages(self) -> int:
        assert self.file is not None
        return self.file.npages


@dataclass(eq=False)
class AObj(UvmObject):
    size_pages: int = 0
    swslots: dict[int, int] = field(default_factory=dict)

    @property
    def swap_backed(self) -> bool:
        return True

    @property
    def npages(self) -> int:
        return self.size_pages
