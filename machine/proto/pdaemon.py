"""pd.*: the page daemon's messages."""

from __future__ import annotations

from machine.proto.base import Event, Request


class PdWakeup(Request, frozen=True, kw_only=True, tag="pd.wakeup"):
    """Wake the page daemon (uvm_wait / pagealloc low water).

    => kernel endpoint. Reply: CtlAck.
    """


class PdWoke(Event, frozen=True, kw_only=True, tag="pd.woke"):
    """The daemon woke up; `reason` says why (pressure event or explicit wakeup)."""

    reason: str
    free: int = 0
