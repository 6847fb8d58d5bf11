"""The page daemon role: woken by uvm's pressure events or pd.wakeup, it scans.

Each wakeup runs passes (machine.pdaemon.daemon.run_pass) with the profile's
policy (PD_POLICY: scan1999 or clock): the first when the policy needs a scan,
the next ones while an allocation would kick the daemon again
(machine.pdaemon.daemon.kicked, uvm_kick_pdaemon), until a pass makes no
progress, or MAX_PASSES. It talks to uvm (snapshot, claim, finish)
and to the mmu (reference bits, revocation) over the kernel bus; it never owns
page state (uvm is the authority). Counters: pdwoke (wakeups), pdrevs (passes),
pdscans (pages examined), pdreact, pddeact, pdfreed, pdpageouts, pdbusy (actions
uvm refused at claim: the page had changed).

Recovery contract: holds only policy state; a restarted daemon re-reads the
queues from uvm (not yet exercised: a dead role is a machine panic).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from machine.ipc.service import Service
from machine.ipc.transport import Subscription
from machine.pdaemon.clock import ClockPolicy
from machine.pdaemon.daemon import run_pass
from machine.pdaemon.policy import PagePolicy
from machine.pdaemon.scan1999 import Scan1999
from machine.profile import Profile
from machine.proto import (
    NO_HEADER,
    PdWakeup,
    PdWoke,
    PmapAttrs,
    PmapAttrsReply,
    PmapCountReply,
    PmapPageProtect,
    Reply,
    Request,
    UvmPdClaim,
    UvmPdClaimReply,
    UvmPdFinish,
    UvmPdFinishReply,
    UvmPdSnapshot,
    UvmPdSnapshotReply,
    UvmPressure,
    decode_event,
)
from machine.proto.pageinfo import PFN_BATCH, pack_attrs
from machine.tuning import user_policy_class

MAX_PASSES = 32
POLICIES: dict[str, type[Any]] = {"scan1999": Scan1999, "clock": ClockPolicy}
COUNTERS = ("pdwoke", "pdrevs", "pdscans", "pdreact", "pddeact", "pdfreed", "pdpageouts", "pdbusy")


def load_policy(name: str) -> PagePolicy:
    """A shipped policy by name, or a user's own: "python:package.module:ClassName"."""
    if name.startswith("python:"):
        policy: PagePolicy = user_policy_class(name)()
        return policy
    return POLICIES[name]()  # type: ignore[no-any-return]


class RemoteDaemonOps:
    """DaemonOps over the kernel bus: uvm for page state, mmu for bits and revocation."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc

    async def snapshot(self, limit: int) -> dict[str, Any]:
        rep = await self.svc.peers["uvm"].call_ok(
            UvmPdSnapshot(h=NO_HEADER, limit=limit), UvmPdSnapshotReply
        )
        return {
            k: getattr(rep, k)
            for k in (
                "free",
                "npages",
                "paging",
                "swpages",
                "swpginuse",
                "swpgonly",
                "active",
                "inactive",
                "nactive",
                "ninactive",
            )
        }

    async def claim(self, items: list[tuple[str, int]]) -> list[int]:
        rep = await self.svc.peers["uvm"].call_ok(
            UvmPdClaim(h=NO_HEADER, items=items), UvmPdClaimReply
        )
        return rep.claimed

    async def finish(self, items: list[tuple[str, int]]) -> dict[str, int]:
        rep = await self.svc.peers["uvm"].call_ok(
            UvmPdFinish(h=NO_HEADER, items=items), UvmPdFinishReply
        )
        return rep.done

    async def attrs(self, pfns: list[int], clear_ref: bool, clear_mod: bool) -> list[int]:
        out: list[int] = []
        for i in range(0, len(pfns), PFN_BATCH):
            rep = await self.svc.peers["mmu"].call_ok(
                PmapAttrs(
                    h=NO_HEADER,
                    pfns=pfns[i : i + PFN_BATCH],
                    clear_reference=clear_ref,
                    clear_modify=clear_mod,
                ),
                PmapAttrsReply,
            )
            out += pack_attrs(rep.referenced, rep.modified)
        return out

    async def page_protect(self, pfns: list[int], prot: int, why: str = "") -> int:
        n = 0
        for i in range(0, len(pfns), PFN_BATCH):
            rep = await self.svc.peers["mmu"].call_ok(
                PmapPageProtect(h=NO_HEADER, pfns=pfns[i : i + PFN_BATCH], prot=prot, why=why),
                PmapCountReply,
            )
            n += rep.count
        return n


class PdaemonService(Service):
    role: ClassVar[str] = "pdaemon"
    serves: ClassVar[tuple[type[Request], ...]] = (PdWakeup,)

    def __init__(
        self, transport: Any, *, profile: Profile, uvm: str, mmu: str, uvm_pub: str, **kw: Any
    ) -> None:
        """uvm, mmu: the roles' kernel endpoints; uvm_pub: where uvm.pressure comes from."""
        super().__init__(transport, **kw)
        self.profile = profile
        self.peer("uvm", uvm)
        self.peer("mmu", mmu)
        self.uvm_pub = uvm_pub
        self.policy: PagePolicy = load_policy(self.profile.settings.pd_policy)
        self.stats = dict.fromkeys(COUNTERS, 0)
        self.last_free = 0
        self._sub: Subscription | None = None
        self._running: asyncio.Task[None] | None = None
        self._again = False

    async def connect(self) -> None:
        """Open uvm and mmu, then wake on uvm.pressure."""
        await super().connect()
        self._sub = await self.subscribe("uvm", self.uvm_pub, "uvm.pressure", self._on_event)

    def _on_event(self, raw: bytes) -> None:
        try:
            ev = decode_event(raw)
        except Exception:
            return
        if isinstance(ev, UvmPressure) and self.state == "running":
            self._woke("pressure", ev.free)

    def _woke(self, reason: str, free: int) -> None:
        self.stats["pdwoke"] += 1
        self.last_free = free
        self.trace.append(f"woke: {reason} free={free}")
        self.recorder.note("woke", reason=reason, free=free)
        self.publish(PdWoke(h=self.event_header(), reason=reason, free=free))
        if self._running is not None and not self._running.done():
            self._again = True  # scan once more when this run ends
            return
        self._running = self.spawn(self._scan(), "scan")

    async def _scan(self) -> None:
        ops = RemoteDaemonOps(self)
        while True:
            self._again = False
            for n in range(MAX_PASSES):
                if self.state != "running":
                    return
                self.recorder.note("pass", n=n, again=self._again)
                out = await run_pass(ops, self.policy, self.profile.settings, again=n > 0)
                self.recorder.note("pass done", n=n, **out)
                for k, v in out.items():
                    self.stats[k] = self.stats.get(k, 0) + v
                progress = sum(out.get(k, 0) for k in ("pddeact", "pdfreed", "pdpageouts"))
                if not out or not progress:  # no scan needed, or nothing could be done
                    break
            if not self._again:
                return

    def on_wakeup(self, msg: PdWakeup) -> Reply:
        self._woke("wakeup", self.last_free)
        return self.ack(msg)

    def counters(self) -> dict[str, int]:
        scanning = self._running is not None and not self._running.done()
        return {**self.stats, "scanning": int(scanning)}

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.close()
        await super().close()
