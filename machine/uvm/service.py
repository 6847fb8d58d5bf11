"""The uvm role's service: uvm.* from clients and the kernel; calls the mmu for pmap work.

Sessions and leases: uvm makes every client session (uvm.attach: a random
public id and its key, machine.ipc.auth) and is the registry of live ones;
the Service has checked each user request's signature before it gets here;
a session uvm no longer holds (detached, reaped) gets ESESSION at every role
once told (pmap.sessions to the mmu, uvm.session_ended to net, before its
processes exit). Any user request renews the lease, at any role: uvm's at
once, the mmu's and net's in batches (pmap.sessions every lease_s / 4, net's
uvm.sessions_seen). A session silent for longer than `lease_s` has its
processes exited, as if each had called exit: its frames go back free.
A clean client detaches (uvm.detach) instead of waiting for its lease; a
spawn or fork its end overtook answers ESESSION (machine.uvm.mmap). At
most `limits.sessions` sessions live at once. An attach that finds them all
taken first reclaims the least recently seen session that holds nothing (no
process, no open file: its sockets and wire queue belong to processes and
to live sessions, so net lets them go) and has been silent for
`reclaim_idle_s`, as a listen queue drops its oldest embryonic connection;
only when none qualifies is the attach refused (EAGAIN). So a flood of
attaches that then do nothing locks nobody out for longer than
reclaim_idle_s; one that keeps every session holding a process or a file
(bounded by procs, maxproc and files) or requesting more often than that
still can, until those sessions end.

Recovery contract: uvm is the authority; if it dies the machine is gone
(clients see MachinePanic), so the supervisor treats its death as a panic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from machine.ipc import ids
from machine.ipc.peer import RemoteError
from machine.ipc.service import Service
from machine.limits import Limits
from machine.params import PAGE_SIZE
from machine.profile import Profile
from machine.proto import (
    NO_HEADER,
    CtlShutdown,
    Errno,
    Header,
    PmapSessions,
    PmapSessionsReply,
    Reply,
    Request,
    UserError,
    UvmAttach,
    UvmAttachReply,
    UvmAudit,
    UvmAuditReply,
    UvmDetach,
    UvmDetachReply,
    UvmExit,
    UvmFault,
    UvmFork,
    UvmForkReply,
    UvmKfault,
    UvmLoanChunks,
    UvmLoanChunksReply,
    UvmMmap,
    UvmMmapReply,
    UvmMprotect,
    UvmMunmap,
    UvmOwners,
    UvmOwnersReply,
    UvmPageout,
    UvmPageoutReply,
    UvmPdClaim,
    UvmPdClaimReply,
    UvmPdFinish,
    UvmPdFinishReply,
    UvmPdSnapshot,
    UvmPdSnapshotReply,
    UvmPressure,
    UvmProcExited,
    UvmSessionEnded,
    UvmSessionsSeen,
    UvmSessionsSeenReply,
    UvmSpawn,
    UvmSpawnReply,
    UvmUnloanChunks,
)
from machine.proto.types import Prot
from machine.ram import Ram
from machine.tuning import targets
from machine.uvm import files, loan, loanbatch, mmap, pdops, report
from machine.uvm.audit import audit
from machine.uvm.fault import fault
from machine.uvm.pager import flush_object, pageout
from machine.uvm.remotepmap import RemotePmap
from machine.uvm.state import Uvm
from machine.uvm.swap import SwapDevice
from machine.uvm.trap import TrapServer
from machine.uvm.vmcalls import VmCallHandlers

DEFAULT_LEASE_S = 10.0
#: An attach may reclaim a session that holds nothing once it has been silent this long
#: (and at least half its lease: a live client pings uvm every lease_s / 4, so it is never
#: taken for idle, even while it only listens on the wire or waits before its first spawn).
#: This is only done when the machine is full anyway.
RECLAIM_IDLE_S = 1.0


#: Placeholder header; Peer.call stamps the real one.
_H = NO_HEADER


class UvmService(VmCallHandlers, Service):
    role: ClassVar[str] = "uvm"
    user_errors: ClassVar[tuple[type[Exception], ...]] = (UserError,)
    serves: ClassVar[tuple[type[Request], ...]] = (
        UvmAttach,
        UvmSpawn,
        UvmMmap,
        UvmMunmap,
        UvmMprotect,
        UvmFault,
        UvmFork,
        UvmExit,
        UvmDetach,
        UvmAudit,
        UvmPageout,
        UvmPdSnapshot,
        UvmPdClaim,
        UvmPdFinish,
        UvmLoanChunks,
        UvmUnloanChunks,
        UvmKfault,
        UvmOwners,
        UvmSessionsSeen,
        *VmCallHandlers.VM_CALLS,
    )

    def __init__(
        self,
        transport: Any,
        *,
        ram: Ram,
        mmu: str,
        lease_s: float = DEFAULT_LEASE_S,
        state_dir: str = "",
        swap_bytes: int = 0,
        profile: Profile,
        limits: Limits | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(transport, limits=limits, **kw)
        self.profile, self.lease_s = profile, lease_s
        self.sessions: dict[int, float] = {}  # session -> when last seen (clock seconds)
        self.inflight.live = self.sessions  # uvm's fair shares count the attached sessions
        self.reclaim_idle_s = max(RECLAIM_IDLE_S, lease_s / 2)
        self.mmu = self.peer("mmu", mmu)  # opened by connect()
        disk = swap = None
        if state_dir:
            disk = Path(state_dir) / "disk"
            disk.mkdir(mode=0o700, parents=True, exist_ok=True)  # one user's files
            swap_pages = (swap_bytes or 2 * ram.size) // PAGE_SIZE
            swap = SwapDevice(Path(state_dir) / "swap.img", swap_pages)
        settings = self.profile.settings
        self.vm = Uvm(
            ram,
            RemotePmap(self.mmu),
            disk=disk,
            swap=swap,
            rules=self.profile.rules,
            targets=targets(settings.pd_policy, ram.nframes),
            on_pressure=self._pressure,
            note=self.recorder.note,
            diagnostic=settings.diagnostic,
            limits=self.limits,
            sessions=self.sessions,  # owner_live: attached
        )
        self.vm.inject_leak = os.environ.get("UVM_MACHINE_INJECT_LEAK") == "1"  # tests only
        self.traps = TrapServer(
            self.vm,
            self.mmu,
            failed=self._trap_failed,
            oom=self._oom,
            spawn=self.spawn,
            panicked=lambda: self.panic_message if self.state == "panicked" else "",
            log=self.trace.append,
        )

    async def connect(self) -> None:
        """Open the channel to the mmu (which serves already); start the lease reaper and
        the trap path's long poll (machine.uvm.trap)."""
        await super().connect()
        self.spawn(self._reaper(), "lease reaper")
        self.spawn(self.traps.run(), "trapwait")

    def _trap_failed(self, e: Exception) -> tuple[str, str]:
        """A fault's exception as the trap's errno; a kernel bug panics the role (as
        Service does for a request's handler)."""
        rep = self.failure(e, 0, "a trap")
        return (rep.errno or Errno.EPANIC).value, rep.detail

    def _oom(self, asid: int, owner: int) -> None:
        self.spawn(self._oom_kill(asid, owner), "oom kill")

    def _pressure(self, free: int) -> None:
        ev = UvmPressure(
            h=self.event_header(), free=free, freemin=self.vm.freemin, freetarg=self.vm.freetarg
        )
        self.publish(ev)

    # -- sessions -------------------------------------------------------------

    def session_ok(self, h: Header) -> bool:
        return h.incarnation in self.sessions

    def user_seen(self, h: Header) -> None:
        if h.incarnation in self.sessions:
            self.sessions[h.incarnation] = self.clock.now_s()

    def on_attach(self, msg: UvmAttach) -> Reply:
        """A new session and its key. => EAGAIN when limits.sessions are live and none of
        them can be reclaimed (_reclaim_idle)."""
        if len(self.sessions) >= self.limits.sessions and not self._reclaim_idle():
            raise UserError(
                Errno.EAGAIN,
                f"the machine holds its limit of {self.limits.sessions} sessions, each "
                f"holding a process or a file or seen in the last {self.reclaim_idle_s} s",
            )
        sid = 0
        while sid == 0 or sid in self.sessions:
            sid = ids.session_id(self.rng)
        self.sessions[sid] = self.clock.now_s()
        self.vm.stats.attaches += 1
        return self.reply(
            msg, UvmAttachReply, session=sid, key=self.auth.key(sid), lease_s=self.lease_s
        )

    def _renew(self, sids: list[int]) -> list[int]:
        """Renew the leases of `sids` (seen at another role). => those that have ended."""
        now, ended = self.clock.now_s(), []
        for sid in sids:
            if sid in self.sessions:
                self.sessions[sid] = now
            else:
                ended.append(sid)
        return ended

    async def _sync_mmu(self) -> None:
        """pmap.sessions: renew the sessions the mmu served since it last said."""
        rep = await self.mmu.call_ok(PmapSessions(h=_H), PmapSessionsReply)
        self._renew(list(rep.seen))

    def _ended(self, sid: int, reason: str) -> None:
        """The session ends here: uvm forgets it and says so, to net (uvm.session_ended)
        and to the mmu (pmap.sessions, sent now with no await, so it reaches the mmu
        before any pmap.destroy of the session's processes)."""
        self.sessions.pop(sid, None)
        self.auth.forget(sid)
        self.publish(UvmSessionEnded(h=self.event_header(), session=sid, reason=reason))
        self.mmu.call_then(PmapSessions(h=_H, ended=[sid]), self._mmu_seen)

    def _mmu_seen(self, out: Reply | BaseException) -> None:
        if isinstance(out, PmapSessionsReply):
            self._renew(list(out.seen))

    def on_sessions_seen(self, msg: UvmSessionsSeen) -> Reply:
        return self.reply(msg, UvmSessionsSeenReply, ended=self._renew(list(msg.sessions)))

    def _reclaim_idle(self) -> bool:
        """End the least recently seen session that holds no process and no open file
        and has been silent for reclaim_idle_s. => whether one was ended.

        => O(sessions); synchronous, so nothing can make it hold something meanwhile;
           its later requests get ESESSION (the session has ended), as after a reap."""
        vm = self.vm
        now = self.clock.now_s()
        idle = [
            (seen, sid)
            for sid, seen in self.sessions.items()
            if now - seen >= self.reclaim_idle_s and sid not in vm.procs.held and not vm.nfiles[sid]
        ]
        if not idle:
            return False
        _, sid = min(idle)
        self.recorder.note("session reclaimed", session=sid)
        self._ended(sid, "reclaimed")
        vm.stats.sessreclaimed += 1
        return True

    async def _reaper(self) -> None:
        while True:
            await self.clock.sleep(self.lease_s / 4)
            self.auth.take_seen(1 << 30)  # uvm's own requests renewed at once (user_seen)
            if self.state == "panicked" or not self.sessions:
                continue
            try:
                await self._sync_mmu()
            except RemoteError as e:  # the mmu panicked or is slow: the next tick
                self.trace.append(f"pmap.sessions failed: {e}")
            now = self.clock.now_s()
            for session in list(self.sessions):
                seen = self.sessions.get(session, now)
                if now - seen > self.lease_s:
                    self.recorder.note("lease reap", session=session, silent_s=now - seen)
                    self._ended(session, "reaped: client lease expired")
                    await self._end_session(session, "reaped: client lease expired")

    async def _end_session(self, session: int, reason: str) -> list[int]:
        done = []
        for asid in self.vm.asids_of(session):
            try:
                await mmap.exit(self.vm, asid, session, reason)
            except UserError:
                continue  # exited meanwhile
            done.append(asid)
            self.publish(UvmProcExited(h=self.event_header(), asid=asid, reason=reason))
        await files.close_all(self.vm, session)
        return done

    # -- handlers ---------------------------------------------------------------

    async def on_spawn(self, msg: UvmSpawn) -> Reply:
        asid = await mmap.spawn(self.vm, msg.h.incarnation)
        return self.reply(msg, UvmSpawnReply, asid=asid)

    async def on_mmap(self, msg: UvmMmap) -> Reply:
        va = await mmap.mmap(
            self.vm,
            msg.asid,
            msg.h.incarnation,
            msg.length,
            Prot(msg.prot),
            msg.va,
            msg.fixed,
            msg.handle,
            msg.offset,
            msg.shared,
        )
        return self.reply(msg, UvmMmapReply, va=va)

    async def on_munmap(self, msg: UvmMunmap) -> Reply:
        await mmap.munmap(self.vm, msg.asid, msg.h.incarnation, msg.va, msg.length)
        return self.ack(msg)

    async def on_mprotect(self, msg: UvmMprotect) -> Reply:
        await mmap.mprotect(
            self.vm, msg.asid, msg.h.incarnation, msg.va, msg.length, Prot(msg.prot)
        )
        return self.ack(msg)

    async def on_fault(self, msg: UvmFault) -> Reply:
        try:
            await fault(self.vm, msg.asid, msg.h.incarnation, msg.va, Prot(msg.access))
        except UserError as e:
            if e.errno != "ENOMEM":
                raise
            # Neither RAM nor swap can satisfy it: the process is killed, as a kernel would.
            self.spawn(self._oom_kill(msg.asid, msg.h.incarnation), "oom kill")
            raise UserError(
                "ENOMEM", f"out of memory: process {msg.asid} killed ({e.detail})"
            ) from None
        return self.ack(msg)

    async def _oom_kill(self, asid: int, owner: int) -> None:
        self.recorder.note("oom kill", asid=asid, session=owner)
        try:
            await mmap.exit(self.vm, asid, owner, reason="killed: out of memory")
        except UserError:
            return  # it exited meanwhile
        self.vm.stats.oomkills += 1
        self.publish(
            UvmProcExited(h=self.event_header(), asid=asid, reason="killed: out of memory")
        )

    async def on_fork(self, msg: UvmFork) -> Reply:
        child = await mmap.fork(self.vm, msg.asid, msg.h.incarnation)
        return self.reply(msg, UvmForkReply, asid=child)

    async def on_exit(self, msg: UvmExit) -> Reply:
        await mmap.exit(self.vm, msg.asid, msg.h.incarnation)
        self.publish(UvmProcExited(h=self.event_header(), asid=msg.asid, reason="exit"))
        return self.ack(msg)

    async def on_detach(self, msg: UvmDetach) -> Reply:
        self._ended(msg.h.incarnation, "detach")
        done = await self._end_session(msg.h.incarnation, "detach")
        return self.reply(msg, UvmDetachReply, exited=done)

    async def on_pageout(self, msg: UvmPageout) -> Reply:
        pfn = await pageout(self.vm, msg.asid, msg.va)
        return self.reply(msg, UvmPageoutReply, pfn=pfn)

    def on_pd_snapshot(self, msg: UvmPdSnapshot) -> Reply:
        return self.reply(msg, UvmPdSnapshotReply, **pdops.snapshot(self.vm, msg.limit))

    def on_pd_claim(self, msg: UvmPdClaim) -> Reply:
        claimed = pdops.claim(self.vm, [(op, pfn) for op, pfn in msg.items])
        return self.reply(msg, UvmPdClaimReply, claimed=claimed)

    async def on_pd_finish(self, msg: UvmPdFinish) -> Reply:
        done = await pdops.finish(self.vm, [(op, pfn) for op, pfn in msg.items])
        return self.reply(msg, UvmPdFinishReply, done=done)

    async def on_loan_chunks(self, msg: UvmLoanChunks) -> Reply:
        got = await loanbatch.loan_message(self.vm, msg, self.spawn)
        return self.reply(msg, UvmLoanChunksReply, **got)

    def on_unloan_chunks(self, msg: UvmUnloanChunks) -> Reply:
        loan.unloan_chunks(self.vm, msg.chunks)
        return self.ack(msg)

    async def on_kfault(self, msg: UvmKfault) -> Reply:
        if msg.asid == 0:
            await loan.kernel_fault(self.vm, msg.va, msg.access, msg.evidence, msg.pfn)
        else:  # copyin on behalf of a process: its own fault
            await fault(self.vm, msg.asid, msg.owner, msg.va, Prot(msg.access))
        return self.ack(msg)

    def on_owners(self, msg: UvmOwners) -> Reply:
        """Owners of processes (0: none live) and liveness of sessions, for net."""
        spaces = self.vm.spaces
        owners = []
        for asid in msg.asids:
            sp = spaces.get(asid)
            owners.append(sp.owner if sp is not None and not sp.dead else 0)
        live = [s in self.sessions for s in msg.sessions]
        return self.reply(msg, UvmOwnersReply, owners=owners, live=live)

    async def on_audit(self, msg: UvmAudit) -> Reply:
        problems = await audit(self.vm)
        return self.reply(msg, UvmAuditReply, problems=problems, checked=self.vm.pages.npages)

    async def on_shutdown(self, msg: CtlShutdown) -> Reply:
        """Clean shutdown: every dirty file page reaches its file before the role stops."""
        if self.state != "panicked":
            for obj in list(self.vm.vnodes.values()):
                await flush_object(self.vm, obj, 0, obj.npages)
                assert obj.file is not None
                obj.file.sync()
        return await super().on_shutdown(msg)

    async def close(self) -> None:
        await super().close()
        if self.vm.swap is not None:
            self.vm.swap.close()

    # -- reporting ----------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return report.counters(self.vm, len(self.sessions))

    def frames(self) -> dict[str, int]:
        return self.vm.frames()

    def dump_state(self) -> dict[str, Any]:
        return report.dump_state(self.vm)
