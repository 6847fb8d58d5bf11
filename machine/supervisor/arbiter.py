"""The supervisor's arbiter: boots the roles in order, watches them, handles panics.

Life cycle of the machine (supervisor state):

  booting --all roles answered hello--> running --SIGINT/SIGTERM--> stopping --> stopped
                                           |
                                           +--ctl.panic, role exit, lost heartbeats--> panicked
                                                  (dump, halt, grace) --> stopping --> stopped

Start order mmu -> uvm -> pdaemon -> net (each started with the endpoints of
those before it); shutdown in reverse. Liveness: every HEARTBEAT_INTERVAL_S
each role gets ctl.ping; an answer resets its credits to HEARTBEAT_LIVENESS,
a miss takes one; below zero the role is missing. The pings go on (uncounted)
while the machine panics or stops: compose roles take their silence for the
supervisor's death (machine.orphan).

Panic policy: a role that panics, exits unexpectedly or goes missing stops
the machine (restarting roles, with their recovery contracts, is future
work: see docs/design.md). On panic the supervisor
  1. halts every other role (they answer EPANIC from then on),
  2. collects every reachable role's state (ctl.dump) and writes a JSON
     crash dump to <state>/dump/,
  3. publishes ctl.panic (with the dump's path) to clients, repeatedly for
     PANIC_GRACE_S so late subscribers see it too (and once before step 1, without
     the path: the dump takes a moment, and clients should fail at once),
  4. stops the machine; the `up` command exits with status 3.
Every client call pending or later fails with MachinePanic: through the
event, through EPANIC replies, or (last resort) through its timeout.

Dumps (machine.dumpfile): the crash dump above, a dump of the live machine on
ctl.dumpsys (the supervisor's kernel endpoint: `uvm-machine dump`, the stress
harness's evidence), and one into `record_dir` when the machine stops (`up
--record`). Each holds every role's state and flight recorder (ctl.dump with
flight) and the supervisor's own recorder.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from machine.config import (
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_LIVENESS,
    PANIC_GRACE_S,
)
from machine.dumpfile import copy_private, private_folder, write_dump
from machine.ipc.peer import Peer, RemoteError
from machine.ipc.service import Service
from machine.ipc.transport import Subscription, Transport
from machine.params import PAGE_SIZE
from machine.profile import ProfileError, load_profile
from machine.proto import (
    NO_HEADER,
    CtlDirectory,
    CtlDirectoryReply,
    CtlDump,
    CtlDumpReply,
    CtlDumpsys,
    CtlDumpsysReply,
    CtlHalt,
    CtlHello,
    CtlHelloReply,
    CtlPanic,
    CtlPing,
    CtlRoleMissing,
    CtlRoleStarted,
    CtlShutdown,
    CtlStats,
    CtlStatsReply,
    CtlStatus,
    CtlStatusReply,
    CtlStopping,
    Errno,
    Reply,
    Request,
    RoleEndpoints,
    RoleStatus,
    UserError,
    decode_event,
)
from machine.roles import ROLE_NAMES
from machine.supervisor.launcher import Launcher

_H = NO_HEADER
EXIT_PANIC = 3


def _knobs(profile: str) -> dict[str, Any]:
    """The profile's knobs as the machine runs them (a dump replays without its file)."""
    try:
        return dict(load_profile(profile).knobs)
    except ProfileError:
        return {}


def _loan_threshold(profile: str) -> int:
    """The bytes from which net.send loans under the profile (-1: never; 0: unknown)."""
    try:
        return load_profile(profile).settings.loan_threshold
    except ProfileError:
        return 0


def _copy_into(path: str, folder: str) -> None:
    private_folder(Path(folder))
    copy_private(path, folder)


@dataclass
class RoleHandle:
    role: str
    endpoints: dict[str, str]
    pid: int
    incarnation: int
    peer: Peer
    sub: Subscription | None = None
    alive: bool = True
    credits: int = HEARTBEAT_LIVENESS
    extra: dict[str, Any] = field(default_factory=dict)


