"""net.*: the mbuf network driver: sockets, sends (loaned or copied), the link and the wire.

A send returns when its data is queued, as write(2) does: from then on the
receiver gets exactly what the sender's memory held at that moment, whatever
the sender does next. The driver transmits queued mbufs at the link's speed.

The wire is per session (since 1.3): a session that listens (net.listen)
gets its own sockets' mbufs, and only those, by long polling (net.recv);
nothing carrying a payload is published on any PUB. The operator's tap
(net.tap_listen / net.tap_recv, kernel endpoint) sees every mbuf. A queue
holds at most the wire_bytes limit, and every queue together at most
wire_total (beyond it the largest queue loses its oldest): dropped mbufs are
counted (`dropped`), so a receiver that does not read never holds up the
driver or anyone else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, ClassVar, cast

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

    => asid: a live process of the calling session (else ESRCH, alike for an
       unknown process and another session's).
    => sndbuf: the send buffer's size in bytes; a send waits while it is full.
    => at most the sockets limit per session (EMFILE beyond); a closed socket
       counts until its queued data has left.
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
    many pages were loaned and bytes copied. Errnos: EFAULT (bad buffer), EBADF
    (no such socket of this session, or it was closed, also during the send).
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
    """Close a socket; data already queued is still transmitted (and its loans
    returned); a send waiting on it fails with EBADF. (1.2)

    => EBADF if the session has no such open socket (closing twice). Sockets
       are also closed when their process exits or is reaped, and at detach.
    """

    scope: ClassVar[Scope] = Scope.USER
    sock: SockId


class NetMark(Request, frozen=True, kw_only=True, tag="net.mark"):
    """Withdrawn in 1.3 (ENOSYS): it proved a PUB subscription to the wire live;
    the wire is now request/reply (net.listen). Kept so 1.2 encodings decode. (1.2)"""

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
    """Not published since 1.3 (the wire is per session: see net.recv); kept so
    1.2 encodings decode. (1.2)"""

    session: int
    asid: int
    sock: int
    seq: int
    off: int
    total: int
    payload: bytes
    loaned: bool


class WirePacket(msgspec.Struct, frozen=True, kw_only=True):
    """One mbuf as the wire carried it: bytes [off, off + len(payload)) of send
    `seq` (of `total` bytes) on socket `sock` of process `asid` of session
    `session`; `loaned`: its storage was loaned pages (zero copy). Mbufs of one
    socket come in send order. `frames` (1.8, in a reply to net.recv with `frames`):
    the payload is not in the message but in the next `frames` ZeroMQ frames after
    it (payload empty; the packets' frames in packet order)."""

    session: int
    asid: int
    sock: int
    seq: int
    off: int
    total: int
    payload: bytes
    loaned: bool
    frames: Annotated[int, msgspec.Meta(ge=0, le=1 << 16)] = 0


MaxPackets = Annotated[int, msgspec.Meta(ge=1, le=4096)]
WaitMs = Annotated[int, msgspec.Meta(ge=0, le=5000)]
TapId = Annotated[int, msgspec.Meta(ge=1, le=(1 << 31) - 1)]


class NetListen(Request, frozen=True, kw_only=True, tag="net.listen"):
    """Start queueing this session's mbufs for it (idempotent). (1.3)

    => from the reply on, every mbuf of the session's sockets that reaches the
       wire is queued for net.recv (mbufs before it are not). The queue ends at
       net.unlisten or when the session ends. Reply: ack.
    """

    scope: ClassVar[Scope] = Scope.USER


class NetRecv(Request, frozen=True, kw_only=True, tag="net.recv"):
    """Take up to max_packets of this session's queued mbufs (a long poll). (1.3)

    => answers at once when mbufs are queued, else waits up to wait_ms for one
       (an empty reply when none came). A reply carries at most about 1 MiB of
       payload (at least one mbuf). EINVAL if the session is not listening.
    Reply: NetRecvReply.
    """

    scope: ClassVar[Scope] = Scope.USER
    max_packets: MaxPackets = 256
    wait_ms: WaitMs = 1000
    #: (1.8) each payload travels as its own ZeroMQ frame after the reply's message
    #: (WirePacket.frames), read from RAM by the send itself (no copy in between);
    #: for clients that read multipart replies (machine.client over ZeroMQ).
    frames: bool = False


class NetRecvReply(Reply, frozen=True, kw_only=True, tag="net.recv.reply"):
    """`packets`: WirePacket {session, asid, sock, seq, off, total, payload,
    loaned}, oldest first; `dropped`: mbufs dropped from this queue (the oldest,
    when it held more than the wire_bytes limit or was the largest when every
    queue together held wire_total) since the last reply."""

    packets: list[WirePacket] = msgspec.field(default_factory=list)
    dropped: int = 0


class NetUnlisten(Request, frozen=True, kw_only=True, tag="net.unlisten"):
    """Stop queueing this session's mbufs; what was queued is discarded
    (idempotent). (1.3) Reply: ack."""

    scope: ClassVar[Scope] = Scope.USER


class NetTapListen(Request, frozen=True, kw_only=True, tag="net.tap_listen"):
    """The operator's tap: a queue of every mbuf of every session. (1.3)

    => kernel endpoint (the machine's own tools: scenarios, the wire check).
       EAGAIN when the machine holds its limit of taps.
    Reply: NetTapListenReply with the tap's id.
    """


class NetTapListenReply(Reply, frozen=True, kw_only=True, tag="net.tap_listen.reply"):
    tap: int = 0


class NetTapRecv(Request, frozen=True, kw_only=True, tag="net.tap_recv"):
    """net.recv for a tap. (1.3) => EINVAL for an unknown tap. Reply: NetRecvReply."""

    tap: TapId
    max_packets: MaxPackets = 256
    wait_ms: WaitMs = 1000


class NetTapUnlisten(Request, frozen=True, kw_only=True, tag="net.tap_unlisten"):
    """End a tap (idempotent). (1.3) Reply: ack."""

    tap: TapId


def attach_frames(rep: Reply, frames: Sequence[bytes | memoryview]) -> Reply:
    """A reply to net.recv with `frames`, its packets' payloads put back from the frames
    that came after it (a payload of one frame is that frame: no copy). Any other reply
    is returned as it is. => ValueError when the frames do not match the packets."""
    if not isinstance(rep, NetRecvReply):
        return rep
    out: list[WirePacket] = []
    i = 0
    for pkt in rep.packets:
        n = pkt.frames
        if n:
            parts = frames[i : i + n]
            if len(parts) != n:
                raise ValueError("a net.recv reply has fewer frames than its packets say")
            i += n
            payload = parts[0] if n == 1 else b"".join(parts)
            pkt = msgspec.structs.replace(pkt, payload=cast(bytes, payload), frames=0)
        out.append(pkt)
    if i != len(frames):
        raise ValueError("a net.recv reply has more frames than its packets say")
    return msgspec.structs.replace(rep, packets=out)
