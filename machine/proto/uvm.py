"""uvm.*: the machine-independent VM: address spaces, mappings, faults.

Clients create address spaces (uvm.spawn), map and unmap memory, and trap
into uvm.fault when the mmu answers a load or store with a fault. A client
may name only address spaces its own session created (else EPERM).
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from machine.proto.base import Event, Reply, Request, Scope
from machine.proto.types import Asid, Length, ProtBits, Va


class UvmSpawn(Request, frozen=True, kw_only=True, tag="uvm.spawn"):
    """Create an emulated process: a new, empty address space owned by the caller.

    => client -> uvm. Reply: UvmSpawnReply with its asid (its pid).
    """

    scope: ClassVar[Scope] = Scope.USER


class UvmSpawnReply(Reply, frozen=True, kw_only=True, tag="uvm.spawn.reply"):
    asid: int = 0


class UvmMmap(Request, frozen=True, kw_only=True, tag="uvm.mmap"):
    """Map `length` bytes of anonymous, private, zero-filled memory (uvm_map).

    => length > 0 (rounded up to pages); prot in VM_PROT bits.
    => va 0 lets uvm choose; otherwise va is page aligned and, with fixed,
       used exactly (EINVAL if the range overlaps a mapping).
    Reply: UvmMmapReply with the start VA. Errnos: EINVAL, ENOMEM (no room).
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    length: Length
    prot: ProtBits
    va: Va = 0
    fixed: bool = False


class UvmMmapReply(Reply, frozen=True, kw_only=True, tag="uvm.mmap.reply"):
    va: int = 0


class UvmMunmap(Request, frozen=True, kw_only=True, tag="uvm.munmap"):
    """Unmap [va, va+length) (uvm_unmap): translations first, then frames are freed.

    => va page aligned; unmapped holes in the range are allowed (POSIX).
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    va: Va
    length: Length


class UvmFault(Request, frozen=True, kw_only=True, tag="uvm.fault"):
    """Resolve a trap the mmu answered (uvm_fault).

    => access is the access type that faulted (READ or WRITE).
    Reply: ok once the translation is entered (retry the access); EFAULT
    (SIGSEGV) with the reason when no mapping covers va or the mapping's
    protection forbids the access; ENOMEM when no frame can be had.
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    va: Va
    access: ProtBits


class UvmExit(Request, frozen=True, kw_only=True, tag="uvm.exit"):
    """End an emulated process: remove its pmap, free every frame it held."""

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid


class UvmDetach(Request, frozen=True, kw_only=True, tag="uvm.detach"):
    """The client session is leaving: exit every process it created.

    (A session that vanishes without detaching is reaped when its lease,
    renewed by any request it sends, runs out.)
    Reply: UvmDetachReply with the asids that were exited.
    """

    scope: ClassVar[Scope] = Scope.USER


class UvmDetachReply(Reply, frozen=True, kw_only=True, tag="uvm.detach.reply"):
    exited: list[int] = msgspec.field(default_factory=list)


class UvmAudit(Request, frozen=True, kw_only=True, tag="uvm.audit"):
    """Check uvm's invariants and its agreement with the mmu.

    => kernel endpoint (tests, the kernel debugger, stress runs).
    Reply: UvmAuditReply; `problems` is empty when every invariant holds.
    """


class UvmAuditReply(Reply, frozen=True, kw_only=True, tag="uvm.audit.reply"):
    problems: list[str] = msgspec.field(default_factory=list)
    checked: int = 0


class UvmPressure(Event, frozen=True, kw_only=True, tag="uvm.pressure"):
    """Free memory fell below the page daemon's wake-up point."""

    free: int
    freemin: int
    freetarg: int


class UvmProcExited(Event, frozen=True, kw_only=True, tag="uvm.proc_exited"):
    """A process ended: by exit, by detach, or reaped after its session lapsed."""

    asid: int
    reason: str
