"""Machine: the entry point of the client library, a Session that makes processes.

    async with Machine.attach("tcp://127.0.0.1:7700") as m:
        p = await m.spawn()
        f = await m.open("data", create=True, size=1 << 20)
        async with m.wire() as w: ...

Invariants: `attach` always closes what it opened (detach, peers, the
transport it made), whether the body returns, raises, or the machine
panicked; `processes` holds exactly the session's processes that have not
exited (spawn and fork add, exit removes).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from machine.client.process import File, Process
from machine.client.session import Session
from machine.client.wire import Wire
from machine.ipc.transport import Transport
from machine.ipc.zmqtransport import ZmqTransport
from machine.proto import NO_HEADER, O_RDWR, UvmOpen, UvmOpenReply, UvmSpawn, UvmSpawnReply

_H = NO_HEADER


class Machine(Session):
    """One attachment (session) to a running machine."""

    def __init__(
        self,
        transport: Transport,
        endpoint: str,
        *,
        timeout_s: float = 30.0,
        own_transport: bool = False,
    ) -> None:
        super().__init__(transport, endpoint, timeout_s=timeout_s, own_transport=own_transport)
        self.processes: dict[int, Process] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def attach(
        cls,
        endpoint: str,
        *,
        transport: Transport | None = None,
        timeout_s: float = 30.0,
        keepalive: bool = True,
    ) -> AsyncIterator[Machine]:
        """Attach (async context manager); detaches on the way out."""
        own = transport is None
        if transport is None:
            transport = ZmqTransport()
        m = cls(transport, endpoint, timeout_s=timeout_s, own_transport=own)
        try:
            await m.connect(keepalive=keepalive)
            yield m
        finally:
            await m.close()

    async def spawn(self) -> Process:
        """Create an emulated process with an empty address space."""
        rep = await self.call_role("uvm", UvmSpawn(h=_H), UvmSpawnReply)
        return Process(self, rep.asid, self.processes)

    async def open(
        self, name: str, create: bool = False, size: int | None = None, flags: int = O_RDWR
    ) -> File:
        """open(2) of a file under the machine's disk/ directory, for mmap. flags:
        O_RDONLY, O_WRONLY or O_RDWR with O_CREAT, O_TRUNC, O_EXCL (create: O_CREAT)."""
        rep = await self.call_role(
            "uvm",
            UvmOpen(h=_H, name=name, create=create, size=-1 if size is None else size, flags=flags),
            UvmOpenReply,
        )
        return File(self, rep.handle, name, rep.size)

    def wire(self) -> Wire:
        """A receiver of this session's packets on the wire (see Wire)."""
        return Wire(self)
