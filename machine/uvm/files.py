"""Files (uvm_vnode.c, vfs): open and close of host files under disk/, open modes,
ftruncate, msync, and the last reference of an object.

  open(owner, name, create, size, flags)   one vnode object per host file, whatever
      the spelling of its name ((st_dev, st_ino)); handles are per session, each
      with its access mode (FREAD/FWRITE, in the vnode's `opens`). vn_open adds
      O_TRUNC, through the same path as ftruncate (machine.uvm.setsize).
  file_maxprot(owner, handle, prot, shared) mmap's maximum protection from the
      handle's mode, as NetBSD's vn_mmap: READ if open for reading (else asking
      PROT_READ is EACCES); a shared mapping gets WRITE only if open for writing
      (else asking PROT_WRITE is EACCES); a private one always (it never writes
      the file); EXECUTE always. mprotect never raises beyond it (EACCES).
  ftruncate(owner, handle, length)         uvm_vnp_setsize (machine.uvm.setsize).
  msync(asid, owner, va, length, flags)    uvm_map_clean: see msync's doc.
  obj_unref(obj)                    the last reference writes back the object's
      dirty pages (a vnode's) and frees its pages and its store.
Limits (machine.limits): files (open beyond them -> EMFILE), filesize (a size
beyond it -> EFBIG, at open and ftruncate; an existing larger file may still be
opened at its size).
cf. NetBSD sys/uvm/uvm_vnode.c, uvm_mmap.c, uvm_map.c (uvm_map_clean),
kern/vfs_vnops.c (vn_open, vn_mmap), kern/sys_generic.c (concepts only).
"""

from __future__ import annotations

from machine.kassert import kassert
from machine.params import PAGE_MASK, PAGE_SIZE, USER_MIN, USER_TOP, round_page
from machine.proto import (
    MS_ASYNC,
    MS_INVALIDATE,
    MS_SYNC,
    O_CREAT,
    O_EXCL,
    O_RDWR,
    O_TRUNC,
    OPEN_FLAGS,
    Errno,
    UserError,
)
from machine.proto.types import Prot
from machine.uvm.map import MapEntry
from machine.uvm.object import UvmObject, VnodeObject
from machine.uvm.page import NIL, PQ, PageFlag
from machine.uvm.pager import busy_and_revoke, flush_object, free_tabled
from machine.uvm.setsize import setsize
from machine.uvm.state import Uvm, VmSpace
from machine.uvm.vnode import (
    FREAD,
    FWRITE,
    MAX_FILE_BYTES,
    VnodeError,
    VnodeFile,
    check_size,
    fflags,
    lookup,
    release,
)

MS_FLAGS = MS_ASYNC | MS_SYNC | MS_INVALIDATE


def open(
    uvm: Uvm, owner: int, name: str, create: bool, size: int | None, flags: int = O_RDWR
) -> tuple[int, int]:
    """Open (or create) a file under disk/. => (handle, size in bytes).

    => UserError EINVAL for flags outside O_ACCMODE|O_CREAT|O_TRUNC|O_EXCL, for the
       access mode O_ACCMODE (neither reading nor writing: NetBSD's FFLAGS), and for
       a size on a handle not open for writing, before anything else; then EMFILE
       beyond limits.files, EFBIG for a size beyond limits.filesize, before anything
       is made; an errno for every name and every host failure (machine.uvm.vnode:
       no symbolic link is followed); EEXIST for O_CREAT|O_EXCL of an existing file.
       One vnode object per host file, whatever the spelling of its name.
    => create is O_CREAT. O_TRUNC needs vn_open (the truncation awaits the mmu);
       here it is a caller's bug. disk/ is shared by every session (one user's
       file system): any session may open any name; handles are per session."""
    access = _access(flags, size)
    kassert(not flags & O_TRUNC, "files.open: O_TRUNC is vn_open's (it awaits)")
    if uvm.nfiles[owner] >= uvm.limits.files:
        raise UserError(Errno.EMFILE, f"the session holds its limit of {uvm.limits.files} files")
    if uvm.disk is None:
        raise UserError(Errno.ENOSYS, "this machine has no disk")
    create = create or bool(flags & O_CREAT)
    try:
        check_size(size, uvm.limits.filesize)  # before anything is made
        fd, key = lookup(uvm.disk, name, create, bool(flags & O_EXCL))
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
    obj.opens[(owner, handle)] = access
    uvm.nfiles[owner] += 1
    assert obj.file is not None
    return handle, obj.file.size


