"""uvm_object: a memory object with pages of its own, and its pager-ops table (pgops).

Two kinds, each with its pager:
  * VnodeObject / VnodePager: a host file (machine.uvm.vnode), one object per
    file shared by every mapping. get reads the page from the file; put writes
    it back. `writes_back`: dirty pages reach the file on msync, munmap and
    exit of shared mappings, the last close, pageout and shutdown.
  * AObj / AObjPager: anonymous memory shared between processes
    (MAP_ANON|MAP_SHARED): get zero-fills, or reads the page's swap slot;
    put writes to the slot it has or a new one (uao_set_swslot /
    uao_find_swslot / uao_dropswap).

Fields [u]: refs (map entries + open handles), pages (page offset -> pfn); a
VnodeObject's opens (each handle's FREAD/FWRITE access, machine.uvm.vnode) and
sizelock (held while its size changes: machine.uvm.setsize).
Invariants (audit.py):
  O1  every page in `pages` is owned by this object at that offset
      (uobject == id, offset == pgoff, PG_TABLED); refs == users.
  O2  an AObj's slots are allocated on the swap device; swap_only() of every
      object and anon adds up to the device's swpgonly.
  O3  a vnode object holds no page at or beyond its file's end (pgoff >= npages
      of the file's size), except BUSY ones while a truncation takes them away;
      an AObj has no file end.
cf. NetBSD sys/uvm/uvm_object.h, uvm_pager.h (struct uvm_pagerops), uvm_vnode.c,
uvm_aobj.c (concepts only).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from machine.proto import Errno, UserError
from machine.ram import Ram
from machine.uvm.stats import UvmStats
from machine.uvm.swap import SwapDevice
from machine.uvm.vnode import VnodeFile


class PagerEnv(Protocol):
    """What a pager uses of the machine (machine.uvm.state.Uvm is one): RAM, the swap
    device and its accounting, the counters. Declared here so objects sit below the
    state in the import graph."""

    ram: Ram
    swap: SwapDevice | None
    stats: UvmStats

    def swap_in(self, slot: int, pfn: int) -> None: ...

    def swap_only(self, delta: int) -> None: ...

    def swap_free(self, slot: int) -> None: ...


class PagerOps(Protocol):
    """The pgops table: how an object's pages move between RAM and their store."""

    writes_back: bool

    def get(self, uvm: PagerEnv, obj: UvmObject, pgoff: int, pfn: int) -> bool:
        """pgo_get: fill frame pfn with page pgoff. => True if it now equals the store."""
        ...

    def put(self, uvm: PagerEnv, obj: UvmObject, pgoff: int, pfn: int, dirty: bool) -> None:
        """pgo_put: make the store hold the frame's bytes (UserError ENOMEM if no room)."""
        ...

    def released(self, uvm: PagerEnv, obj: UvmObject, pgoff: int) -> None:
        """The page of pgoff left RAM after a put (bookkeeping only)."""
        ...

    def swap_only(self, obj: UvmObject) -> int:
        """How many of the object's pages exist only in swap."""
        ...

    def drop(self, uvm: PagerEnv, obj: UvmObject) -> None:
        """The last reference is gone (its pages are about to be freed): release the store."""
        ...


@dataclass(eq=False)
class UvmObject:
    id: int
    refs: int = 1
    pages: dict[int, int] = field(default_factory=dict)
    pgops: ClassVar[PagerOps]

    @property
    def npages(self) -> int:
        raise NotImplementedError


class VnodePager:
    writes_back = True

    def get(self, uvm: PagerEnv, obj: UvmObject, pgoff: int, pfn: int) -> bool:
        assert isinstance(obj, VnodeObject)
        assert obj.file is not None
        obj.file.get(pgoff, uvm.ram, pfn)
        uvm.stats.fltget += 1
        return True

    def put(self, uvm: PagerEnv, obj: UvmObject, pgoff: int, pfn: int, dirty: bool) -> None:
        assert isinstance(obj, VnodeObject)
        assert obj.file is not None
        if dirty:
            obj.file.put(pgoff, uvm.ram, pfn)

    def released(self, uvm: PagerEnv, obj: UvmObject, pgoff: int) -> None:
        return None

    def swap_only(self, obj: UvmObject) -> int:
        return 0

    def drop(self, uvm: PagerEnv, obj: UvmObject) -> None:
        assert isinstance(obj, VnodeObject)
        assert obj.file is not None
        obj.file.sync()
        obj.file.close()


class AObjPager:
    writes_back = False

    def get(self, uvm: PagerEnv, obj: UvmObject, pgoff: int, pfn: int) -> bool:
        assert isinstance(obj, AObj)
        slot = obj.swslots.get(pgoff, 0)
        if not slot:
            uvm.ram.zero(pfn)
            uvm.stats.zeropages += 1
            return False
        uvm.swap_in(slot, pfn)
        return True

    def put(self, uvm: PagerEnv, obj: UvmObject, pgoff: int, pfn: int, dirty: bool) -> None:
        assert isinstance(obj, AObj)
        if uvm.swap is None:
            raise UserError(Errno.ENOMEM, "no swap device")
        slot = obj.swslots.get(pgoff, 0)
        if not slot:
            slot = uvm.swap.alloc(1)
            if not slot:
                raise UserError(Errno.ENOMEM, "swap is full")
            obj.swslots[pgoff] = slot
            dirty = True
        if dirty:
            uvm.swap.put(slot, uvm.ram, [pfn])

    def released(self, uvm: PagerEnv, obj: UvmObject, pgoff: int) -> None:
        uvm.swap_only(+1)

    def swap_only(self, obj: UvmObject) -> int:
        assert isinstance(obj, AObj)
        return sum(1 for pg in obj.swslots if pg not in obj.pages)

    def drop(self, uvm: PagerEnv, obj: UvmObject) -> None:
        assert isinstance(obj, AObj)
        uvm.swap_only(-self.swap_only(obj))
        for slot in obj.swslots.values():
            uvm.swap_free(slot)
        obj.swslots.clear()


@dataclass(eq=False)
class VnodeObject(UvmObject):
    file: VnodeFile | None = None
    name: str = ""
    #: (session, handle) -> the open's access (FREAD | FWRITE): mmap's maximum
    #: protection and ftruncate ask it
    opens: dict[tuple[int, int], int] = field(default_factory=dict)
    #: held while the size changes (uvm_vnp_setsize): one truncation at a time
    sizelock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pgops: ClassVar[PagerOps] = VnodePager()

    @property
    def npages(self) -> int:
        assert self.file is not None
        return self.file.npages


@dataclass(eq=False)
class AObj(UvmObject):
    size_pages: int = 0
    swslots: dict[int, int] = field(default_factory=dict)
    pgops: ClassVar[PagerOps] = AObjPager()

    @property
    def npages(self) -> int:
        return self.size_pages
