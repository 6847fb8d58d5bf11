"""The uvm role's service: uvm.* from clients and the kernel; calls the mmu for pmap work.

Sessions and leases: a client session is the incarnation in its headers.
Every user request renews the session's lease; a session silent for longer
than `lease_s` (it died, or its host vanished) has its processes exited, as
if each had called exit: every frame they held goes back to the free list.
A clean client detaches (uvm.detach) instead of waiting for its lease.

Recovery contract: uvm is the authority; if it dies the machine is gone
(clients see MachinePanic), so the supervisor treats its death as a panic.
"""

from __future__ import annotations

from typing import Any, ClassVar

from machine.ipc.peer import Peer
from machine.ipc.service import Service, UserError
from machine.proto import (
    NO_HEADER,
    CtlAck,
    Errno,
    Header,
    PmapCountReply,
    PmapCreate,
    PmapDestroy,
    PmapEnter,
    PmapMappings,
    PmapMappingsReply,
    PmapRemove,
    Reply,
    Request,
    UvmAudit,
    UvmAuditReply,
    UvmDetach,
    UvmDetachReply,
    UvmExit,
    UvmFault,
    UvmMmap,
    UvmMmapReply,
    UvmMunmap,
    UvmPressure,
    UvmProcExited,
    UvmSpawn,
    UvmSpawnReply,
)
from machine.proto.types import Prot
from machine.ram import Ram
from machine.uvm.audit import audit
from machine.uvm.vm import Uvm, VmError

DEFAULT_LEASE_S = 10.0


