"""The net role: the mbuf driver and its link.

For now it brings its link up (net.link_up) and answers hello/ping/stats;
sockets, the loan send path and the wire arrive with the zero-copy issue.

Recovery contract: in-flight mbufs are dropped on restart and uvm drops the
kernel loans of the dead incarnation (not yet exercised: a dead role is a
machine panic).
"""

from __future__ import annotations

from typing import Any, ClassVar

from machine.ipc.service import Service
from machine.proto import NetLinkUp, Request

DEFAULT_BANDWIDTH_BPS = 1_000_000_000
DEFAULT_LATENCY_US = 50


class NetService(Service):
    role: ClassVar[str] = "net"
    serves: ClassVar[tuple[type[Request], ...]] = ()

    def __init__(self, transport: Any, **kw: Any) -> None:
        super().__init__(transport, **kw)
        self.bandwidth_bps = DEFAULT_BANDWIDTH_BPS
        self.latency_us = DEFAULT_LATENCY_US

    async def link_up(self) -> None:
        self.publish(
            NetLinkUp(
                h=self.event_header(), bandwidth_bps=self.bandwidth_bps, latency_us=self.latency_us
            )
        )

    def counters(self) -> dict[str, int]:
        return {"sockets": 0, "mbufs": 0, "tx_packets": 0, "tx_bytes": 0}
