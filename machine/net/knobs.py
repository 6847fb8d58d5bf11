"""The net role's parameters: the profile knob it reads, its fixed sizes, its counters.

`NetKnobs` is read once, when the role is built (`net_knobs`, the one place net reads
the profile); the cores are handed the typed value and never look a knob up by name.
The sizes are NetBSD's where NetBSD has one (SOCK_LOAN_CHUNK, SOMAXKVA); `net.link`
may change somaxkva and the loan chunk at run time (the link's state, not knobs).
"""

from __future__ import annotations

from dataclasses import dataclass

from machine.kpt import LOAN_KVA_BASE, LOAN_KVA_SLOT_PAGES
from machine.profile import Profile, load_profile
from machine.proto.pmap import MAX_CHUNKS

SOCK_LOAN_CHUNK = 64 << 10  # SOCK_LOAN_CHUNK: the most one chunk (one loan, one mbuf) holds
SOMAXKVA = 16 << 20  # SOMAXKVA: loan KVA held at once
KVA_SLOT_PAGES = LOAN_KVA_SLOT_PAGES  # VA per mbuf slot (8 MiB): any chunk fits
KVA_BASE = LOAN_KVA_BASE  # the loan KVA arena (the kernel page table covers its start)
PIPELINE = 8  # copied chunks of a window at least (more while they fit a quarter of the pool)
LOAN_WINDOW = MAX_CHUNKS  # chunks of a window at most (one uvm.loan_chunks, one kenter)
RING = 8  # the driver's descriptor ring: mbufs whose DMA may run ahead of the wire
DEFAULT_BANDWIDTH_BPS = 0  # unthrottled
DEFAULT_LATENCY_US = 0

#: net's counters (ctl.stats), in the order they are reported.
COUNTERS = (
    "sends",
    "tx_packets",
    "tx_bytes",
    "loaned_chunks",
    "loaned_pages",
    "copied_chunks",
    "copied_bytes",
    "loan_fallbacks",
    "kvawaits",
    "sbwaits",
    "mbufwaits",
    "kfaults",
    "pendfree",
    "driver_msgs",
    "kpt_reads",
    "dma_pins",
    "dma_frames",
    "dma_timeouts",
    "dma_revoked",
    "soclosed",
    "sofreed",
    "wiredrops",
    "reconciles",
)


def new_stats() -> dict[str, int]:
    """Every counter at 0: one dict the parts of the core share (they count into it)."""
    return dict.fromkeys(COUNTERS, 0)


@dataclass(frozen=True)
class NetKnobs:
    """What the profile decides for net."""

    #: sock_loan_thresh: a chunk is loaned when at least this many bytes of the send are
    #: left and the send buffer has that much room; -1 (any negative): never loan.
    loan_thresh: int = 4096

    @property
    def loans(self) -> bool:
        return self.loan_thresh >= 0


def net_knobs(profile: str | Profile) -> NetKnobs:
    """=> the knobs net uses, from a loaded profile, a shipped profile's name or a TOML
    path (validated by load_profile)."""
    p = load_profile(profile) if isinstance(profile, str) else profile
    return NetKnobs(loan_thresh=p.settings.loan_threshold)
