"""Sockets: the records of net's sockets, their descriptors, their close and their free.

A socket (NetBSD's `struct socket` with its send buffer) belongs to one process of one
client session. Its descriptor is closed (soclose) by net.close, by its process's exit
or reaping (fdfree) and by its session's detach; its record lives on until nothing
refers to it, then is freed (sofree). A session holds at most `limits.sockets` records
(EMFILE): a closed socket counts until its data has left.

Invariants:
  * 0 <= so.cc (sb_cc: bytes queued, not yet on the wire) <= so.sndbuf;
  * an open socket is in `open_by_asid[so.asid]`; a closed one in no set;
  * a record is freed exactly once, when it is closed, sb_cc is 0, its loaned mbufs
    are freed (`loans`) and no send holds it (`sends`); then `records` of its session
    goes down by one (and the session's entry goes with its last record);
  * lookups of another session's socket, a closed one and none are alike: EBADF.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from machine.net.knobs import new_stats
from machine.net.synch import WaitChannel
from machine.proto import Errno, UserError


@dataclass(eq=False)
class Socket:
    id: int
    session: int
    asid: int
    sndbuf: int
    cc: int = 0  # bytes queued and not yet on the wire (sb_cc)
    next_seq: int = 1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # sblock: one send at a time
    closed: bool = False  # no descriptor any more (soclose); the record may still drain
    loans: int = 0  # loaned mbufs not yet freed by sopendfree
    sends: int = 0  # net.send requests holding (or waiting for) the socket

    @property
    def space(self) -> int:
        """sbspace: bytes the send buffer has room for."""
        return self.sndbuf - self.cc


class SocketTable:
    """Every socket record, open or draining, and the open ones of each process."""

    def __init__(
        self,
        chan: WaitChannel,
        stats: dict[str, int] | None = None,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.chan = chan  # woken when a socket closes (a send sleeping on it fails)
        self.stats = stats if stats is not None else new_stats()
        self.log = log
        self.sockets: dict[int, Socket] = {}
        self._ids = itertools.count(1)
        self._open_by_asid: dict[int, set[Socket]] = {}
        self._records: collections.Counter[int] = collections.Counter()  # session -> records

    def __len__(self) -> int:
        return len(self.sockets)

    def records(self, session: int) -> int:
        return self._records[session]

    def open_asids(self) -> list[int]:
        """The processes with an open socket, in order."""
        return sorted(self._open_by_asid)

    def socreate(self, session: int, asid: int, sndbuf: int, limit: int) -> Socket:
        """A new open socket of process asid (whose owner the caller checked).
        => EMFILE when the session holds `limit` records."""
        if self._records[session] >= limit:
            raise UserError(Errno.EMFILE, f"the session holds its limit of {limit} sockets")
        so = Socket(next(self._ids), session, asid, sndbuf)
        self.sockets[so.id] = so
        self._records[session] += 1
        self._open_by_asid.setdefault(asid, set()).add(so)
        return so

    def lookup(self, sid: int, session: int) -> Socket:
        """The session's open socket sid. => EBADF, alike for no such socket, a closed
        one and another session's (the reply does not tell whether it exists)."""
        so = self.sockets.get(sid)
        if so is None or so.closed or so.session != session:
            raise UserError(Errno.EBADF, f"no socket {sid}")
        return so

    def soclose(self, so: Socket, why: str) -> None:
        """The descriptor goes: no more sends; what is queued still leaves. Idempotent."""
        if so.closed:
            return
        so.closed = True
        self.stats["soclosed"] += 1
        opened = self._open_by_asid.get(so.asid)
        if opened is not None:
            opened.discard(so)
            if not opened:
                del self._open_by_asid[so.asid]
        self.log(f"soclose socket {so.id} of process {so.asid}: {why}")
        self.chan.wakeup()  # a send sleeping for space on it fails
        self.sofree(so)

    def sofree(self, so: Socket) -> None:
        """Free a closed socket's record once nothing refers to it any more."""
        if not so.closed or so.cc or so.loans or so.sends or so.id not in self.sockets:
            return
        del self.sockets[so.id]
        self._records[so.session] -= 1
        if self._records[so.session] <= 0:
            del self._records[so.session]
        self.stats["sofreed"] += 1

    def process_exited(self, asid: int, why: str) -> None:
        """Exit closes every descriptor of the process (fdfree)."""
        for so in sorted(self._open_by_asid.get(asid, ()), key=lambda so: so.id):
            self.soclose(so, why)
