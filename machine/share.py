"""Fair shares of a machine-wide cap: no session holds more than its share while others want it.

Every machine-wide cap a client can fill (inflight_total at each role, maxentries,
maxproc at uvm, mbufs and wire_total at net: machine.limits; not wiredmax) is
divided among the live sessions by one rule, so that one greedy session (or a
client with many sessions) gets refused first and the others keep working.

The rule. C = the cap; held(s) = what session s holds; total = the sum over
every session; n = the live sessions at that role PLUS ONE (uvm: the attached
sessions; mmu and net: the sessions their SessionAuth has seen and not
forgotten, machine.ipc.auth). The extra share is kept for a session that has
not asked yet: map entries and processes may never be given back, so without
it the last share could be taken for good. The fair share is f = C // n. A
request of s for k more units is granted iff

    total + k <= C   and   (held(s) + k <= f   or   total + k + reserve(s) <= C)

where reserve(s) = the sum over the other live sessions o of max(0, f - held(o)),
plus f for the newcomer: the shares the others have not claimed yet. So a
session within its share is bound by the cap only, and a session past its share
gets only what nobody else could still claim. The refusal says it was the
session's share, with the numbers (`refusal`); each caller answers it with the
resource's usual errno.

Costs: the common case (held(s) + k <= f) is a dict lookup, a len() and a
division; only a session past its share pays for reserve(), O(holders): a live
session holding nothing contributes f without being visited.

Invariants (kassert'ed by give):
  S1  total == the sum of held; every held value is > 0 (a session at 0 is
      removed, so `held` lists exactly the holders).
  S2  counters never go negative: give() of more than a session holds panics.

What the rule cannot do, stated plainly: it refuses, it never takes back. A
session past its share keeps what it got when others were idle; when sessions
attach later n grows, f shrinks, and the newcomers are guaranteed only what the
reserve kept (one share) plus what the others give back. Resources held for a
bounded time (requests in flight, copies, queued packets) come back by
themselves; map entries and processes come back when their process exits or
the session ends. `live` may overcount (a role told late that a session ended):
that only makes f smaller and keeps more aside, it never refuses a session
within the smaller share while the cap allows.
"""

from __future__ import annotations

from collections.abc import Collection

from machine.kassert import kassert


class FairShare:
    """One machine-wide cap's accountant: held units per session and the fair-share rule.

    `live` is the role's collection of live sessions (read, never changed here:
    a dict or set the role keeps anyway); `unit` names what is counted in
    refusals ("requests in flight", "map entries", ...)."""

    __slots__ = ("cap", "held", "live", "name", "refused", "total", "unit")

    def __init__(self, name: str, cap: int, live: Collection[int], unit: str) -> None:
        kassert(cap > 0, "fair share %s: cap %d <= 0", name, cap)
        self.name = name
        self.cap = cap
        self.live = live
        self.unit = unit
        self.held: dict[int, int] = {}
        self.total = 0
        #: Refusals explained by refusal() (the cap or a share): the role's
        #: `share_refused_<name>` counter in ctl.stats / status.
        self.refused = 0

    def share(self) -> int:
        """=> f, one session's fair share now: C // (live sessions + 1)."""
        return self.cap // (len(self.live) + 1)

    def grants(self, sid: int, k: int = 1) -> bool:
        """=> may session sid take k more units? (the rule; changes nothing)."""
        total = self.total + k
        if total > self.cap:
            return False
        f = self.cap // (len(self.live) + 1)
        if self.held.get(sid, 0) + k <= f:
            return True
        return total + self.reserve(sid, f) <= self.cap

    def reserve(self, sid: int, f: int) -> int:
        """=> what the other live sessions and one newcomer could still claim of their
        shares: sum of max(0, f - held(o)) over live o != sid, plus f. O(holders)."""
        live = self.live
        claimed = holders = 0
        for o, h in self.held.items():
            if o != sid and o in live:
                holders += 1
                if h < f:
                    claimed += f - h
        others = len(live) - (1 if sid in live else 0)
        return claimed + (others - holders + 1) * f

    def refusal(self, sid: int, k: int = 1) -> str:
        """=> "" when the rule grants sid k more units, else why not, with the numbers."""
        if self.grants(sid, k):
            return ""
        self.refused += 1
        if self.total + k > self.cap:
            return (
                f"the machine holds its limit of {self.cap} {self.unit} ({self.name}; "
                f"{self.total} held)"
            )
        n = len(self.live) + 1
        f = self.cap // n
        return (
            f"session {sid} is past its fair share of {self.name}: holds "
            f"{self.held.get(sid, 0)} {self.unit}, asks {k}, share {f} = {self.cap} // {n} "
            f"(live sessions + 1); {self.total} of {self.cap} held, "
            f"{self.reserve(sid, f)} kept for the others"
        )

    def take(self, sid: int, k: int = 1) -> None:
        """Count k more units held by sid (after grants(), or for what is already held)."""
        if not k:
            return
        self.held[sid] = self.held.get(sid, 0) + k
        self.total += k

    def give(self, sid: int, k: int = 1) -> None:
        """sid gives back k units. => it held at least k (S2)."""
        if not k:
            return
        h = self.held.get(sid, 0) - k
        kassert(
            h >= 0 and k > 0, "fair share %s: session %d gives %d of %d", self.name, sid, k, h + k
        )
        if h:
            self.held[sid] = h
        else:
            del self.held[sid]
        self.total -= k

    def check(self) -> list[str]:
        """=> S1/S2 violations (empty when consistent)."""
        out: list[str] = []
        if self.total != sum(self.held.values()):
            out.append(f"S1: {self.name} total {self.total} != sum of held")
        if any(h <= 0 for h in self.held.values()):
            out.append(f"S1: {self.name} holds a count <= 0")
        return out
