"""Wiring system calls (sys_mlock, sys_munlock, sys_mlockall, sys_munlockall, and
getrlimit/setrlimit of RLIMIT_MEMLOCK), over the core of machine.uvm.pageable.

A wired page never leaves RAM: the page daemon skips it (wire_count > 0) and a wiring
fault resolves copy-on-write at once (section 6 of uvm-semantics). Each call checks its
arguments and limits before it changes anything, and answers NetBSD's errnos:

  mlock(va, len)    the range rounded to pages (va down, the end up: an unaligned va
                    is fine; a range outside user space, NULL's page included, or
                    wrapping -> ENOMEM, as NetBSD's t_mlock requires); more pages than
                    the machine's wiredmax or the process's RLIMIT_MEMLOCK allows ->
                    EAGAIN (the whole range counted, as sys_mlock counts it, even where
                    it is locked already); part of the range unmapped or PROT_NONE ->
                    ENOMEM; a page that cannot be had -> ENOMEM, nothing left wired.
                    Locks do not nest: mlock of a locked range succeeds and changes
                    nothing the next munlock will not undo.
  munlock(va, len)  rounded alike; part of the range unmapped or not locked -> ENOMEM
                    (NetBSD's EINVAL from uvm_map_pageable, answered ENOMEM by its
                    sys_munlock); one munlock unlocks however often it was locked.
  mlockall(flags)   flags 0 or unknown bits -> EINVAL; MCL_CURRENT wires every entry
                    but PROT_NONE ones, beyond wiredmax or RLIMIT_MEMLOCK (counting the
                    entries not wired yet) -> ENOMEM before anything is touched (so a
                    huge sparse mapping is refused up front), a page that cannot be had
                    -> ENOMEM with nothing left wired; MCL_FUTURE wires every later
                    mapping as it is made (machine.uvm.pageable).
  munlockall()      unwires every entry and cancels MCL_FUTURE; never fails.
  getrlimit(RLIMIT_MEMLOCK) -> (cur, max) in bytes; another resource -> EINVAL.
  setrlimit(RLIMIT_MEMLOCK, cur, max): cur > max -> EINVAL; max above the present max
                    -> EPERM (a client is never root); another resource -> EINVAL.
                    Lowering it below what is wired unwires nothing.
Every call on another session's or a dead process: ESRCH.
cf. NetBSD sys/uvm/uvm_mmap.c (sys_mlock, sys_munlock, sys_mlockall, sys_munlockall),
sys/kern/kern_resource.c (dosetrlimit) (concepts only).
"""

from __future__ import annotations

from machine.proto import Errno, UserError
from machine.proto.types import Prot
from machine.proto.vmcalls import MCL_CURRENT, MCL_FUTURE, RLIMIT_MEMLOCK
from machine.uvm.map import MapEntry, page_range
from machine.uvm.mmap import _clip
from machine.uvm.pageable import check_limits, unwire_entry, wire_entries
from machine.uvm.state import Uvm, VmSpace


def _user_range(va: int, length: int, what: str) -> tuple[int, int]:
    """The pages of the range (map.page_range); NetBSD's mlock and munlock answer a
    range outside user space (NULL's page included) or wrapping with ENOMEM."""
    try:
        return page_range(va, length)
    except UserError as e:
        raise UserError(Errno.ENOMEM, f"{what}: {e.detail}") from None


def _space_locked(sp: VmSpace) -> None:
    if sp.dead:
        raise UserError(Errno.ESRCH, f"process {sp.asid} exited")


def _mapped(sp: VmSpace, start: int, end: int, what: str) -> list[MapEntry]:
    """=> the entries over [start, end); UserError ENOMEM when part of it is not mapped."""
    if not sp.map.covers(start, end):
        raise UserError(Errno.ENOMEM, f"{what}: range at {start:#x} is not fully mapped")
    return sp.map.in_range(start, end)


