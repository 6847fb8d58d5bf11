"""The page daemon's targets (uvmpd_tune), shared by uvm (when to wake the daemon) and
the page daemon (when to scan), so both use the profile's formula.

  1999 (scan1999, uvm-semantics.md 7.1): freemin = npages/20 clamped to
        [16 KiB, 256 KiB] of pages; freetarg = 4/3 freemin (>= freemin + 1).
  modern (clock, 7.3): freemin = npages/200 clamped to [128 KiB, 1 MiB] of
        pages (one CPU); freetarg = 4/3 freemin.
A tiny machine keeps most frames usable: freemin <= npages/4.
wiredmax = npages/3 in both.
"""

from __future__ import annotations

from machine.params import PAGE_SIZE


def tune(npages: int, policy: str = "clock") -> tuple[int, int, int]:
    """=> (freemin, freetarg, wiredmax) for the policy ("scan1999" or "clock")."""
    if policy == "scan1999":
        lo, hi = (16 << 10) // PAGE_SIZE, (256 << 10) // PAGE_SIZE
        freemin = min(max(npages // 20, lo), hi)
    else:
        lo, hi = (128 << 10) // PAGE_SIZE, (1 << 20) // PAGE_SIZE
        freemin = min(max(npages // 200, lo), hi)
        freemin = min(freemin, max(npages // 4, 1))
    return freemin, max(freemin * 4 // 3, freemin + 1), npages // 3