class Supervisor(Service):
    role: ClassVar[str] = "supervisor"
    serves: ClassVar[tuple[type[Request], ...]] = (CtlDirectory, CtlStatus, CtlDumpsys)

    def __init__(
        self,
        transport: Transport,
        launcher: Launcher,
        *,
        nframes: int,
        profile: str,
        state_dir: str,
        lease_s: float,
        heartbeat_s: float = HEARTBEAT_INTERVAL_S,
        panic_grace_s: float = PANIC_GRACE_S,
        record_dir: str = "",
        dump_in_thread: bool = True,
        **kw: Any,
    ) -> None:
        super().__init__(transport, **kw)
        self.launcher = launcher
        launcher.on_exit = self._role_exited
        self.nframes = nframes
        self.profile = profile
        self.state_dir = state_dir
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self.panic_grace_s = panic_grace_s
        self.roles: dict[str, RoleHandle] = {}
        self.machine_state = "booting"
        self.panic_event: CtlPanic | None = None
        self.exit_status = 0
        self.dump_path = ""
        #: `up --record DIR`: a dump is written there when the machine stops.
        self.record_dir = record_dir
        #: Write a dump's JSON in a worker thread (a real machine: a full dump is hundreds of
        #: MB and its loop must keep answering); on the loop in a simulation (its virtual
        #: clock would run on while a thread writes, and a run must be a function of its seed).
        self.dump_in_thread = dump_in_thread
        self._dumps = 0  # dumps written (numbers the live ones)
        self._shutting_down = False

    # -- boot -------------------------------------------------------------------

    async def boot(self, router: str, pub: str, kernel: str | None = None) -> dict[str, str]:
        """Bind the attach endpoint (and the kernel endpoint, for the kernel debugger's
        ctl.dumpsys), start every role in order. => own endpoints."""
        eps = await self.start(kernel, router, pub)
        for role in ROLE_NAMES:
            peers = {r: h.endpoints for r, h in self.roles.items()}
            info = await self.launcher.start(role, peers)
            endpoints = {k: info[k] for k in ("kernel", "user", "pub")}
            peer = await Peer(self.ident, endpoints["kernel"], label=f"{role}/kernel").open(
                self.transport
            )
            hello = await peer.call_ok(CtlHello(h=_H), CtlHelloReply, timeout_s=10.0)
            h = RoleHandle(role, endpoints, hello.pid, hello.incarnation, peer)
            h.sub = await self.subscribe(role, endpoints["pub"], "ctl.panic", self._on_role_event)
            self.roles[role] = h
            self.publish(
                CtlRoleStarted(
                    h=self.event_header(), role=role, pid=h.pid, incarnation=h.incarnation
                )
            )
        self.machine_state = "running"
        self.spawn(self._heartbeat(), "heartbeat")
        return eps

    # -- watching ---------------------------------------------------------------

    def _on_role_event(self, raw: bytes) -> None:
        try:
            ev = decode_event(raw)
        except Exception:
            return
        if isinstance(ev, CtlPanic):
            self.spawn(self.machine_panic(ev.role, ev.message, ev.trace), "panic")

    def _role_exited(self, role: str, status: int | None) -> None:
        self.recorder.note("role exited", role=role, status=status)
        h = self.roles.get(role)
        if h is not None:
            h.alive = False
        if not self._shutting_down and self.machine_state != "panicked":
            self.spawn(
                self.machine_panic(role, f"role {role} exited unexpectedly (status {status})", []),
                "panic",
            )

    async def _heartbeat(self) -> None:
        """Ping every role once per interval, at a fixed cadence (a slow answer is a miss).

        => pings until the machine is stopped: while it panics or stops, the pings
           only tell roles the supervisor lives (misses are not counted), so a
           role watching for silence (machine.orphan) does not take a slow stop
           for the supervisor's death.
        """
        while self.machine_state != "stopped":
            start = self.clock.now_s()
            await asyncio.gather(*(self._ping(h) for h in list(self.roles.values())))
            await self.clock.sleep(max(0.0, start + self.heartbeat_s - self.clock.now_s()))

    async def _ping(self, h: RoleHandle) -> None:
        if self.machine_state != "running":
            if h.alive:  # keepalive only
                await self._quiet(h.peer.call(CtlPing(h=_H), timeout_s=self.heartbeat_s * 0.8))
            return
        try:
            rep = await h.peer.call(CtlPing(h=_H), timeout_s=self.heartbeat_s * 0.8)
        except RemoteError:
            h.credits -= 1
            self.recorder.note("heartbeat missed", role=h.role, credits=h.credits)
            if h.credits < 0 and h.alive:
                h.alive = False
                reason = f"missed {HEARTBEAT_LIVENESS + 1} heartbeats"
                self.publish(CtlRoleMissing(h=self.event_header(), role=h.role, reason=reason))
                # Spawned, not awaited: the heartbeat carries on through the panic.
                self.spawn(self.machine_panic(h.role, f"role {h.role} {reason}", []), "panic")
            return
        if rep.errno is Errno.EPANIC and self.machine_state == "running":
            self.spawn(self.machine_panic(h.role, rep.detail, []), "panic")
            return
        h.credits = HEARTBEAT_LIVENESS
        h.alive = True

    # -- panic --------------------------------------------------------------------

    async def machine_panic(self, role: str, message: str, trace: list[str]) -> None:
        """A role panicked (or died): halt, dump, tell clients, stop. Idempotent."""
        if self.machine_state in ("panicked", "stopping", "stopped"):
            return
        self.machine_state = "panicked"
        self.state = "panicked"
        self.panic_message = f"{role}: {message}"
        reason = f"panic in {role}: {message}"
        self.recorder.note("panic", role=role, message=message[:400])
        # At once, who and why (the dump takes a moment: every flight recorder is in it);
        # the same event with the dump's path follows once it is written.
        self.publish(CtlPanic(h=self.event_header(), role=role, message=message, trace=trace))
        await asyncio.gather(
            *(
                self._quiet(h.peer.call(CtlHalt(h=_H, reason=reason), timeout_s=1.0))
                for r, h in self.roles.items()
                if r != role and h.alive
            )
        )
        self.dump_path = await self.write_dump(
            "crash", reason, {"role": role, "message": message, "trace": trace}
        )
        self.panic_event = CtlPanic(
            h=self.event_header(), role=role, message=message, trace=trace, dump=self.dump_path
        )
        self.exit_status = EXIT_PANIC
        loop = asyncio.get_running_loop()
        end = loop.time() + self.panic_grace_s
        while loop.time() < end:
            self.publish(self.panic_event)
            await self.clock.sleep(min(0.25, self.panic_grace_s))
        await self.shutdown(reason, EXIT_PANIC)

    @staticmethod
    async def _quiet(aw: Any) -> Any:
        try:
            return await aw
        except Exception as e:
            return e

    async def write_dump(
        self, kind: str, reason: str, panic: dict[str, Any] | None = None, where: str = ""
    ) -> str:
        """Collect every reachable role's state and flight recorder (ctl.dump) and write
        a dump (machine.dumpfile) to `where` or <state>/dump/. => its path ("" without a
        state directory and `where`)."""
        states: dict[str, Any] = {}
        flight: dict[str, dict[str, Any]] = {}
        for r, h in self.roles.items():
            if not h.alive:
                states[r] = {"state": "dead"}
                continue
            rep = await self._quiet(h.peer.call(CtlDump(h=_H, flight=True), timeout_s=10.0))
            if isinstance(rep, CtlDumpReply):
                states[r] = dict(rep.state)
                if isinstance(f := states[r].pop("flight", None), dict):
                    flight[r] = f
            else:
                states[r] = {"unreachable": repr(rep)}
        flight[self.role] = self.recorder.export(self.incarnation, self.pid)
        folder = Path(where) if where else Path(self.state_dir) / "dump" if self.state_dir else None
        if folder is None:
            return ""
        self._dumps += 1
        stamp = time.strftime("%Y%m%d-%H%M%S")
        who = panic["role"] if panic else f"{self._dumps}"
        path = folder / f"{kind}-{stamp}-{who}-{self.incarnation:x}.json"
        doc = {
            "kind": kind,
            "reason": reason,
            "panic": panic,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "profile": self.profile,
            "knobs": _knobs(self.profile),
            "machine": {
                "nframes": self.nframes,
                "lease_s": self.lease_s,
                "incarnation": self.incarnation,
                "state": self.machine_state,
            },
            "roles": states,
        }
        if self.dump_in_thread:
            return str(await asyncio.to_thread(write_dump, path, doc, flight))
        return str(write_dump(path, doc, flight))

    # -- shutdown -------------------------------------------------------------------

    async def shutdown(self, reason: str, status: int = 0) -> None:
        """Stop every role in reverse start order, then mark the machine stopped."""
        if self._shutting_down:
            return
        self._shutting_down = True
        if self.machine_state != "panicked":
            self.machine_state = "stopping"
        self.publish(CtlStopping(h=self.event_header(), reason=reason))
        self.recorder.note("stopping", reason=reason[:400])
        if self.record_dir:
            await self._record(reason)
        for role in reversed(ROLE_NAMES):
            h = self.roles.get(role)
            if h is None:
                continue
            healthy = h.alive and h.credits == HEARTBEAT_LIVENESS
            if healthy:
                # Generous: uvm writes every dirty file page back before it answers.
                await self._quiet(h.peer.call(CtlShutdown(h=_H), timeout_s=120.0))
            # A role that missed heartbeats gets no long grace: it is terminated at once.
            await self.launcher.stop(role, timeout_s=5.0 if healthy else 0.0)
            h.alive = False
        self.exit_status = status or self.exit_status
        self.machine_state = "stopped"
        self.stopped.set()

    async def _record(self, reason: str) -> None:
        """`up --record DIR`: the crash dump, or a dump written now, kept in DIR."""
        try:
            if self.dump_path:
                _copy_into(self.dump_path, self.record_dir)
            else:
                await self.write_dump("stop", reason, where=self.record_dir)
        except OSError as e:
            self.trace.append(f"record to {self.record_dir} failed: {e}")

    async def close(self) -> None:
        for h in self.roles.values():
            if h.sub is not None:
                await h.sub.close()
            await h.peer.close()
        await super().close()

    # -- client requests --------------------------------------------------------------

    def on_directory(self, msg: CtlDirectory) -> Reply:
        if self.machine_state == "panicked":
            raise UserError(Errno.EPANIC, self.panic_message)
        if self.machine_state != "running":
            raise UserError(Errno.ESHUTDOWN, f"machine is {self.machine_state}")
        roles = {
            r: RoleEndpoints(
                user=h.endpoints["user"],
                pub=h.endpoints["pub"],
                pid=h.pid,
                incarnation=h.incarnation,
            )
            for r, h in self.roles.items()
        }
        return self.reply(
            msg,
            CtlDirectoryReply,
            roles=roles,
            events=self.endpoints["pub"],
            page_size=PAGE_SIZE,
            nframes=self.nframes,
            profile=self.profile,
            state_dir=self.state_dir,
            lease_s=self.lease_s,
            knobs=_knobs(self.profile),
            loan_threshold=_loan_threshold(self.profile),
            limits=self.limits.to_dict(),
        )

    async def on_status(self, msg: CtlStatus) -> Reply:
        replies = await asyncio.gather(
            *(self._quiet(h.peer.call(CtlStats(h=_H), timeout_s=2.0)) for h in self.roles.values())
        )
        roles: dict[str, RoleStatus] = {}
        frames: dict[str, int] = {}
        for (r, h), rep in zip(self.roles.items(), replies, strict=True):
            ok = isinstance(rep, CtlStatsReply)
            roles[r] = RoleStatus(
                pid=h.pid,
                incarnation=h.incarnation,
                alive=h.alive and ok,
                state="panicked"
                if isinstance(rep, Reply) and rep.errno is Errno.EPANIC
                else ("running" if ok else "down"),
                counters=rep.counters if ok else {},
            )
            if ok and rep.frames:
                frames = dict(rep.frames)
        return self.reply(
            msg,
            CtlStatusReply,
            roles=roles,
            frames=frames,
            profile=self.profile,
            state=self.machine_state,
            panic=self.panic_message,
        )

    async def on_dumpsys(self, msg: CtlDumpsys) -> Reply:
        """A dump of the live machine (kernel endpoint: `uvm-machine dump`)."""
        if not self.state_dir:
            raise UserError(Errno.ENOENT, "this machine has no state directory to dump into")
        self.recorder.note("dumpsys", reason=msg.reason[:400])
        path = await self.write_dump("live", msg.reason or "live")
        return self.reply(msg, CtlDumpsysReply, path=path)

    def counters(self) -> dict[str, int]:
        return {"roles": len(self.roles)}
