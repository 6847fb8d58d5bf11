"""Address-space operations (uvm_map.c, uvm_mmap.c, uvm_glue.c): spawn, mmap, munmap,
mprotect, fork and exit, on the state of machine.uvm.state (mlock and its kin:
machine.uvm.wiring; after mlockall(MCL_FUTURE) mmap wires each new mapping, and
mprotect one made accessible, through machine.uvm.pageable; a fork's child inherits
RLIMIT_MEMLOCK, never wirings or MCL_FUTURE).

Ordering rules (why the machine never maps a freed frame):
  * munmap, exit and MAP_FIXED's replace (one path: _unmap_locked) remove
    translations from the mmu first and free frames only after the mmu has
    acknowledged.
  * Every operation on one address space holds that space's lock across its
    awaits, so faults, mmap, munmap, fork and exit of one space never
    interleave. Different spaces run concurrently; what they share (anons
    after fork, object pages) is protected by PG_BUSY (machine.uvm.state).
  * No process outlives its session. The end of a session (detach, reap)
    exits the processes it finds. spawn and fork await the mmu before their
    process is complete; after their last await they ask uvm.owner_live, with
    no await before they answer: a session that ended meanwhile gets ESESSION and
    the process is torn down (before, a fork in flight at a detach left its
    child, and every page the child shared, for good).
  * A fork's child is published (in uvm.spaces, where its asid can be named)
    locked, and unlocked only when whole: an exit of the child during the
    fork waits for it, instead of tearing down a map the fork goes on filling.

Memory follows use: nothing uvm keeps, and no loop it runs, is sized by the
virtual size of a mapping. Amaps and objects are sparse (machine.uvm.amap,
UvmObject.pages), the mmu's page tables are dicts, and munmap, mprotect,
munlock, fork and exit walk the used slots and the resident pages, never
every page of a range: one byte stored at the end of a 2^40-byte mapping
costs a few KiB. Only wiring touches every page (it must fault each in), and
it refuses up front a range larger than the machine's wiredmax.

Limits (machine.limits, NetBSD's rlimits; each refusal changes nothing):
  vsize        mmap beyond the process's mapped bytes limit -> ENOMEM
               (a forked child inherits its parent's size);
  map_entries  mmap, or a clip (mprotect, mlock, munlock, munmap, minherit,
               madvise inside an entry) that would leave more entries -> ENOMEM
               (MAP_FIXED counts the entries and bytes its replace removes);
  maxentries   the same, for the machine's entries (entry_pool, E1 in
               machine.uvm.map), and fork: the child's entries are charged
               (reserved) before the child exists -> ENOMEM;
  procs        spawn or fork beyond the session's processes -> EAGAIN.
cf. NetBSD sys/uvm/uvm_map.c, uvm_mmap.c, uvm_glue.c (concepts only).
"""

from __future__ import annotations

import contextlib

from machine.params import PAGE_MASK, PAGE_SHIFT, USER_MIN, USER_TOP, round_page
from machine.proto import Errno, UserError
from machine.proto.types import Prot
from machine.uvm.files import file_maxprot, obj_unref
from machine.uvm.inherit import fork_entry
from machine.uvm.map import Inherit, MapEntry, VmMap, check_range
from machine.uvm.object import AObj, UvmObject
from machine.uvm.page import NIL
from machine.uvm.pageable import memlock_default, wire_future
from machine.uvm.state import RWX, Uvm, VmSpace


async def spawn(uvm: Uvm, owner: int) -> int:
    """A new, empty address space. => asid; UserError EAGAIN beyond limits.procs, ESESSION
    when the owner's session ended meanwhile (nothing left)."""
    uvm.charge_proc(owner)
    asid = uvm.new_asid()
    try:
        await uvm.pmap.create(asid, owner)
        if not uvm.owner_live(owner):
            uvm.note("undone: the session ended", op="spawn", asid=asid, session=owner)
            await uvm.pmap.destroy(asid)
            raise UserError(Errno.ESESSION, "spawn: the session ended meanwhile")
    except BaseException:
        uvm.uncharge_proc(owner)
        raise
    uvm.spaces[asid] = VmSpace(
        asid, owner, VmMap(uvm.entry_pool, owner), memlock=memlock_default(uvm)
    )
    uvm.stats.spawns += 1
    return asid


