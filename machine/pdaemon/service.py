"""The page daemon role: woken by uvm's pressure events or pd.wakeup.

For now the daemon only wakes, counts (pdwoke) and reports (pd.woke); the
scan policies of uvm-semantics.md section 7 arrive with the page-daemon
issue. It never owns page state: uvm is the authority.

Recovery contract: holds only policy state; a restarted daemon would re-read
the queues from uvm (not yet exercised: a dead role is a machine panic).
"""

from __future__ import annotations

from typing import Any, ClassVar

from machine.ipc.service import Service
from machine.ipc.transport import Subscription
from machine.proto import PdWakeup, PdWoke, Reply, Request, UvmPressure, decode_event


class PdaemonService(Service):
    role: ClassVar[str] = "pdaemon"
    serves: ClassVar[tuple[type[Request], ...]] = (PdWakeup,)

    def __init__(self, transport: Any, **kw: Any) -> None:
        super().__init__(transport, **kw)
        self.pdwoke = 0
        self.last_free = 0
        self._sub: Subscription | None = None

    async def watch_uvm(self, uvm_pub: str) -> None:
        self._sub = await self.transport.subscribe(uvm_pub, "uvm.pressure", self._on_event)

    def _on_event(self, raw: bytes) -> None:
        try:
            ev = decode_event(raw)
        except Exception:
            return
        if isinstance(ev, UvmPressure) and self.state == "running":
            self._woke("pressure", ev.free)

    def _woke(self, reason: str, free: int) -> None:
        self.pdwoke += 1
        self.last_free = free
        self.trace.append(f"woke: {reason} free={free}")
        self.publish(PdWoke(h=self.event_header(), reason=reason, free=free))

    def on_wakeup(self, msg: PdWakeup) -> Reply:
        self._woke("wakeup", self.last_free)
        return self.ack(msg)

    def counters(self) -> dict[str, int]:
        return {"pdwoke": self.pdwoke, "pdscans": 0, "pdfreed": 0}

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.close()
        await super().close()
