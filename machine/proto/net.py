"""net.*: the mbuf network driver's messages (sockets and sends arrive with loans)."""

from __future__ import annotations

from machine.proto.base import Event


class NetLinkUp(Event, frozen=True, kw_only=True, tag="net.link_up"):
    """The driver's link came up; published once at start."""

    bandwidth_bps: int
    latency_us: int
