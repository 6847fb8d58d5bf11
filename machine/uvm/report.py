"""What uvm reports about itself: its counters (ctl.stats, status) and its crash-dump state.

Read-only views of the VM state (machine.uvm.state.Uvm): nothing here changes it,
so a report can be taken at any time, after a panic included.

Counters, beside the event counters of machine.uvm.stats: the live objects
(processes, sessions, map entries, anons, objects), the swap device's, and
`share_refused_maxproc` / `share_refused_maxentries`, the requests the fair
shares refused (machine.share; the ipc layer adds `share_refused_inflight`).
"""

from __future__ import annotations

from typing import Any

from machine.uvm.audit import held_frames, static_audit, strays
from machine.uvm.state import Uvm


def counters(vm: Uvm, sessions: int) -> dict[str, int]:
    """=> every counter uvm reports (ctl.stats, the status of `uvm-machine status`)."""
    out = {
        **vm.stats.as_dict(),
        "processes": len(vm.spaces),
        "sessions": sessions,
        "map_entries": vm.entry_pool.nentries,
        "anons": len(vm.anons),
        "objects": len(vm.objects),
        "share_refused_maxproc": vm.procs.refused,
        "share_refused_maxentries": vm.entry_pool.share.refused,
    }
    if vm.swap is not None:
        out |= {
            "swpages": vm.swap.swpages,
            "swpginuse": vm.swap.swpginuse,
            "swpgonly": vm.swap.swpgonly,
            "pgswapin": vm.swap.pgswapin,
            "pgswapout": vm.swap.pgswapout,
        }
    return out


def dump_state(vm: Uvm) -> dict[str, Any]:
    """=> the VM state a crash dump holds: frames, every map's entries (with up to 512
    anons each), the page checks, the auditor's static checks (`audit`), stray and held
    frames (an anon's frame with the anon's `anon_ref`), and dmesg."""
    held = held_frames(vm.pages)
    for page in held.values():
        anon = page.get("anon")
        if isinstance(anon, int) and anon in vm.anons:
            page["anon_ref"] = vm.anons[anon].ref
    small = vm.pages.npages <= 1 << 16
    return {
        "frames": vm.frames(),
        "spaces": {
            str(a): {
                "owner": sp.owner,
                "entries": [
                    {
                        "start": e.start,
                        "end": e.end,
                        "prot": e.prot.letters(),
                        "cow": e.cow,
                        "needs_copy": e.needs_copy,
                        "wired": e.wired_count,
                        "object": e.obj.id if e.obj is not None else None,
                        "anons": {
                            str(e.start + (s << 12)): [an.id, an.ref, an.page]
                            for s, an in e.anons()[:512]
                        },
                    }
                    for e in sp.map.entries
                ],
            }
            for a, sp in vm.spaces.items()
        },
        "page_check": vm.pages.check() if small else [],
        "audit": static_audit(vm) if small else [],
        "strays": strays(vm.pages),
        "held": held,
        "dmesg": list(vm.dmesg),
    }