async def mlock(uvm: Uvm, asid: int, owner: int, va: int, length: int) -> None:
    """sys_mlock: fault in and wire every page of the range (see the module doc)."""
    sp = uvm.space(asid, owner)
    start, end = _user_range(va, length, "mlock")
    async with sp.lock:
        _space_locked(sp)
        check_limits(uvm, sp, end - start, Errno.EAGAIN, "mlock")
        if any(e.prot == Prot.NONE for e in _mapped(sp, start, end, "mlock")):
            raise UserError(Errno.ENOMEM, "mlock of a PROT_NONE range")
        await wire_entries(uvm, sp, _clip(uvm, sp, start, end))
        uvm.stats.wirings += 1


async def munlock(uvm: Uvm, asid: int, owner: int, va: int, length: int) -> None:
    """sys_munlock: unlock the range, however often it was locked."""
    sp = uvm.space(asid, owner)
    start, end = _user_range(va, length, "munlock")
    async with sp.lock:
        _space_locked(sp)
        if not all(e.wired_count for e in _mapped(sp, start, end, "munlock")):
            raise UserError(Errno.ENOMEM, f"munlock: range at {start:#x} is not locked")
        for e in _clip(uvm, sp, start, end):
            await unwire_entry(uvm, sp, e)
        sp.map.all_locked = False
        uvm.stats.unwirings += 1


async def mlockall(uvm: Uvm, asid: int, owner: int, flags: int) -> None:
    """sys_mlockall (uvm_map_pageable_all). => UserError EINVAL, ENOMEM (module doc)."""
    if not flags or flags & ~(MCL_CURRENT | MCL_FUTURE):
        raise UserError(Errno.EINVAL, f"mlockall flags {flags:#x}: MCL_CURRENT, MCL_FUTURE")
    sp = uvm.space(asid, owner)
    async with sp.lock:
        _space_locked(sp)
        if flags & MCL_CURRENT:
            todo = [e for e in sp.map.entries if e.prot != Prot.NONE]
            size = sum(e.end - e.start for e in todo if not e.wired_count)
            check_limits(uvm, sp, size, Errno.ENOMEM, "mlockall")
            await wire_entries(uvm, sp, todo)
        if flags & MCL_FUTURE:
            sp.map.wirefuture = True
        m = sp.map
        m.all_locked = m.wirefuture and all(e.wired_count or e.prot == Prot.NONE for e in m.entries)
        uvm.stats.mlockalls += 1


async def munlockall(uvm: Uvm, asid: int, owner: int) -> None:
    """sys_munlockall: unwire every entry, cancel MCL_FUTURE."""
    sp = uvm.space(asid, owner)
    async with sp.lock:
        _space_locked(sp)
        for e in sp.map.entries:
            if e.wired_count:
                await unwire_entry(uvm, sp, e)
        sp.map.wirefuture = sp.map.all_locked = False
        uvm.stats.munlockalls += 1


def _memlock(resource: int) -> None:
    if resource != RLIMIT_MEMLOCK:
        raise UserError(Errno.EINVAL, f"resource {resource}: only RLIMIT_MEMLOCK is served")


def getrlimit(uvm: Uvm, asid: int, owner: int, resource: int) -> tuple[int, int]:
    """getrlimit(2). => (cur, max) in bytes; UserError EINVAL, ESRCH."""
    sp = uvm.space(asid, owner)
    _memlock(resource)
    return sp.memlock


def setrlimit(
    uvm: Uvm, asid: int, owner: int, resource: int, cur: int, max_: int
) -> tuple[int, int]:
    """dosetrlimit. => (cur, max) now; UserError EINVAL (another resource, cur > max),
    EPERM (raising the hard limit), ESRCH; nothing changed on an error."""
    sp = uvm.space(asid, owner)
    _memlock(resource)
    if cur > max_:
        raise UserError(Errno.EINVAL, f"RLIMIT_MEMLOCK cur {cur} > max {max_}")
    if max_ > sp.memlock[1]:
        raise UserError(
            Errno.EPERM, f"RLIMIT_MEMLOCK max {max_} above {sp.memlock[1]}: only root may raise it"
        )
    sp.memlock = (cur, max_)
    return sp.memlock