async def mmap(
    uvm: Uvm,
    asid: int,
    owner: int,
    length: int,
    prot: Prot,
    va: int = 0,
    fixed: bool = False,
    handle: int = 0,
    offset: int = 0,
    shared: bool = False,
) -> int:
    """uvm_map: anonymous or file memory, private (COW) or shared. => start VA.

    => without fixed, va is a hint (uvm_mmap rounds it up to a page): the first free
       range at or above it, else the first from the bottom (a hint outside user
       space is ignored); never a reason to fail while the space has room.
    => fixed (MAP_FIXED, UVM_FLAG_FIXED|UVM_FLAG_UNMAP): va page aligned and used
       exactly; whatever is mapped in the range is replaced in one operation under
       the space's lock (munmap's path: translations removed first, frames freed
       after the mmu's answer, wired pages unwired, loans revoked), so no other
       request of the process sees the hole. The limits count what goes.
    => UserError EINVAL (length <= 0, offset misaligned, fixed va misaligned, fixed
       outside user space: at 0 too, as NetBSD's range_test against the map's minimum
       page; a fixed length beyond user space), ENOMEM (no room, a length beyond user
       space without fixed, as uvm_map finds no room for it, limits.vsize or
       limits.map_entries or limits.maxentries reached), EBADF, EACCES (prot beyond the
       maximum protection of the file's open mode: machine.uvm.files.file_maxprot);
       nothing changed on any error. After mlockall(MCL_FUTURE) the new mapping is
       wired as it is made: ENOMEM (beyond wiredmax or RLIMIT_MEMLOCK, or no frame)
       undoes it, as uvm_mmap does (what a MAP_FIXED replace removed stays removed)."""
    sp = uvm.space(asid, owner)
    if length <= 0 or offset < 0:
        raise UserError(Errno.EINVAL, f"mmap length {length} / offset {offset} out of range")
    if length > USER_TOP - USER_MIN:  # no room (uvm_map); MAP_FIXED: range_test's EINVAL
        raise UserError(
            Errno.EINVAL if fixed else Errno.ENOMEM,
            f"mmap length {length:#x} is larger than user space",
        )
    length = round_page(length)
    if offset & PAGE_MASK:
        raise UserError(Errno.EINVAL, "mmap offset must be page aligned")
    if fixed and va & PAGE_MASK:
        raise UserError(Errno.EINVAL, f"MAP_FIXED address {va:#x} not page aligned")
    obj: UvmObject | None = None
    maxprot = RWX
    if handle:  # EBADF; EACCES beyond what the handle's open mode allows (vn_mmap)
        obj, maxprot = file_maxprot(uvm, owner, handle, prot, shared)
    async with sp.lock:
        if fixed:
            if not (USER_MIN <= va and va + length <= USER_TOP):
                raise UserError(Errno.EINVAL, f"mmap range at {va:#x} outside user space")
            replacing = _replace_room(uvm, sp, va, va + length)
            start = va
        else:
            replacing = False
            _map_room(uvm, sp, length)
            start = _find_space(sp.map, length, va)
        held = replacing and obj is not None
        if replacing:
            # Before the first await: the new entry's place, and the file's reference
            # (fd_getfile's: a close meanwhile must not free the object).
            uvm.entry_pool.reserve(sp.owner, 1)
            if obj is not None:
                obj.refs += 1
            try:
                await _unmap_locked(uvm, sp, va, va + length)
            except BaseException:
                uvm.entry_pool.unreserve(sp.owner, 1)
                if obj is not None:
                    await obj_unref(uvm, obj)
                raise
        if obj is None and shared:
            obj = AObj(uvm.new_object_id(), refs=0, size_pages=length >> PAGE_SHIFT)
            uvm.objects[obj.id] = obj
        if obj is not None and not held:
            obj.refs += 1
        entry = MapEntry(
            start,
            start + length,
            prot,
            maxprot,
            Inherit.SHARE if shared else Inherit.COPY,
            obj,
            offset,
            None,
            cow=not shared,
        )
        sp.map.insert(entry, reserved=replacing)
        if sp.map.wirefuture:
            await _wire_future(uvm, sp, entry)
        uvm.stats.mmaps += 1
        return start