def _access(flags: int, size: int | None) -> int:
    """The FREAD/FWRITE access of open's flags. => UserError EINVAL (see open)."""
    if flags & ~OPEN_FLAGS or flags < 0:
        raise UserError(Errno.EINVAL, f"open flags {flags:#x}: unknown bits")
    access = fflags(flags)
    if not access:
        raise UserError(Errno.EINVAL, "open flags: O_ACCMODE is neither read nor write")
    if size is not None and not access & FWRITE:
        raise UserError(Errno.EINVAL, "a size at open needs the file open for writing")
    return access


async def vn_open(
    uvm: Uvm, owner: int, name: str, create: bool, size: int | None, flags: int = O_RDWR
) -> tuple[int, int]:
    """uvm.open: open, and with O_TRUNC truncate the file to 0 bytes (then grow it to
    `size`, if given) through ftruncate's path: pages of a file mapped elsewhere leave
    every mapping. => (handle, size now). NetBSD's vn_open truncates for O_TRUNC on a
    read-only open too (it asks for write permission, which the machine's user has):
    the handle stays read-only.
    => the errnos of open; a failed truncation closes the handle again."""
    if not flags & O_TRUNC:
        return open(uvm, owner, name, create, size, flags)
    _access(flags & ~O_TRUNC, size)  # EINVAL before anything is made
    handle, _ = open(uvm, owner, name, create, None, flags & ~O_TRUNC)
    obj = uvm.handles[(owner, handle)]
    try:
        check_size(size, uvm.limits.filesize)
        await setsize(uvm, obj, 0)
        if size:
            await setsize(uvm, obj, size)
    except VnodeError as e:
        await close(uvm, owner, handle)
        raise UserError(e.errno, e.detail) from None
    except UserError:
        await close(uvm, owner, handle)
        raise
    assert obj.file is not None
    return handle, obj.file.size


def handle_of(uvm: Uvm, owner: int, handle: int) -> tuple[VnodeObject, int]:
    """The vnode and access of an open handle. => UserError EBADF."""
    obj = uvm.handles.get((owner, handle))
    if obj is None:
        raise UserError(Errno.EBADF, f"no open file with handle {handle}")
    return obj, obj.opens[(owner, handle)]


def file_maxprot(
    uvm: Uvm, owner: int, handle: int, prot: Prot, shared: bool
) -> tuple[VnodeObject, Prot]:
    """vn_mmap's checks: (the vnode, the mapping's maximum protection); see the module
    doc. => UserError EBADF (no such handle), EACCES (prot beyond what the mode allows)."""
    obj, access = handle_of(uvm, owner, handle)
    maxprot = Prot.EXECUTE
    if access & FREAD:
        maxprot |= Prot.READ
    elif prot & Prot.READ:
        raise UserError(Errno.EACCES, f"handle {handle} is not open for reading")
    if not shared or access & FWRITE:
        maxprot |= Prot.WRITE
    elif prot & Prot.WRITE:
        raise UserError(
            Errno.EACCES, f"a shared writable mapping of handle {handle}, not open for writing"
        )
    return obj, maxprot


async def close(uvm: Uvm, owner: int, handle: int) -> None:
    obj = uvm.handles.pop((owner, handle), None)
    if obj is None:
        raise UserError(Errno.EBADF, f"no open file with handle {handle}")
    del obj.opens[(owner, handle)]
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
    """ftruncate(2): the file is `length` bytes (machine.uvm.setsize).

    => UserError EBADF (no such handle), EINVAL (not open for writing, NetBSD's
       sys_ftruncate; a negative length), EFBIG (beyond limits.filesize, as
       RLIMIT_FSIZE), each with nothing changed; EIO (the host refused: nothing
       changed); ENOMEM (a loaned last page could not be copied: see setsize)."""
    obj, access = handle_of(uvm, owner, handle)
    if not access & FWRITE:
        raise UserError(Errno.EINVAL, f"ftruncate: handle {handle} is not open for writing")
    if length < 0:
        raise UserError(Errno.EINVAL, f"ftruncate: length {length} out of range")
    limit = min(uvm.limits.filesize, MAX_FILE_BYTES)
    if length > limit:
        raise UserError(Errno.EFBIG, f"ftruncate to {length} bytes: over the limit of {limit}")
    await setsize(uvm, obj, length)


