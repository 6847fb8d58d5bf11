"""pmap.trapwait and pmap.resolve: how a CPU trap reaches uvm and its answer comes back.

A user access that misses (no translation, or a protection the mapping does
not give) is resolved by the kernel, not by the user (docs/design.md,
"Faults"): the mmu parks the access and queues a trap; uvm keeps one
pmap.trapwait outstanding at the mmu, whose reply hands over every trap
queued; uvm resolves each (uvm_fault) and sends the answers on the SAME
connection as every other pmap.* request it sends: in its next pmap.trapwait
for the faults that resolved at once, in a pmap.resolve notice for one that
had to wait (I/O, memory, a busy page). That connection delivers in order,
so an answer's mapping is entered after every revocation uvm decided before
it and before every one it decides after it: no enter ever lands after a
revocation of the same page, and uvm may unbusy the page as soon as the
notice is sent. The mmu enters the answer's mappings and completes the
parked access against them at once, before it handles anything else, so
nothing (the page daemon included) can take the page back between a fault
and its access.

Messages of the kernel endpoint only (uvm <-> mmu).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from machine.proto.base import Notice, Reply, Request
from machine.proto.types import Asid, Pfn, ProtBits, ShortText, Va

#: Traps handed over by one pmap.trapwait reply, answers in one pmap.resolve.
TRAP_BATCH = 256
#: Mappings one answer may carry: the faulting page and its fault-ahead neighbours.
MAX_AHEAD = 16

TrapId = Annotated[int, msgspec.Meta(ge=1, le=(1 << 62))]


class Trap(msgspec.Struct, frozen=True, array_like=True):
    """One parked user access: trap `id` of process asid (owned by session owner)."""

    id: TrapId
    asid: Asid
    owner: Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
    va: Va
    access: ProtBits


class TrapMapping(msgspec.Struct, frozen=True, array_like=True):
    """A mapping to enter (pmap_enter's arguments): va -> pfn with prot and EnterFlags."""

    va: Va
    pfn: Pfn
    prot: ProtBits
    flags: Annotated[int, msgspec.Meta(ge=0, le=7)]


class TrapAnswer(msgspec.Struct, frozen=True, array_like=True):
    """uvm's answer to trap `id`: the mappings to enter (the faulting page first, then
    fault-ahead neighbours, entered only where no translation exists), or an errno
    (EFAULT: SIGSEGV; ENOMEM: out of memory, the process is killed; ESRCH; EPANIC)."""

    id: TrapId
    mappings: Annotated[list[TrapMapping], msgspec.Meta(max_length=MAX_AHEAD)]
    errno: Annotated[str, msgspec.Meta(max_length=16)] = ""
    detail: ShortText = ""


class PmapTrapwait(Request, frozen=True, kw_only=True, tag="pmap.trapwait"):
    """uvm answers traps and waits for more (a long poll: uvm keeps exactly one outstanding). (1.4)

    => `answers` first: each is applied as pmap.resolve applies it (the answers of the
       faults that resolved without waiting, so a fault costs no message of its own).
    Reply: PmapTrapwaitReply once at least one trap is queued, with every trap queued
    (at most TRAP_BATCH); a second trapwait while one waits answers the first with no
    traps.
    """

    answers: Annotated[list[TrapAnswer], msgspec.Meta(max_length=TRAP_BATCH)] = msgspec.field(
        default_factory=list
    )


class PmapTrapwaitReply(Reply, frozen=True, kw_only=True, tag="pmap.trapwait.reply"):
    traps: Annotated[list[Trap], msgspec.Meta(max_length=TRAP_BATCH)] = msgspec.field(
        default_factory=list
    )


class PmapResolve(Notice, frozen=True, kw_only=True, tag="pmap.resolve"):
    """uvm's answers to traps whose faults waited (one-way, ordered with every other
    pmap.* uvm sends; the others ride on the next pmap.trapwait). (1.4)

    => for each answer: its mappings are entered (the first always; a neighbour only
       where the pmap has no translation), then the parked access resumes against
       them at once; an errno ends the access with that error. An answer for a
       trap the mmu does not hold is ignored (its access ended: the pmap went away).
    """

    answers: Annotated[list[TrapAnswer], msgspec.Meta(max_length=TRAP_BATCH)]
