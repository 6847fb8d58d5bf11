"""Wire: a receiver of the machine's network wire, reassembling sends from mbufs.

    async with m.wire() as w:        # listening on entry: every later send arrives
        s = await p.socket()
        r = await p.send(s, va, 8192)     # loaned if >= LOAN_THRESHOLD
        pkt = await w.get()               # pkt.payload: memory as it was at send

A session's Wires share its feed (feed.py) and see only its own sockets'
packets; Wire.tap is the operator's receiver of every session's packets,
through net's kernel endpoint.

Invariants:
  - the mbufs of one socket arrive in send order, so at most one send per
    (session, socket) is partial at a time (`_partial`); a packet reaches the
    queue only when every byte of its send has arrived, placed by offset (its
    payloads, views of the frames they came in, joined once: one copy);
  - a partial send is discarded, and counted in `lost`, once a later send of
    the same socket arrives (net dropped the rest of it: `dropped`);
  - get() never waits past a panic or a stop of the session it belongs to:
    it raises that session's MachinePanic / MachineStopped, or the feed's
    error, or MachineTimeout after its timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from machine.client.errors import MachinePanic, MachineTimeout, RequestError
from machine.client.feed import WireFeed
from machine.client.session import Session
from machine.proto import (
    NO_HEADER,
    Errno,
    NetRecvReply,
    NetTapListen,
    NetTapListenReply,
    NetTapRecv,
    NetTapUnlisten,
    Reply,
    Request,
    Status,
    WirePacket,
)

_H = NO_HEADER

KCall = Callable[[str, Request], Awaitable[Reply]]


@dataclass(frozen=True)
class Packet:
    """One send as the wire carried it (its mbufs reassembled)."""

    session: int
    asid: int
    sock: int
    seq: int
    payload: bytes
    loaned: bool  # at least one mbuf was loaned pages (zero copy)


class Wire:
    """A receiver on the machine's wire: every send of this session's sockets, in
    order per socket (another session's packets never reach it); Wire.tap is the
    operator's receiver of every session's packets.

    async with m.wire() as w:        # listening on entry: every later send arrives
        ...
        pkt = await w.get()
    async for pkt in m.wire(): ...   # also works; listens on first use

    `dropped`: mbufs net dropped because this receiver's queue held more than the
    wire_bytes limit, or was the largest when every queue together held wire_total
    (the oldest go first); `lost`: sends that therefore never
    arrived whole (discarded once a later send of their socket arrives).
    """

    def __init__(self, m: Session | None, feed: WireFeed | None = None) -> None:
        self.m = m
        self._feed = feed
        self._q: asyncio.Queue[Packet] = asyncio.Queue()
        # (session, sock) -> (seq, (offset, payload) so far, bytes got, loaned): mbufs of
        # one socket arrive in send order, so at most one send per socket is partial.
        self._partial: dict[tuple[int, int], tuple[int, list[tuple[int, bytes]], int, bool]] = {}
        self._open = False
        self.mbufs = 0
        self.dropped = 0
        self.lost = 0

    @classmethod
    def tap(cls, kcall: KCall, m: Session | None = None) -> Wire:
        """The operator's tap: every packet of every session, through net's kernel
        endpoint (`kcall(role, request) -> reply`, as SimMachine.kcall). `m`, if
        given, is the client whose panic and stop end get()."""
        tap = 0

        async def call(req: Request, expect: type[Reply]) -> Reply:
            rep = await kcall("net", req)
            if rep.status is not Status.OK or not isinstance(rep, expect):
                if rep.errno is Errno.EPANIC:
                    raise MachinePanic(rep.detail)
                raise RequestError(rep.errno or Errno.EINVAL, rep.detail)
            return rep

        async def listen() -> None:
            nonlocal tap
            rep = await call(NetTapListen(h=_H), NetTapListenReply)
            assert isinstance(rep, NetTapListenReply)
            tap = rep.tap

        async def recv(max_packets: int, wait_ms: int) -> NetRecvReply:
            req = NetTapRecv(h=_H, tap=tap, max_packets=max_packets, wait_ms=wait_ms)
            rep = await call(req, NetRecvReply)
            assert isinstance(rep, NetRecvReply)
            return rep

        async def unlisten() -> None:
            await call(NetTapUnlisten(h=_H, tap=tap), Reply)

        return cls(m, WireFeed(listen, recv, unlisten))

    def on_recv(self, rep: NetRecvReply) -> None:
        """One poll of the feed: count net's drops, reassemble the mbufs."""
        self.dropped += rep.dropped
        for pkt in rep.packets:
            self._on_packet(pkt)

    def _on_packet(self, pkt: WirePacket) -> None:
        self.mbufs += 1
        key = (pkt.session, pkt.sock)
        part = self._partial.pop(key, None)
        if part is not None and part[0] != pkt.seq:
            self.lost += 1  # a later send: the rest of that one was dropped
            part = None
        seq, parts, got, loaned = part or (pkt.seq, [], 0, False)
        parts.append((pkt.off, pkt.payload))  # a view of the frame it came in: joined below
        got += len(pkt.payload)
        loaned = loaned or pkt.loaned
        if got >= pkt.total:
            if any(parts[i][0] > parts[i + 1][0] for i in range(len(parts) - 1)):
                parts.sort(key=lambda p: p[0])  # placed by offset
            payload = b"".join(p for _, p in parts)
            self._q.put_nowait(Packet(pkt.session, pkt.asid, pkt.sock, seq, payload, loaned))
        else:
            self._partial[key] = (seq, parts, got, loaned)

    def take(self) -> Packet | None:
        """The next complete send if one has arrived (no wait), else None."""
        return None if self._q.empty() else self._q.get_nowait()

    def _feed_of(self) -> WireFeed:
        if self._feed is None:
            assert self.m is not None
            self._feed = self.m.session_feed()
        return self._feed

    async def open(self) -> Wire:
        if not self._open:
            await self._feed_of().add(self)
            self._open = True
        return self

    async def close(self) -> None:
        if self._open:
            self._open = False
            await self._feed_of().remove(self)

    async def __aenter__(self) -> Wire:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def get(self, timeout_s: float = 30.0) -> Packet:
        """The next complete send. => MachinePanic (MachineStopped) if the machine
        panicked (stopped) meanwhile; MachineTimeout after timeout_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if not self._q.empty():
                return self._q.get_nowait()
            if self.m is not None and self.m.panic is not None:
                raise self.m.panic
            if self.m is not None and self.m.stopped is not None:
                raise self.m.stopped
            if self._feed is not None and self._feed.error is not None:
                raise self._feed.error
            try:
                return await asyncio.wait_for(self._q.get(), 0.05)
            except TimeoutError:
                if loop.time() > deadline:
                    raise MachineTimeout(f"no packet on the wire within {timeout_s} s") from None

    def __aiter__(self) -> Wire:
        return self

    async def __anext__(self) -> Packet:
        await self.open()
        return await self.get()