async def _wire_future(uvm: Uvm, sp: VmSpace, e: MapEntry) -> None:
    """mlockall(MCL_FUTURE): wire the mapping just made; if it cannot be, unmap it and
    answer ENOMEM, as uvm_mmap does (machine.uvm.pageable)."""
    try:
        await wire_future(uvm, sp, e)
    except BaseException:
        await uvm.pmap.remove(sp.asid, e.start, e.end)
        sp.map.remove([e])
        await _drop_entry(uvm, e)
        raise
    if e.wired_count:
        uvm.stats.wirefutures += 1


def _map_room(uvm: Uvm, sp: VmSpace, length: int) -> None:
    """=> UserError ENOMEM when one more entry of `length` bytes exceeds the limits."""
    if sp.map.size + length > uvm.limits.vsize:
        raise UserError(
            Errno.ENOMEM,
            f"{sp.map.size} + {length} bytes mapped would exceed the process's "
            f"limit of {uvm.limits.vsize} (vsize)",
        )
    if len(sp.map.entries) >= uvm.limits.map_entries:
        raise UserError(
            Errno.ENOMEM, f"the process holds its limit of {uvm.limits.map_entries} entries"
        )
    _entry_room(uvm, sp.owner, 1, "mmap")


def _replace_room(uvm: Uvm, sp: VmSpace, start: int, end: int) -> bool:
    """The limits of MAP_FIXED over [start, end), counting what the replace removes.
    => whether anything is mapped there; UserError ENOMEM (vsize, map_entries,
    maxentries) before anything changed."""
    inside = sp.map.in_range(start, end)
    if not inside:
        _map_room(uvm, sp, end - start)
        return False
    gone = sum(min(end, e.end) - max(start, e.start) for e in inside)
    if sp.map.size - gone + (end - start) > uvm.limits.vsize:
        raise UserError(
            Errno.ENOMEM,
            f"{sp.map.size - gone} + {end - start} bytes mapped would exceed the process's "
            f"limit of {uvm.limits.vsize} (vsize)",
        )
    splits = int(inside[0].start < start) + int(inside[-1].end > end)
    n = len(sp.map.entries)
    after = n + splits - len(inside) + 1
    if after > uvm.limits.map_entries:
        raise UserError(
            Errno.ENOMEM,
            f"mmap at {start:#x} would leave {after} entries, beyond the process's limit of "
            f"{uvm.limits.map_entries}",
        )
    if after > n:
        _entry_room(uvm, sp.owner, after - n, "mmap")
    return True


def _find_space(m: VmMap, length: int, va: int) -> int:
    """uvm_map_findspace for a hint: first fit at or above round_page(va), else from the
    bottom; a hint outside user space is ignored. => start VA; UserError ENOMEM."""
    hint = round_page(va)
    if not USER_MIN <= hint < USER_TOP:
        hint = 0
    found = m.find_space(length, hint)
    if found is None and hint:
        found = m.find_space(length, 0)
    if found is None:
        raise UserError(Errno.ENOMEM, f"no room for {length} bytes in the address space")
    return found


def _unshare(uvm: Uvm, e: MapEntry) -> None:
    """Before an entry is split, give it its own amap (an early amap_copy)."""
    if e.needs_copy and e.amap is not None:
        uvm.amap_copy(e)


def _entry_room(uvm: Uvm, owner: int, n: int, what: str) -> None:
    """=> UserError ENOMEM when n more map entries of session owner would exceed
    limits.maxentries or pass its fair share of them (machine.share)."""
    why = uvm.entry_pool.refusal(owner, n)
    if why:
        raise UserError(Errno.ENOMEM, f"{what}: {why}")


