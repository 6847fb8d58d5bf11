"""The page-replacement policy interface, and what a policy sees and decides.

A policy is pure: given a snapshot of uvm's paging queues (always a little
stale: the daemon runs in its own process), the referenced/modified bits the
mmu reported, the targets and the profile's typed settings (machine.profile), it returns
wants, in order. It never changes page state: the daemon claims each page
through uvm (which re-checks the page's current state under the profile's
rules and marks it BUSY, or refuses), calls the mmu, and asks uvm to carry the
action out. Two policies ship, selected by the PD_POLICY knob:
  * scan1999  (uvm-semantics.md 7.1, NetBSD uvm_pdaemon.c 1.19)
  * clock     (7.3, today's uvmpdpol_clock: ClockPolicy)
A user's own policy implements PagePolicy. The queues' lengths are the snapshot's
nactive / ninactive (targets use them); a policy that only walks its queues from the
head with `for` may set `walks_prefix = True` and then gets a prefix of each queue
(machine.pdaemon.daemon reruns it on the whole queues if it walks past one).

machine.pdaemon.daemon runs a policy's decisions: claim through uvm, revoke at
the mmu, finish through uvm (machine.uvm.pdops).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from machine.profile import Settings
from machine.proto.pageinfo import PdOp
from machine.tuning import Targets as Targets

CLUSTER = 16  # MAXBSIZE (64 KiB) >> PAGE_SHIFT: swap pageout cluster
NUMDIRTYREACTS = 16  # UVMPD_NUMDIRTYREACTS


@dataclass(frozen=True)
class PageInfo:
    """The daemon's view of one queued page."""

    pfn: int
    swap_backed: bool = True  # anon or aobj page (else a file page)
    clean: bool = False  # PG_CLEAN as uvm last knew it
    busy: bool = False
    wire_count: int = 0
    loan_count: int = 0
    owned: bool = True  # tabled in an object, or owned by an anon
    has_anon: bool = True  # uanon set (an ownerless page can be adopted by it)
    swslot: bool = False  # has a swap slot


@dataclass
class Snapshot:
    """active / inactive: the queues from their heads, possibly a prefix (a policy that
    walks to the end of one may be rerun on longer lists: machine.pdaemon.daemon);
    nactive / ninactive: the queues' lengths (-1 given: the lists' lengths)."""

    active: list[PageInfo]
    inactive: list[PageInfo]
    free: int
    npages: int
    paging: int = 0
    swpages: int = 0
    swpginuse: int = 0
    swpgonly: int = 0
    nactive: int = -1
    ninactive: int = -1

    def __post_init__(self) -> None:
        if self.nactive < 0:
            self.nactive = len(self.active)
        if self.ninactive < 0:
            self.ninactive = len(self.inactive)


@dataclass(frozen=True)
class Action:
    op: PdOp  # reactivate, deactivate, free, pageout, dropswap (machine.proto.pageinfo)
    pfn: int
    revoke: bool = False  # pmap_page_protect(NONE) before the op
    cluster: int = -1  # swap cluster number for PAGEOUT of swap-backed pages


@dataclass
class ScanResult:
    actions: list[Action] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    def add(self, action: Action, counter: str = "") -> None:
        self.actions.append(action)
        if counter:
            self.counters[counter] = self.counters.get(counter, 0) + 1


Bits = Callable[[int], bool]


class PagePolicy(Protocol):
    name: str

    def tune(self, npages: int) -> Targets: ...

    def inactarg(self, snap: Snapshot, t: Targets) -> int: ...

    def needs_scan(self, snap: Snapshot, t: Targets) -> bool: ...

    def scan(
        self, snap: Snapshot, referenced: Bits, t: Targets, settings: Settings
    ) -> ScanResult: ...
