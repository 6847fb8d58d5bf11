"""ctl.*: lifecycle messages every role and the supervisor answer.

Who sends what:
  * clients: ctl.hello, ctl.ping, ctl.stats (any role), ctl.directory and
    ctl.status (supervisor).
  * supervisor: ctl.ping (heartbeat), ctl.dump, ctl.halt, ctl.shutdown.
  * kernel debugger only (kernel endpoint): ctl.kpanic; ctl.dumpsys (supervisor).
Events: ctl.panic (a role panicked), ctl.role_started, ctl.role_missing,
ctl.stopping (supervisor).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from machine.proto.base import Event, Reply, Request, Scope
from machine.proto.types import ShortText


class CtlHello(Request, frozen=True, kw_only=True, tag="ctl.hello"):
    """Introduce yourself; the peer checks the protocol version in the header.

    => any sender, any endpoint.
    Reply: CtlHelloReply with the peer's role, incarnation and version.
    Errnos: EPROTO if the header's major protocol version differs.
    """

    scope: ClassVar[Scope] = Scope.ANY


class CtlHelloReply(Reply, frozen=True, kw_only=True, tag="ctl.hello.reply"):
    role: str = ""
    incarnation: int = 0
    pid: int = 0
    proto: tuple[int, int] = (0, 0)


class CtlPing(Request, frozen=True, kw_only=True, tag="ctl.ping"):
    """Liveness probe (the supervisor's heartbeat; also a client's keepalive).

    => any sender, any endpoint. Never queued behind work.
    Reply: CtlPingReply. A panicked role answers EPANIC with its panic message.
    """

    scope: ClassVar[Scope] = Scope.ANY


class CtlPingReply(Reply, frozen=True, kw_only=True, tag="ctl.ping.reply"):
    role: str = ""
    incarnation: int = 0
    pid: int = 0


class CtlStats(Request, frozen=True, kw_only=True, tag="ctl.stats"):
    """Ask a role for its counters (named after NetBSD's uvmexp where one exists).

    => any sender, any endpoint.
    Reply: CtlStatsReply; `frames` is filled by uvm only.
    """

    scope: ClassVar[Scope] = Scope.ANY


class CtlStatsReply(Reply, frozen=True, kw_only=True, tag="ctl.stats.reply"):
    role: str = ""
    pid: int = 0
    incarnation: int = 0
    counters: dict[str, int] = msgspec.field(default_factory=dict)
    frames: dict[str, int] = msgspec.field(default_factory=dict)


class RoleEndpoints(msgspec.Struct, frozen=True, kw_only=True):
    """Where a client reaches a role: its user ROUTER and its event PUB."""

    user: str
    pub: str
    pid: int = 0
    incarnation: int = 0


class CtlDirectory(Request, frozen=True, kw_only=True, tag="ctl.directory"):
    """Read the machine's directory at attach time.

    => client -> supervisor.
    Reply: CtlDirectoryReply with every role's user and event endpoints, the
    supervisor's event endpoint, RAM geometry and the active profile.
    """

    scope: ClassVar[Scope] = Scope.ANY


class CtlDirectoryReply(Reply, frozen=True, kw_only=True, tag="ctl.directory.reply"):
    """Where each role is (`roles`, `events`), and what a client may rely on: the page size,
    the frames of RAM, the profile, the lease; (1.7) `knobs`, the profile's table as the
    machine runs it, `loan_threshold`, the bytes from which net.send loans (-1: never),
    and `limits`, every limit of machine/limits.py (what each bounds and its errno: the
    docs/usage.md, "Limits")."""

    roles: dict[str, RoleEndpoints] = msgspec.field(default_factory=dict)
    events: str = ""
    page_size: int = 0
    nframes: int = 0
    profile: str = ""
    state_dir: str = ""
    lease_s: float = 0.0
    knobs: dict[str, str | int | float | bool] = msgspec.field(default_factory=dict)
    loan_threshold: int = 0
    limits: dict[str, int] = msgspec.field(default_factory=dict)


class RoleStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A role as the supervisor sees it (ctl.status): its process, its incarnation, whether
    it is alive and answered, its state ("running", "panicked", or "down" when it did not
    answer) and its counters (empty when it did not answer)."""

    pid: int
    incarnation: int
    alive: bool
    state: str
    counters: dict[str, int] = msgspec.field(default_factory=dict)


class CtlStatus(Request, frozen=True, kw_only=True, tag="ctl.status"):
    """The machine at a glance: every role's pid, incarnation, liveness and counters.

    => client -> supervisor.
    Reply: CtlStatusReply. `frames` has total, free, active, inactive, wired, loaned and
    kernel_owned (the kernel's own frames, the shared zero page included: with no
    client left, free + kernel_owned == total).
    """

    scope: ClassVar[Scope] = Scope.ANY


class CtlStatusReply(Reply, frozen=True, kw_only=True, tag="ctl.status.reply"):
    roles: dict[str, RoleStatus] = msgspec.field(default_factory=dict)
    frames: dict[str, int] = msgspec.field(default_factory=dict)
    profile: str = ""
    state: str = ""
    panic: str = ""


class CtlDump(Request, frozen=True, kw_only=True, tag="ctl.dump"):
    """Ask a role for its state, as plain data, for a crash dump.

    => supervisor -> role (kernel endpoint). A panicked role still answers.
    => flight (1.5): the state also holds the role's flight recorder (its inputs in
       the order handled, bodies as bytes: machine.ipc.recorder), under "flight".
    Reply: CtlDumpReply.
    """

    flight: bool = False


class CtlDumpReply(Reply, frozen=True, kw_only=True, tag="ctl.dump.reply"):
    role: str = ""
    state: dict[str, Any] = msgspec.field(default_factory=dict)


class CtlDumpsys(Request, frozen=True, kw_only=True, tag="ctl.dumpsys"):
    """Write a dump of the live machine now, as a crash dump holds it (every role's state
    and flight recorder, the supervisor's too), and go on running (NetBSD's dumpsys,
    without the panic). (1.5)

    => kernel debugger -> supervisor (its kernel endpoint: `uvm-machine dump`; the
       stress harness, when a run finds corruption or frames not back).
    => reason: said in the dump's header ("live", "corruption: ...").
    Reply: CtlDumpsysReply with the dump's path (<state>/dump/live-*.json).
    """

    reason: ShortText = ""


class CtlDumpsysReply(Reply, frozen=True, kw_only=True, tag="ctl.dumpsys.reply"):
    path: str = ""


class CtlHalt(Request, frozen=True, kw_only=True, tag="ctl.halt"):
    """The machine has panicked elsewhere: stop serving work.

    => supervisor -> role. Afterwards the role answers every request except
       ctl.ping, ctl.dump and ctl.shutdown with EPANIC and `reason`.
    """

    reason: ShortText


class CtlShutdown(Request, frozen=True, kw_only=True, tag="ctl.shutdown"):
    """Stop the role cleanly after replying.

    => supervisor -> role (kernel endpoint); also an orphaned uvm -> the mmu, once
       written back (machine.orphan: the supervisor died).
    """


class CtlKpanic(Request, frozen=True, kw_only=True, tag="ctl.kpanic"):
    """Make the role panic with `message` (the kernel debugger's `panic` command).

    => kernel endpoint only; clients get EPERM.
    Reply: EPANIC with the message (the role has then panicked).
    """

    message: ShortText


class CtlAck(Reply, frozen=True, kw_only=True, tag="ctl.ack.reply"):
    """A plain acknowledgement for requests with nothing else to say."""


class CtlPanic(Event, frozen=True, kw_only=True, tag="ctl.panic"):
    """A role panicked (published by the role, then by the supervisor to clients).

    role: who panicked; message: the panic string; trace: the tail of the
    role's trace ring; dump: path of the crash dump (supervisor only).
    """

    role: str
    message: str
    trace: list[str] = msgspec.field(default_factory=list)
    dump: str = ""


class CtlRoleStarted(Event, frozen=True, kw_only=True, tag="ctl.role_started"):
    role: str
    pid: int
    incarnation: int


class CtlRoleMissing(Event, frozen=True, kw_only=True, tag="ctl.role_missing"):
    role: str
    reason: str


class CtlStopping(Event, frozen=True, kw_only=True, tag="ctl.stopping"):
    reason: str