def _clip_room(uvm: Uvm, sp: VmSpace, start: int, end: int, removing: bool = False) -> None:
    """=> UserError ENOMEM when clipping at start and end would leave the process more
    than limits.map_entries entries, or the machine more than limits.maxentries
    (removing: the entries inside then go, munmap)."""
    inside = sp.map.in_range(start, end)
    if not inside:
        return
    splits = int(inside[0].start < start) + int(inside[-1].end > end)
    after = len(sp.map.entries) + splits - (len(inside) if removing else 0)
    if splits and after > uvm.limits.map_entries:
        raise UserError(
            Errno.ENOMEM,
            f"splitting at {start:#x}-{end:#x} would exceed the process's limit of "
            f"{uvm.limits.map_entries} map entries",
        )
    if splits and after > len(sp.map.entries):
        _entry_room(uvm, sp.owner, after - len(sp.map.entries), f"splitting at {start:#x}-{end:#x}")


def _clip(uvm: Uvm, sp: VmSpace, start: int, end: int, removing: bool = False) -> list[MapEntry]:
    """uvm_map_clip of [start, end), each split entry unshared first. => entries inside.

    => UserError ENOMEM (limits.map_entries) before anything changed."""
    _clip_room(uvm, sp, start, end, removing)
    for e in sp.map.in_range(start, end):
        if e.start < start or e.end > end:
            _unshare(uvm, e)
    return sp.map.clip(start, end)


async def munmap(uvm: Uvm, asid: int, owner: int, va: int, length: int) -> None:
    """uvm_unmap: translations go first, then frames and references.

    => UserError ENOMEM (a split beyond map_entries or maxentries) before anything
       changed. The clip comes before the await, right after its check, so no other
       space can take the entries meanwhile; until the doomed entries go (after the
       mmu's answer) the machine may count up to 2 entries over maxentries."""
    sp = uvm.space(asid, owner)
    eva = check_range(va, length)
    async with sp.lock:
        await _unmap_locked(uvm, sp, va, eva)
        uvm.stats.munmaps += 1


async def _unmap_locked(uvm: Uvm, sp: VmSpace, va: int, eva: int) -> None:
    """uvm_unmap_remove + uvm_unmap_detach of [va, eva), sp locked (munmap, MAP_FIXED).

    => UserError ENOMEM (a split beyond the limits) before anything changed."""
    doomed = _clip(uvm, sp, va, eva, removing=True)
    await uvm.pmap.remove(sp.asid, va, eva)
    sp.map.remove(doomed)
    for e in doomed:
        await _drop_entry(uvm, e)


async def _drop_entry(uvm: Uvm, e: MapEntry) -> None:
    """Release what an entry held (its translations are already gone)."""
    if e.wired_count:
        for pfn in uvm.resident_pages(e):
            if uvm.pages.wire_count[pfn]:
                uvm.pages.unwire(pfn)
    if e.amap is not None:
        uvm.amap_unref(e.amap, e.aoff, e.npages)
        e.amap = None
        doomed, uvm.doomed_loans = uvm.doomed_loans, []
        await uvm.revoke(doomed, "uvm_anfree of a loaned anon page")
    if e.obj is not None:
        if e.obj.pgops.writes_back and not e.cow:
            from machine.uvm.pager import flush_object

            await flush_object(uvm, e.obj, e.pgoff(e.start), e.pgoff(e.end))
        await obj_unref(uvm, e.obj)
        e.obj = None


def _leak_one(uvm: Uvm, entries: list[MapEntry]) -> None:
    """Fault injection, for tests only (UVM_MACHINE_INJECT_LEAK=1, once per machine): one
    resident anon page of the exiting process gets a reference nobody holds, so its frame
    outlives the process (the auditor's anon-reference check sees it; `explain` must name
    the frame and the process that held it)."""
    for e in entries:
        for _, anon in e.amap.used() if e.amap is not None else ():
            if anon.page != NIL:
                anon.ref += 1
                uvm.inject_leak = False
                uvm.note("injected leak", anon=anon.id, pfn=anon.page)
                return


