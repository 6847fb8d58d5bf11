"""uvm.*: the VM calls of a NetBSD program beside mmap, munmap, mprotect and fork:
files (open, close, ftruncate, msync), wiring (mlock, munlock, mlockall, munlockall,
the RLIMIT_MEMLOCK limit) and advice (minherit, madvise, mincore).

The specification is NetBSD's: the manual pages of each call and sys/uvm/uvm_mmap.c,
uvm_map.c and uvm_vnode.c for what they do inside; where NetBSD and POSIX differ,
NetBSD wins. Flag and advice values are NetBSD's <sys/mman.h>, <fcntl.h> and
<sys/resource.h> numbers, so a ported program passes its own constants. The errno
table, call by call, is in docs/protocol.md ("Errnos of the VM calls").
Every address range is rounded as NetBSD rounds it: va down to its page, the
length up to cover the last byte (mlock, munlock, msync, madvise, minherit),
so an unaligned va is no error; a range that wraps or leaves user space is.
mincore is the exception, as NetBSD's sys_mincore: an unaligned va is EINVAL.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from machine.proto.base import Reply, Request, Scope
from machine.proto.types import U64, Asid, Length, Va

# -- constants (NetBSD's values) -------------------------------------------------------

#: open(2) flags (<fcntl.h>): the access mode is flags & O_ACCMODE.
O_RDONLY, O_WRONLY, O_RDWR, O_ACCMODE = 0, 1, 2, 3
O_CREAT, O_TRUNC, O_EXCL = 0x200, 0x400, 0x800
OPEN_FLAGS = O_ACCMODE | O_CREAT | O_TRUNC | O_EXCL
#: msync(2) flags.
MS_ASYNC, MS_INVALIDATE, MS_SYNC = 0x1, 0x2, 0x4
#: madvise(2) advice.
MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED = 0, 1, 2, 3
MADV_DONTNEED, MADV_SPACEAVAIL, MADV_FREE = 4, 5, 6
#: minherit(2) inheritance.
MAP_INHERIT_SHARE, MAP_INHERIT_COPY, MAP_INHERIT_NONE = 0, 1, 2
MAP_INHERIT_DONATE_COPY, MAP_INHERIT_ZERO = 3, 4
#: mlockall(2) flags.
MCL_CURRENT, MCL_FUTURE = 0x1, 0x2
#: getrlimit(2) resources served (the others are the machine's Limits, machine.limits).
RLIMIT_MEMLOCK = 6
RLIM_INFINITY = (1 << 63) - 1
#: mincore(2): the most pages one call may ask about (its reply holds a byte each).
MINCORE_MAX_PAGES = 1 << 20

Small = Annotated[int, msgspec.Meta(ge=0, le=(1 << 31) - 1)]
Handle = Annotated[int, msgspec.Meta(ge=0, le=(1 << 31) - 1)]


# -- files -------------------------------------------------------------------------------


class UvmOpen(Request, frozen=True, kw_only=True, tag="uvm.open"):
    """open(2) of a file under the machine's disk/ directory (for mmap with its handle).

    => name: a relative path inside disk/ naming a regular file (no '..', not
       absolute, no NUL, components <= 255 bytes, path < 1024 bytes, at most
       16 components); no symbolic link on the way or at the end is followed.
       disk/ is shared by every session; handles are per session.
    => flags (1.6): O_RDONLY, O_WRONLY or O_RDWR, with O_CREAT, O_TRUNC, O_EXCL.
       The access mode is the maximum protection of the file's mappings, as
       NetBSD's vn_mmap gives it: READ only if open for reading (mapping with
       PROT_READ a write-only file is EACCES); a shared mapping WRITE only if open
       for writing (a shared writable mapping of a read-only file is EACCES); a
       private one always WRITE (it never writes the file). ftruncate needs
       writing. O_TRUNC empties the file (then grows it to `size`, if given) by
       ftruncate's path, so pages mapped elsewhere leave their mappings; as in
       NetBSD's vn_open it truncates a read-only open too (the handle stays
       read-only). O_EXCL without O_CREAT is ignored.
    => create: as O_CREAT (make it, mode 0600, and missing directories on the
       way, 0700, if missing); size >= 0: at least this many bytes (a file open
       for writing).
    Reply: UvmOpenReply with the handle and the file's size.
    Errnos: EINVAL (bad name or a negative size; flags with other bits, or the
    access mode O_ACCMODE; a size on a handle not open for writing), EFBIG (a
    size beyond the filesize limit), ENOENT (missing and not create), EEXIST
    (O_CREAT|O_EXCL and it exists), EISDIR (a directory), ENOTDIR (a file on
    the way), ENAMETOOLONG, ELOOP (a symbolic link), EACCES (not a regular
    file, or the host refused), EIO (the host file system failed), EMFILE.
    """

    scope: ClassVar[Scope] = Scope.USER
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    create: bool = False
    size: Annotated[int, msgspec.Meta(ge=-1, le=1 << 40)] = -1
    flags: Small = O_RDWR


class UvmOpenReply(Reply, frozen=True, kw_only=True, tag="uvm.open.reply"):
    handle: int = 0
    size: int = 0


class UvmClose(Request, frozen=True, kw_only=True, tag="uvm.close"):
    """Close a file handle (mappings made with it stay valid). Errnos: EBADF."""

    scope: ClassVar[Scope] = Scope.USER
    handle: Handle


class UvmFtruncate(Request, frozen=True, kw_only=True, tag="uvm.ftruncate"):
    """ftruncate(2): set the size of an open file to `length` bytes. (1.6)

    => shrinking removes the pages wholly beyond the new end from the object and
       from every mapping of it (uvm_vnp_setsize: the revocation path; a page the
       kernel still borrows leaves the object and lives on as its loan's; a wired
       page is freed too, as NetBSD's genfs_do_putpages does); the last partial
       page reads zeros past the end, which never reach the file (a loaned one is
       copied first, so the loan keeps its bytes); an access beyond the end
       raises SIGBUS; private copies already made stay. Growing reads zeros.
    Errnos: EBADF (no such handle), EINVAL (not open for writing, NetBSD's
    sys_ftruncate), EFBIG (beyond the filesize limit), EIO (the host refused),
    ENOMEM (a loaned last page could not be copied).
    """

    scope: ClassVar[Scope] = Scope.USER
    handle: Handle
    length: Annotated[int, msgspec.Meta(ge=0, le=1 << 62)]


class UvmMsync(Request, frozen=True, kw_only=True, tag="uvm.msync"):
    """msync(2): write the dirty pages of shared file mappings in the range to the file.

    => flags (1.6): MS_SYNC (written and the host file fsync'd when the reply
       comes), or MS_ASYNC (written, not waited for: no fsync), optionally with
       MS_INVALIDATE (alone it means MS_SYNC too): afterwards the file pages of
       the range are dropped from every mapping and from memory (revoked first,
       so no store is lost; pages another process wired stay), so later faults
       read the file again; anonymous pages of the range (private copies) are
       only deactivated, never dropped (uvm_map_clean).
    => every file mapping of the range is cleaned, private ones too (their file's
       dirty pages, written through shared mappings elsewhere).
    Reply: UvmMsyncReply with the number of pages written.
    Errnos: EINVAL (bad flags: none of the three, unknown bits, or both
    MS_ASYNC and MS_SYNC; the range outside user space), EFAULT (part of the
    range is not mapped: NetBSD's uvm_map_clean and its ATF test t_msync; the
    manual page says ENOMEM), EBUSY (MS_INVALIDATE of a range holding a wired
    (mlocked) entry).
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    va: Va
    length: Length
    flags: Small = MS_SYNC


class UvmMsyncReply(Reply, frozen=True, kw_only=True, tag="uvm.msync.reply"):
    pages: int = 0


# -- wiring --------------------------------------------------------------------------------


class UvmWire(Request, frozen=True, kw_only=True, tag="uvm.wire"):
    """mlock(2): fault in and wire every page of the range (uvm_map_pageable).

    => a wired page never leaves RAM; wiring copies now whatever is copy-on-write
       where the mapping's maximum protection allows a write (a private mapping,
       read-only or not). Locks do not nest: one munlock unlocks the range however
       often it was locked (1.6). Charged to the process's RLIMIT_MEMLOCK.
    Errnos: EAGAIN (the whole rounded range, plus what the process has wired, beyond
    its RLIMIT_MEMLOCK, or plus every page wired beyond the machine's wiredmax, a
    third of RAM: sys_mlock's checks, made first), ENOMEM (part of the range is not
    mapped or is PROT_NONE; the range leaves user space or wraps, NULL's page
    included, as NetBSD's t_mlock requires; or a page cannot be had: nothing is left
    wired).
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    va: Va
    length: Length


class UvmUnwire(Request, frozen=True, kw_only=True, tag="uvm.unwire"):
    """munlock(2): unlock the range; its pages go back on the paging queues.

    Errnos: ENOMEM (part of the range is not mapped or not locked, or the range
    leaves user space or wraps: NetBSD's sys_munlock answers every failure ENOMEM).
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    va: Va
    length: Length


class UvmMlockall(Request, frozen=True, kw_only=True, tag="uvm.mlockall"):
    """mlockall(2): MCL_CURRENT wires every mapping the process has now but PROT_NONE
    ones; MCL_FUTURE wires every mapping it makes later, as it is made (an mmap that
    cannot be wired is not made and answers ENOMEM, as uvm_mmap does), and one that
    mprotect makes accessible. Not inherited by a fork's child. (1.6)

    Errnos: EINVAL (flags 0 or unknown bits), ENOMEM (the mappings not wired yet
    beyond RLIMIT_MEMLOCK or the machine's wiredmax, checked before anything is
    wired, or a page cannot be had: nothing is left wired).
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    flags: Small


class UvmMunlockall(Request, frozen=True, kw_only=True, tag="uvm.munlockall"):
    """munlockall(2): unlock every mapping and cancel MCL_FUTURE; never fails. (1.6)"""

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid


class UvmGetrlimit(Request, frozen=True, kw_only=True, tag="uvm.getrlimit"):
    """getrlimit(2) of a process: RLIMIT_MEMLOCK, the bytes it may wire. (1.6)

    => the limits are per process and inherited by a fork's child; the default
       is NetBSD's: the soft limit a third of RAM, the hard limit all of it.
    Reply: UvmRlimitReply, in bytes. Errnos: EINVAL (another resource).
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    resource: Small


class UvmSetrlimit(Request, frozen=True, kw_only=True, tag="uvm.setrlimit"):
    """setrlimit(2) of a process: RLIMIT_MEMLOCK. (1.6)

    => cur <= max; max may only be lowered (a client is never root). Lowering the
       limit below what is wired now unwires nothing (later wiring gets EAGAIN).
    Reply: UvmRlimitReply with the limits now. Errnos: EINVAL (another resource,
    or cur > max), EPERM (raising max).
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    resource: Small
    cur: U64
    max: U64


class UvmRlimitReply(Reply, frozen=True, kw_only=True, tag="uvm.rlimit.reply"):
    cur: int = 0
    max: int = 0


# -- advice ----------------------------------------------------------------------------------


class UvmMinherit(Request, frozen=True, kw_only=True, tag="uvm.minherit"):
    """minherit(2): what fork does with the mappings of the range. (1.6)

    => MAP_INHERIT_SHARE (the child shares the memory: the default for shared
       mappings; for a private one parent and child share its private pages, each
       seeing the other's stores, and the file is never written), MAP_INHERIT_COPY
       (a copy-on-write copy: the default for private mappings; of a shared
       mapping, a private copy-on-write mapping of the same file or memory),
       MAP_INHERIT_NONE (the child has nothing there), MAP_INHERIT_ZERO (the child
       gets fresh zero-filled anonymous memory there). Unmapped parts of the range
       are skipped, as NetBSD's uvm_map_inherit does.
    Errnos: EINVAL (another value, MAP_INHERIT_DONATE_COPY included, or the range
    wraps or leaves user space), ENOMEM (a split beyond map_entries or maxentries).
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    va: Va
    length: Length
    inherit: Small


class UvmMadvise(Request, frozen=True, kw_only=True, tag="uvm.madvise"):
    """madvise(2) on the range. (1.6)

    => MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL: the fault-ahead window of the
       mappings (uvmadvice: 3 pages behind and 4 ahead, none, and for sequential
       7 ahead while the 8 behind are deactivated); MADV_WILLNEED: read the
       range's file pages and swapped-out pages in, mapping none, as long as
       memory is free; MADV_DONTNEED: deactivate the range's pages (the page
       daemon takes them first; dirty file pages are written first); MADV_FREE:
       the resident private anonymous pages of the range are freed, with their
       swap (the next read is zero-fill, or the file under a private file
       mapping; pages only in swap may keep their bytes, as NetBSD leaves them),
       clean file pages are freed too, memory shared with another process is
       only deactivated. Busy, wired and loaned pages are left alone. Unmapped
       parts are skipped by NORMAL, RANDOM, SEQUENTIAL and WILLNEED.
    Errnos: EINVAL (another value, MADV_SPACEAVAIL, or the range wraps or leaves
    user space), EFAULT (MADV_DONTNEED or MADV_FREE: part of the range is not
    mapped; NetBSD's uvm_map_clean), EBUSY (MADV_FREE of wired memory), ENOMEM
    (a split beyond map_entries or maxentries).
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    va: Va
    length: Length
    advice: Small


class UvmMincore(Request, frozen=True, kw_only=True, tag="uvm.mincore"):
    """mincore(2): which pages of the range are resident. (1.6)

    Reply: UvmMincoreReply, `vec` one byte per page: 1 resident, 0 not (a page
    is resident when its anon has a page, else when the file's or shared memory's
    page is, as NetBSD's sys_mincore counts).
    Errnos: EINVAL (va not page aligned, the range wraps, or more than
    MINCORE_MAX_PAGES pages), ENOMEM (part of the range is not mapped, or lies
    outside user space).
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    va: Va
    length: Length


class UvmMincoreReply(Reply, frozen=True, kw_only=True, tag="uvm.mincore.reply"):
    vec: bytes = b""
