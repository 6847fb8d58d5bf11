"""net.*: the mbuf network driver: sockets, sends (loaned or copied), the link and the wire.

A send returns when its data is queued, as write(2) does: from then on the
receiver gets exactly what the sender's memory held at that moment, whatever
the sender does next. The driver transmits queued mbufs at the link's speed
and publishes each one on the wire (net.packet).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from machine.proto.base import Event, Reply, Request, Scope
from machine.proto.types import Asid, Va

SockId = Annotated[int, msgspec.Meta(ge=1, le=(1 << 31) - 1)]


class NetLinkUp(Event, frozen=True, kw_only=True, tag="net.link_up"):
    """The driver's link came up; published once at start."""

    bandwidth_bps: int
    latency_us: int


class NetSocket(Request, frozen=True, kw_only=True, tag="net.socket"):
    """Create a datagram-like socket for process asid (socket(2)). (1.2)

    => sndbuf: the send buffer's size in bytes; a send waits while it is full.
    Reply: NetSocketReply with the socket id.
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    sndbuf: Annotated[int, msgspec.Meta(ge=4096, le=1 << 30)] = 1 << 20


class NetSocketReply(Reply, frozen=True, kw_only=True, tag="net.socket.reply"):
    sock: int = 0


class NetSend(Request, frozen=True, kw_only=True, tag="net.send"):
    """Send n bytes from va of process asid on sock (sosend). (1.2)

    => at or above the profile's LOAN_THRESHOLD (and with that much buffer
       space) the pages are loaned to the kernel in 64 KiB chunks and mapped
       read-only at loan KVA (zero copy); below it, or when the loan is
       refused, the bytes are copied in.
    => returns once every byte is queued; waits while the send buffer is full
       or loan KVA is exhausted.
    Reply: NetSendReply with the sequence number the wire will carry, and how
    many pages were loaned and bytes copied. Errnos: EFAULT (bad buffer), EBADF.
    """

    scope: ClassVar[Scope] = Scope.USER
    asid: Asid
    sock: SockId
    va: Va
    n: Annotated[int, msgspec.Meta(ge=1, le=1 << 30)]


class NetSendReply(Reply, frozen=True, kw_only=True, tag="net.send.reply"):
    seq: int = 0
    loaned_pages: int = 0
    copied_bytes: int = 0
    messages: int = 0  # kernel messages the send path used


class NetClose(Request, frozen=True, kw_only=True, tag="net.close"):
    """Close a socket; data already queued is still transmitted. (1.2)"""

    scope: ClassVar[Scope] = Scope.USER
    sock: SockId


class NetMark(Request, frozen=True, kw_only=True, tag="net.mark"):
    """Ask the driver to publish net.marked with this token (a wire subscriber's
    proof that its subscription is live). (1.2)"""

    scope: ClassVar[Scope] = Scope.USER
    token: Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


class NetLink(Request, frozen=True, kw_only=True, tag="net.link"):
    """Set the link: bandwidth (0 = unthrottled), latency, and hold (the driver
    stops draining the transmit queue while held, so loans stay outstanding). (1.2)

    => kernel endpoint (the operator, scenarios). Reply: ack.
    """

    bandwidth_bps: Annotated[int, msgspec.Meta(ge=0, le=1 << 40)] = 0
    latency_us: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 0
    hold: bool = False
    somaxkva: Annotated[int, msgspec.Meta(ge=0, le=1 << 34)] = 0  # 0: unchanged
    # SOCK_LOAN_CHUNK, for experiments (NetBSD: 64 KiB); 0: unchanged
    loan_chunk: Annotated[int, msgspec.Meta(ge=0, le=4 << 20, multiple_of=4096)] = 0


class NetPacket(Event, frozen=True, kw_only=True, tag="net.packet"):
    """One mbuf put on the wire: bytes [off, off + len(payload)) of send `seq` (of
    `total` bytes) on socket `sock` of process `asid` of client `session`. (1.2)"""

    session: int
    asid: int
    sock: int
    seq: int
    off: int
    total: int
    payload: bytes
    loaned: bool


class NetMarked(Event, frozen=True, kw_only=True, tag="net.marked"):
    """The answer to net.mark, on the wire. (1.2)"""

    token: int