async def mprotect(uvm: Uvm, asid: int, owner: int, va: int, length: int, prot: Prot) -> None:
    async with uvm.mapped_range(asid, owner, va, length, "mprotect") as (sp, eva):
        if any(prot & ~e.max_prot for e in sp.map.in_range(va, eva)):
            raise UserError(Errno.EACCES, "protection beyond the mapping's maximum")
        raised = []
        for e in _clip(uvm, sp, va, eva):
            lowered = e.prot & ~prot
            if e.prot == Prot.NONE != prot:
                raised.append(e)
            e.prot = prot
            if lowered:
                await uvm.pmap.protect(asid, e.start, e.end, int(prot))
        if sp.map.wirefuture:  # uvm_map_protect: MCL_FUTURE wires what becomes accessible
            for e in raised:
                try:
                    await wire_future(uvm, sp, e)
                except UserError:
                    sp.map.all_locked = False
                    raise


async def exit(uvm: Uvm, asid: int, owner: int, reason: str = "exit") -> None:
    """Process exit: remove the pmap, then release every entry."""
    sp = uvm.space(asid, owner)
    async with sp.lock:
        if sp.dead:
            return
        sp.dead = True
        await uvm.pmap.destroy(asid)
        entries = sp.map.take_all()
        if uvm.inject_leak:
            _leak_one(uvm, entries)
        for e in entries:
            await _drop_entry(uvm, e)
        del uvm.spaces[asid]
        uvm.uncharge_proc(sp.owner)
        uvm.stats.exits += 1
        if reason != "exit":
            uvm.stats.reaped += 1


async def fork(uvm: Uvm, asid: int, owner: int) -> int:
    """uvmspace_fork: a child address space by each entry's inheritance (minherit;
    each entry's share, copy or zero in machine.uvm.inherit).

    COPY entries become copy-on-write in both (the amap shared with
    NEEDSCOPY, the parent's writable mappings write-protected), except
    wired ones, whose anon pages are copied at once (amap_cow_now) so the
    parent never faults on wired memory, and ones whose amap is shared
    (AMAP_SHARED), which the child copies at once; COPY of a shared entry
    gives the child a private copy-on-write mapping of the same object.
    SHARE entries share the object, and a private entry's amap (AMAP_SHARED:
    stores, zero-fills and promotions are seen by both). NONE entries are
    left out; ZERO entries become fresh zero-fill private anonymous memory.
    The child keeps each entry's inheritance and advice; nothing is wired in it.

    => UserError EAGAIN (procs, maxproc) or ENOMEM (maxentries: the child's entries
       are reserved in the pool before the child exists) with nothing changed;
       ENOMEM when a wired entry's pages cannot be copied (no free frame): the
       half-built child is torn down, the parent keeps its memory (its entries
       may be left NEEDSCOPY and write-protected: its next writes fault);
       ESESSION when the owner's session ended meanwhile: the child is torn down.
    """
    sp = uvm.space(asid, owner)
    async with sp.lock:
        todo = [e for e in sp.map.entries if e.inheritance is not Inherit.NONE]
        _entry_room(uvm, owner, len(todo), "fork")
        uvm.charge_proc(owner)
        pool = uvm.entry_pool
        pool.reserve(owner, len(todo))  # before any await: racing forks and mmaps agree
        child_asid = uvm.new_asid()
        try:
            await uvm.pmap.create(child_asid, owner)
        except BaseException:
            pool.unreserve(owner, len(todo))
            uvm.uncharge_proc(owner)
            raise
        child = VmSpace(child_asid, owner, VmMap(pool, owner), memlock=sp.memlock)  # not MCL_FUTURE
        # The child is held locked until it is whole: an exit (or any request) of its asid,
        # which a client can guess, waits for the fork instead of tearing down a half-built
        # map that the fork then goes on filling (its amap references would outlive it).
        await child.lock.acquire()
        uvm.spaces[child_asid] = child
        try:
            for e in todo:
                await fork_entry(uvm, sp, child, e)
            if not uvm.owner_live(owner):  # the session's end did not see the child
                uvm.note("undone: the session ended", op="fork", asid=child_asid, session=owner)
                raise UserError(Errno.ESESSION, "fork: the session ended meanwhile")
        except BaseException:
            pool.unreserve(owner, len(todo) - len(child.map.entries))  # the inserted spent theirs
            child.lock.release()
            with contextlib.suppress(UserError):  # ended meanwhile by the session's end
                await exit(uvm, child_asid, owner, reason="fork failed")
            raise
        child.lock.release()
        uvm.stats.forks += 1
        return child_asid
