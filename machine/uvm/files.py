"""Files (uvm_vnode.c, vfs): open and close of host files under disk/, the last
reference of an object, and msync.

  open(owner, name, create, size)   one vnode object per host file, whatever the
      spelling of its name ((st_dev, st_ino)); handles are per session.
  obj_unref(obj)                    the last reference writes back the object's
      dirty pages (a vnode's) and frees its pages and its store.
  msync(asid, owner, va, length)    writes the dirty file pages of the shared
      mappings in the range.
Limits (machine.limits): files (open beyond them -> EMFILE), filesize (a size
beyond it -> EFBIG; an existing larger file may still be opened at its size).
cf. NetBSD sys/uvm/uvm_vnode.c, uvm_mmap.c (concepts only).
"""

from __future__ import annotations

from machine.kassert import kassert
from machine.params import PAGE_SIZE
from machine.proto import O_RDWR, Errno, UserError
from machine.uvm.object import UvmObject, VnodeObject
from machine.uvm.page import PageFlag
from machine.uvm.pager import flush_object
from machine.uvm.state import Uvm
from machine.uvm.vnode import VnodeError, VnodeFile, check_size, lookup, release


def open(
    uvm: Uvm, owner: int, name: str, create: bool, size: int | None, flags: int = O_RDWR
) -> tuple[int, int]:
    """Open (or create) a file under disk/. => (handle, size in bytes).

    => UserError with an errno for every name and every host failure (see
       machine.uvm.vnode: no symbolic link is followed); one vnode object
       per host file, whatever the spelling of its name ((st_dev, st_ino)).
    => EMFILE beyond limits.files, EFBIG for a size beyond limits.filesize,
       both before anything is made. disk/ is shared by every session (one
       user's file system): any session may open any name; handles are
       per session."""
    if uvm.nfiles[owner] >= uvm.limits.files:
        raise UserError(Errno.EMFILE, f"the session holds its limit of {uvm.limits.files} files")
    if uvm.disk is None:
        raise UserError(Errno.ENOSYS, "this machine has no disk")
    try:
        check_size(size, uvm.limits.filesize)  # before anything is made
        fd, key = lookup(uvm.disk, name, create)
        obj = uvm.vnodes.get(key)
        if obj is None:
            f = VnodeFile(fd, key, name, size)
            obj = VnodeObject(uvm.new_object_id(), refs=0, file=f, name=name)
            uvm.vnodes[key] = obj
            uvm.objects[obj.id] = obj
        else:
            release(fd)  # the vnode keeps its own descriptor
            if size is not None and size > obj.npages * PAGE_SIZE:
                raise VnodeError("EINVAL", f"{name!r} is open with a smaller size")
    except VnodeError as e:
        raise UserError(e.errno, e.detail) from None
    obj.refs += 1
    handle = uvm.new_handle()
    uvm.handles[(owner, handle)] = obj
    uvm.nfiles[owner] += 1
    assert obj.file is not None
    return handle, obj.file.size


async def close(uvm: Uvm, owner: int, handle: int) -> None:
    obj = uvm.handles.pop((owner, handle), None)
    if obj is None:
        raise UserError(Errno.EBADF, f"no open file with handle {handle}")
    uvm.nfiles[owner] -= 1
    if not uvm.nfiles[owner]:
        del uvm.nfiles[owner]
    await obj_unref(uvm, obj)


async def close_all(uvm: Uvm, owner: int) -> None:
    for o, h in [k for k in uvm.handles if k[0] == owner]:
        await close(uvm, o, h)


async def obj_unref(uvm: Uvm, obj: UvmObject) -> None:
    """The last reference to an object: write back its dirty pages, free them."""
    obj.refs -= 1
    kassert(obj.refs >= 0, "uvm_obj_unref: object %d refs < 0", obj.id)
    if obj.refs:
        return

    if obj.pgops.writes_back:
        await flush_object(uvm, obj, 0, obj.npages)
    for pfn in list(obj.pages.values()):
        if uvm.pages.flags[pfn] & PageFlag.BUSY:
            await uvm.wait_busy(pfn)
    obj.pgops.drop(uvm, obj)  # before the pages go: it tells resident from swapped
    for pgoff, pfn in sorted(obj.pages.items()):
        uvm.free_page(pfn)
        del obj.pages[pgoff]
    uvm.vnodes = {p: o for p, o in uvm.vnodes.items() if o is not obj}
    del uvm.objects[obj.id]


async def ftruncate(uvm: Uvm, owner: int, handle: int, length: int) -> None:
    """ftruncate(2). => UserError EBADF, EINVAL, EFBIG, EIO."""
    raise UserError(Errno.ENOSYS, "ftruncate: not yet")


async def msync(uvm: Uvm, asid: int, owner: int, va: int, length: int, flags: int = 4) -> int:
    """Write the dirty file pages of shared mappings in the range. => pages written."""

    async with uvm.mapped_range(asid, owner, va, length, "msync") as (sp, eva):
        n = 0
        for e in sp.map.in_range(va, eva):
            if e.obj is not None and e.obj.pgops.writes_back and not e.cow:
                lo, hi = max(va, e.start), min(eva, e.end)
                n += await flush_object(uvm, e.obj, e.pgoff(lo), e.pgoff(hi))
        return n
