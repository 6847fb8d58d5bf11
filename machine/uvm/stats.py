"""uvm's counters, named after NetBSD's struct uvmexp."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class UvmStats:
    faults: int = 0  # uvm_fault calls
    flt_anon: int = 0  # resolved with a resident anon page
    flt_przero: int = 0  # zero-filled a new anon page
    fltnoram: int = 0  # no free frame for a fault
    segv: int = 0  # faults answered SIGSEGV
    zeropages: int = 0  # pages zeroed
    pgfrees: int = 0  # pages freed
    forks: int = 0
    spawns: int = 0
    exits: int = 0
    reaped: int = 0  # processes of vanished client sessions
    mmaps: int = 0
    munmaps: int = 0
    pressure_events: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
