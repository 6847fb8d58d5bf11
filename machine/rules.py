"""The era rules: every difference between the eras as a named decision the cores ask.

NetBSD's UVM changed what a loan does to a page twice (uvm-semantics.md
sections 4.2, 5, 7; the ERA knob of section 13). Rather than compare the era's
name, a core asks the rule it depends on: `rules.loan_wires`, not
`era == "1999"`. Each era is one row of ERA_RULES; adding an era is adding a
row (and a profile that names it), and a new difference is one field here
plus the one place in a core that asks it.

The fault-injection knobs that the uvm core acts on (QUEUE_INVARIANT,
PPP_WIRED=panic, LOAN_KVA, REQUEUE_FIX=missing) are rules too, filled from the
profile's settings (machine.profile.Settings.rules).

Invariant: a Rules is immutable and built once per role, from a validated
profile; no core holds an era name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class Era(enum.StrEnum):
    """The ERA knob: which NetBSD the machine's VM behaves like."""

    Y1999 = "1999"
    Y2002 = "2002"
    MODERN = "modern"


@dataclass(frozen=True, kw_only=True)
class Rules:
    """The decisions that differ between eras (and the injected faults uvm acts on)."""

    era: Era
    #: A loan to the kernel is a wiring: uvm_pagewire on loan, uvm_pageunwire on unloan
    #: (1999). The zero page a zero loan gets is wired too.
    loan_wires: bool
    #: A loan to the kernel takes the page off the paging queues (uvm_pagedequeue, 2002).
    loan_dequeues: bool
    #: Loaning a wired page is refused with EBUSY (sosend then copies); a loaned page
    #: stays on its paging queue (modern).
    loan_refuses_wired: bool
    #: Zero loans share one page of uvm_loanzero_object, never queued or freed (modern);
    #: otherwise each zero loan gets a fresh zeroed ownerless page.
    zero_loans_share_one_page: bool
    #: Object pages can be loaned to anons (O->A); modern compiles it out (EINVAL).
    loans_obj_to_anon: bool
    #: A loaned page its owner frees (an orphan) leaves the paging queues unless an anon
    #: still borrows it (2002+); 1999 leaves it where it was.
    orphan_dequeued: bool
    #: The last kernel loan of a page an anon or object still holds puts it back on a
    #: paging queue (2002, [cvs139]).
    unloan_requeues: bool
    #: uvm_unloanpage hands an orphan to the anon that borrows it (2002+).
    unloan_adopts: bool
    #: The page daemon's claim re-checks wiring before it deactivates an active page
    #: (modern); 1999 and 2002 trust "active => not wired" (the thread's bug, reachable
    #: when the queue invariant is broken). Thorpe's diff (PD_WIRED_CHECK=skip_wired)
    #: sets it too: NetBSD's daemon tested wiring and deactivated under one lock, and
    #: our daemon decides on a snapshot, so its skip must hold where the decision is
    #: atomic, the claim (without it `uvm-machine explore` finds a page wired by a loan
    #: after the snapshot deactivated anyway: thorpe seed 0 run 42).
    claim_rechecks_wiring: bool
    #: QUEUE_INVARIANT=violated: a page a 1999 loan wires is left on the active queue.
    inject_queue_violation: bool = False
    #: PPP_WIRED=panic (Silvers): uvm panics before pmap_page_protect of a wired page.
    page_protect_panics_on_wired: bool = False
    #: LOAN_KVA=kernel_object (1999 uvm_km_valloc): a kernel fault in loan KVA is
    #: "resolved" with a fresh zero page (silent corruption) instead of a panic.
    kernel_fault_zero_fills: bool = False

    @classmethod
    def of(
        cls,
        era: Era,
        *,
        inject_queue_violation: bool = False,
        page_protect_panics_on_wired: bool = False,
        kernel_fault_zero_fills: bool = False,
        requeue_fix_missing: bool = False,
        pd_skips_wired: bool = False,
    ) -> Rules:
        """=> the era's row of ERA_RULES with the given injection rules set;
        requeue_fix_missing (REQUEUE_FIX=missing) takes [cvs139] out of the era;
        pd_skips_wired (PD_WIRED_CHECK=skip_wired, Thorpe's diff) makes the claim
        re-check wiring too (see claim_rechecks_wiring)."""
        row = ERA_RULES[era]
        return replace(
            row,
            inject_queue_violation=inject_queue_violation,
            page_protect_panics_on_wired=page_protect_panics_on_wired,
            kernel_fault_zero_fills=kernel_fault_zero_fills,
            unloan_requeues=row.unloan_requeues and not requeue_fix_missing,
            claim_rechecks_wiring=row.claim_rechecks_wiring or pd_skips_wired,
        )


ERA_RULES: dict[Era, Rules] = {
    Era.Y1999: Rules(
        era=Era.Y1999,
        loan_wires=True,
        loan_dequeues=False,
        loan_refuses_wired=False,
        zero_loans_share_one_page=False,
        loans_obj_to_anon=True,
        orphan_dequeued=False,
        unloan_requeues=False,
        unloan_adopts=False,
        claim_rechecks_wiring=False,
    ),
    Era.Y2002: Rules(
        era=Era.Y2002,
        loan_wires=False,
        loan_dequeues=True,
        loan_refuses_wired=False,
        zero_loans_share_one_page=False,
        loans_obj_to_anon=True,
        orphan_dequeued=True,
        unloan_requeues=True,
        unloan_adopts=True,
        claim_rechecks_wiring=False,
    ),
    Era.MODERN: Rules(
        era=Era.MODERN,
        loan_wires=False,
        loan_dequeues=False,
        loan_refuses_wired=True,
        zero_loans_share_one_page=True,
        loans_obj_to_anon=False,
        orphan_dequeued=True,
        unloan_requeues=False,
        unloan_adopts=True,
        claim_rechecks_wiring=True,
    ),
}