class RemotePmap:
    """PmapOps over the kernel bus: one pmap.* request per call."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def create(self, asid: int, owner: int) -> None:
        await self.peer.call_ok(PmapCreate(h=_H, asid=asid, owner=owner), CtlAck)

    async def destroy(self, asid: int) -> int:
        return (await self.peer.call_ok(PmapDestroy(h=_H, asid=asid), PmapCountReply)).count

    async def enter(self, asid: int, va: int, pfn: int, prot: int, flags: int) -> None:
        await self.peer.call_ok(
            PmapEnter(h=_H, asid=asid, va=va, pfn=pfn, prot=prot, flags=flags), CtlAck
        )

    async def remove(self, asid: int, sva: int, eva: int) -> int:
        rep = await self.peer.call_ok(PmapRemove(h=_H, asid=asid, sva=sva, eva=eva), PmapCountReply)
        return rep.count

    async def mappings(self, asid: int) -> list[tuple[int, int, int, bool]]:
        rep = await self.peer.call_ok(PmapMappings(h=_H, asid=asid), PmapMappingsReply)
        return [tuple(m) for m in rep.mappings]  # type: ignore[misc]


#: Placeholder header; Peer.call stamps the real one.
_H = NO_HEADER


class UvmService(Service):
    role: ClassVar[str] = "uvm"
    serves: ClassVar[tuple[type[Request], ...]] = (
        UvmSpawn,
        UvmMmap,
        UvmMunmap,
        UvmFault,
        UvmExit,
        UvmDetach,
        UvmAudit,
    )

    def __init__(
        self, transport: Any, *, ram: Ram, lease_s: float = DEFAULT_LEASE_S, **kw: Any
    ) -> None:
        super().__init__(transport, **kw)
        self.ram = ram
        self.lease_s = lease_s
        self.uvm: Uvm | None = None
        self.sessions: dict[int, float] = {}

    async def attach_mmu(self, endpoint: str) -> None:
        peer = await self.connect_peer("mmu", endpoint)
        self.uvm = Uvm(self.ram, RemotePmap(peer), on_pressure=self._pressure)
        self.spawn(self._reaper(), "lease reaper")

    @property
    def vm(self) -> Uvm:
        assert self.uvm is not None, "uvm not attached to an mmu"
        return self.uvm

    def _pressure(self, free: int) -> None:
        ev = UvmPressure(
            h=self.event_header(), free=free, freemin=self.vm.freemin, freetarg=self.vm.freetarg
        )
        self.publish(ev)

    # -- sessions -------------------------------------------------------------

    def user_seen(self, h: Header) -> None:
        self.sessions[h.incarnation] = self.clock.now_s()

    async def _reaper(self) -> None:
        while True:
            await self.clock.sleep(self.lease_s / 4)
            now = self.clock.now_s()
            for session, seen in list(self.sessions.items()):
                if now - seen > self.lease_s:
                    del self.sessions[session]
                    await self._end_session(session, "reaped: client lease expired")

    async def _end_session(self, session: int, reason: str) -> list[int]:
        done = []
        for asid in self.vm.asids_of(session):
            try:
                await self.vm.exit(asid, session, reason)
            except VmError:
                continue  # exited meanwhile
            done.append(asid)
            self.publish(UvmProcExited(h=self.event_header(), asid=asid, reason=reason))
        return done

    # -- handlers ---------------------------------------------------------------

    async def on_spawn(self, msg: UvmSpawn) -> Reply:
        asid = await self.vm.spawn(msg.h.incarnation)
        return self.reply(msg, UvmSpawnReply, asid=asid)

    async def on_mmap(self, msg: UvmMmap) -> Reply:
        try:
            va = await self.vm.mmap(
                msg.asid, msg.h.incarnation, msg.length, Prot(msg.prot), msg.va, msg.fixed
            )
        except VmError as e:
            raise UserError(Errno(e.errno), e.detail) from None
        return self.reply(msg, UvmMmapReply, va=va)

    async def on_munmap(self, msg: UvmMunmap) -> Reply:
        try:
            await self.vm.munmap(msg.asid, msg.h.incarnation, msg.va, msg.length)
        except VmError as e:
            raise UserError(Errno(e.errno), e.detail) from None
        return self.ack(msg)

    async def on_fault(self, msg: UvmFault) -> Reply:
        try:
            await self.vm.fault(msg.asid, msg.h.incarnation, msg.va, Prot(msg.access))
        except VmError as e:
            raise UserError(Errno(e.errno), e.detail) from None
        return self.ack(msg)

    async def on_exit(self, msg: UvmExit) -> Reply:
        try:
            await self.vm.exit(msg.asid, msg.h.incarnation)
        except VmError as e:
            raise UserError(Errno(e.errno), e.detail) from None
        self.publish(UvmProcExited(h=self.event_header(), asid=msg.asid, reason="exit"))
        return self.ack(msg)

    async def on_detach(self, msg: UvmDetach) -> Reply:
        self.sessions.pop(msg.h.incarnation, None)
        done = await self._end_session(msg.h.incarnation, "detach")
        return self.reply(msg, UvmDetachReply, exited=done)

    async def on_audit(self, msg: UvmAudit) -> Reply:
        problems = await audit(self.vm)
        return self.reply(msg, UvmAuditReply, problems=problems, checked=self.vm.pages.npages)

    # -- reporting ----------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        if self.uvm is None:
            return {}
        return {
            **self.vm.stats.as_dict(),
            "processes": len(self.vm.spaces),
            "sessions": len(self.sessions),
        }

    def frames(self) -> dict[str, int]:
        return self.vm.frames() if self.uvm is not None else {}

    def dump_state(self) -> dict[str, Any]:
        vm = self.vm
        return {
            "frames": vm.frames(),
            "spaces": {
                str(a): {
                    "owner": sp.owner,
                    "entries": [
                        {
                            "start": e.start,
                            "end": e.end,
                            "prot": e.prot.letters(),
                            "anons": {
                                str(v << 12): an.page for v, an in list(e.anons.items())[:512]
                            },
                        }
                        for e in sp.map.entries
                    ],
                }
                for a, sp in vm.spaces.items()
            },
            "page_check": vm.pages.check() if vm.pages.npages <= 1 << 16 else [],
        }
