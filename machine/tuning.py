"""The page daemon's targets (uvmpd_tune): one source of truth per policy, shared by uvm
(when to publish uvm.pressure and wake the daemon) and the page daemon (when to scan).

  scan1999 (uvm-semantics.md 7.1): freemin = npages/20 clamped to [16 KiB, 256 KiB]
        of pages; freetarg = 4/3 freemin (>= freemin + 1).
  clock (7.3): freemin = npages/200 clamped to [128 KiB, 1 MiB] of pages (one
        CPU), and <= npages/4 so a tiny machine keeps most frames usable;
        freetarg = 4/3 freemin.
  wiredmax = npages/3 in both.
  A user's own policy ("python:module:Class", PD_POLICY) has its own: uvm loads
  the class and asks its `tune(npages)`, exactly as the daemon does, so both
  roles wake and scan by the same numbers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from machine.params import PAGE_SIZE


@dataclass(frozen=True)
class Targets:
    freemin: int
    freetarg: int
    wiredmax: int


def _freetarg(freemin: int) -> int:
    return max(freemin * 4 // 3, freemin + 1)


def scan1999_targets(npages: int) -> Targets:
    lo, hi = (16 << 10) // PAGE_SIZE, (256 << 10) // PAGE_SIZE
    freemin = min(max(npages // 20, lo), hi)
    return Targets(freemin, _freetarg(freemin), npages // 3)


def clock_targets(npages: int) -> Targets:
    lo, hi = (128 << 10) // PAGE_SIZE, (1 << 20) // PAGE_SIZE
    freemin = min(max(npages // 200, lo), hi)
    freemin = min(freemin, max(npages // 4, 1))
    return Targets(freemin, _freetarg(freemin), npages // 3)


SHIPPED_TARGETS = {"scan1999": scan1999_targets, "clock": clock_targets}


def user_policy_class(spec: str) -> Any:
    """The class a "python:package.module:ClassName" PD_POLICY names (imported)."""
    module, _, cls = spec[len("python:") :].partition(":")
    return getattr(importlib.import_module(module), cls)


def targets(policy: str, npages: int) -> Targets:
    """=> the targets of the profile's PD_POLICY for a machine of npages frames."""
    if policy.startswith("python:"):
        found: Targets = user_policy_class(policy)().tune(npages)
        return found
    return SHIPPED_TARGETS[policy](npages)