async def msync(uvm: Uvm, asid: int, owner: int, va: int, length: int, flags: int = MS_SYNC) -> int:
    """msync(2) as sys___msync13 and uvm_map_clean(PGO_CLEANIT [|PGO_FREE] [|PGO_SYNCIO]).
    => pages written (MS_SYNC) or written without waiting for the disk (MS_ASYNC: no
    fsync of the host file).

    => flags: one of MS_ASYNC, MS_SYNC (MS_INVALIDATE alone means MS_SYNC too); else
       EINVAL (none of the three, unknown bits, both MS_ASYNC and MS_SYNC).
    => the range: va rounded down to its page, the length up (a length 0 with an
       aligned va means the whole entry at va: EINVAL if none); EINVAL outside user
       space; EFAULT when part of it is unmapped (NetBSD's source and its ATF test
       t_msync; the manual page says ENOMEM); with MS_INVALIDATE, EBUSY when an entry
       of the range is wired (mlock). Each refusal changes nothing.
    => every entry with a vnode object, shared or private (uvm_map_clean cleans the
       object under a private mapping too): its dirty resident pages in the range are
       written to the file. MS_INVALIDATE then frees the object's pages of the range
       (revoked from every mapping first, so no store is lost; a BUSY one waited for;
       a loaned one only disowned; one another process wired is kept) so that later
       faults read the file again, and deactivates the anon pages of the range (a
       private copy is the process's own and is never dropped; loaned, wired and
       BUSY ones are skipped), as uvm_map_clean does."""
    if (
        flags & ~MS_FLAGS
        or not flags & MS_FLAGS
        or flags & (MS_ASYNC | MS_SYNC) == MS_ASYNC | MS_SYNC
    ):
        raise UserError(Errno.EINVAL, f"msync flags {flags:#x}")
    sync = not flags & MS_ASYNC
    sp = uvm.space(asid, owner)
    pageoff = va & PAGE_MASK
    va -= pageoff
    size = round_page(length + pageoff)
    if va < USER_MIN or va + size > USER_TOP:
        raise UserError(Errno.EINVAL, f"msync range at {va:#x} outside user space")
    async with sp.lock:
        if size == 0:  # "the region containing addr": the entry at va
            e = sp.map.lookup(va)
            if e is None:
                raise UserError(Errno.EINVAL, f"msync: no mapping at {va:#x}")
            va, size = e.start, e.end - e.start
        eva = va + size
        if not sp.map.covers(va, eva):
            raise UserError(Errno.EFAULT, f"msync range at {va:#x} is not fully mapped")
        entries = sp.map.in_range(va, eva)
        if flags & MS_INVALIDATE and any(e.wired_count for e in entries):
            raise UserError(Errno.EBUSY, f"msync(MS_INVALIDATE) of a wired range at {va:#x}")
        n = 0
        for e in entries:
            lo, hi = max(va, e.start), min(eva, e.end)
            if flags & MS_INVALIDATE:
                _deactivate_anons(uvm, e, lo, hi)
            if isinstance(e.obj, VnodeObject):
                if flags & MS_INVALIDATE:
                    n += await _invalidate(uvm, sp, e.obj, e.pgoff(lo), e.pgoff(hi), sync)
                else:
                    n += await flush_object(uvm, e.obj, e.pgoff(lo), e.pgoff(hi), sync=sync)
        return n


def _deactivate_anons(uvm: Uvm, e: MapEntry, lo: int, hi: int) -> None:
    """uvm_map_clean's amap pass (PGO_CLEANIT|PGO_FREE): deactivate, never free."""
    if e.amap is None:
        return
    pages = uvm.pages
    first, last = e.slot(lo), e.slot(hi)
    for slot, anon in e.amap.used():
        pfn = anon.page
        if not first <= slot < last or pfn == NIL:
            continue
        if pages.flags[pfn] & PageFlag.BUSY or pages.loan_count[pfn] or pages.wire_count[pfn]:
            continue
        if pages.pqflags[pfn] == PQ.ACTIVE:
            pages.deactivate(pfn)


async def _invalidate(uvm: Uvm, sp: VmSpace, obj: VnodeObject, lo: int, hi: int, sync: bool) -> int:
    """pgo_put(PGO_CLEANIT|PGO_FREE) of obj's pages [lo, hi): revoke, write, free.
    => pages written."""
    pages = uvm.pages
    while True:
        todo = sorted(
            (pg, pfn)
            for pg, pfn in obj.pages.items()
            if lo <= pg < hi and not pages.wire_count[pfn]
        )
        busy = [pfn for _, pfn in todo if pages.flags[pfn] & PageFlag.BUSY]
        if not busy:
            break
        await uvm.wait_busy(busy[0])
    if not todo:
        return 0
    pfns = [pfn for _, pfn in todo]
    await busy_and_revoke(uvm, pfns, f"msync(MS_INVALIDATE) by asid {sp.asid}")
    try:
        n = await flush_object(uvm, obj, lo, hi, sync=sync)  # the modified bits, now final
    except BaseException:
        for pfn in pfns:
            uvm.unbusy(pfn)
        raise
    free_tabled(uvm, obj, todo)
    uvm.stats.msyncinval += len(todo)
    return n
