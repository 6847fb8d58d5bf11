"""The nemesis' faults (machine.stress.nemesis runs them; they import only its
pure part, machine.stress.nemesis_plan): begin, end, and what each
records in its window's detail.

A fault is applied by `begin(detail)` and undone by `end(detail)`; `close()` undoes
whatever is still in effect (Nemesis.stop). Invariants:
  - `end` and `close` are idempotent, and each undoes only what its `begin` did
    (a link restored to the settings read before it was changed, a stopped role
    continued, the balloon's process exited and its session detached);
  - a fault's begin that fails part way leaves `end` able to undo the part done;
  - nothing here blocks more than the calling greenlet (green client, kcall,
    gevent.subprocess); client-kill's reap watch is a follow-up greenlet the
    nemesis joins before it marks the window, so the schedule never waits on it;
  - kernel requests go to the endpoints of <state>/machine.json (Nemesis.roles);
  - a stopped role is continued within ROLE_STOP_MAX_S even if the gevent hub is
    starved: a watchdog OS thread per stop (see "a role stopped" below).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import signal
import sys
import time
from typing import Any, ClassVar

import gevent
import gevent.monkey
import gevent.subprocess

from machine.client.errors import MachineError, OutOfMemory, RequestError, reply_error
from machine.proto import (
    NO_HEADER,
    CtlDump,
    CtlDumpReply,
    CtlPing,
    CtlStats,
    CtlStatsReply,
    NetLink,
    PdWakeup,
    Reply,
    Request,
    Status,
    UvmOwners,
    UvmOwnersReply,
)
from machine.stress.green import GreenMachine, GreenProcess, kcall
from machine.stress.nemesis_plan import ROLE_STOP_MAX_S, STOP_ROLES, FaultHost

_H = NO_HEADER


class Fault:
    """One kind of fault; see the module's invariants."""

    name: ClassVar[str] = ""

    def __init__(self, nem: FaultHost) -> None:
        self.nem = nem
        self._follow_up: gevent.Greenlet[Any, Any] | None = None

    def begin(self, detail: dict[str, Any]) -> None:
        raise NotImplementedError

    def end(self, detail: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.end({})

    def take_follow_up(self) -> gevent.Greenlet[Any, Any] | None:
        g, self._follow_up = self._follow_up, None
        return g

    def kernel(self, role: str, req: Request, expect: type[Any] = Reply) -> Any:
        """One request to `role`'s kernel endpoint; an error reply raises."""
        rep = kcall(str(self.nem.roles[role]["kernel"]), req)
        if rep.status is not Status.OK or not isinstance(rep, expect):
            raise reply_error(rep)
        return rep


# -- the link ------------------------------------------------------------------------


class _Link(Fault):
    """What link-slow and link-hold share: the link as net had it, and its restore."""

    def __init__(self, nem: FaultHost) -> None:
        super().__init__(nem)
        self.before: dict[str, Any] | None = None

    def read_link(self) -> dict[str, Any]:
        """The link's settings now, from net's dump; unthrottled when net does not say."""
        try:
            st = self.kernel("net", CtlDump(h=_H), CtlDumpReply).state
            link = st["link"]
            return {
                "bandwidth_bps": int(link["bandwidth_bps"]),
                "latency_us": int(link["latency_us"]),
                "hold": bool(st["counters"].get("held", 0)),
                "known": True,
            }
        except (MachineError, KeyError, TypeError, ValueError):
            return {"bandwidth_bps": 0, "latency_us": 0, "hold": False, "known": False}

    def set_link(self, bandwidth_bps: int, latency_us: int, hold: bool) -> None:
        req = NetLink(h=_H, bandwidth_bps=bandwidth_bps, latency_us=latency_us, hold=hold)
        self.kernel("net", req)

    def end(self, detail: dict[str, Any]) -> None:
        b = self.before
        if b is None:
            return
        # forgotten only once restored: an undo cut short (a kill, a timeout) is done
        # again by close()
        self.set_link(b["bandwidth_bps"], b["latency_us"], b["hold"])
        self.before = None
        detail["restored"] = (
            f"{b['bandwidth_bps']} bps, {b['latency_us']} us, hold={b['hold']}"
            if b["known"]
            else "unthrottled (net did not say what the link was)"
        )


class LinkSlow(_Link):
    name = "link-slow"

    def begin(self, detail: dict[str, Any]) -> None:
        o = self.nem.options
        self.before = b = self.read_link()
        detail["before"] = f"{b['bandwidth_bps']} bps, {b['latency_us']} us"
        self.set_link(o.slow_bps, o.slow_latency_us, b["hold"])
        detail["bandwidth_bps"], detail["latency_us"] = o.slow_bps, o.slow_latency_us


class LinkHold(_Link):
    name = "link-hold"

    def begin(self, detail: dict[str, Any]) -> None:
        self.before = b = self.read_link()
        self.set_link(b["bandwidth_bps"], b["latency_us"], True)
        detail["held"] = True

    def end(self, detail: dict[str, Any]) -> None:
        if self.before is not None:  # what piled up while held
            try:
                c = self.kernel("net", CtlStats(h=_H), CtlStatsReply).counters
                detail["txq_held"], detail["socurkva_held"] = c.get("txq"), c.get("socurkva")
            except MachineError as e:
                detail["stats_error"] = str(e)
        super().end(detail)


# -- the page daemon -------------------------------------------------------------------


class PdaemonKick(Fault):
    name = "pdaemon-kick"

    def __init__(self, nem: FaultHost) -> None:
        super().__init__(nem)
        self._kicker: gevent.Greenlet[Any, Any] | None = None
        self._before: dict[str, int] = {}
        self.kicks = 0

    def counters(self) -> dict[str, int]:
        return dict(self.kernel("pdaemon", CtlStats(h=_H), CtlStatsReply).counters)

    def begin(self, detail: dict[str, Any]) -> None:
        self._before = self.counters()
        self.kicks = 0
        self._kicker = gevent.spawn(self._kick)

    def _kick(self) -> None:
        while True:
            self.kernel("pdaemon", PdWakeup(h=_H))
            self.kicks += 1
            gevent.sleep(self.nem.options.kick_every_s)

    def end(self, detail: dict[str, Any]) -> None:
        k, self._kicker = self._kicker, None
        if k is None:
            return
        k.kill()
        detail["kicks"] = self.kicks
        if not k.successful() and k.exception is not None:
            detail["kick_error"] = str(k.exception)
        after = self.counters()
        for key, label in (("pdwoke", "woke"), ("pdrevs", "passes"), ("pdscans", "scans")):
            detail[label] = after.get(key, 0) - self._before.get(key, 0)


# -- the balloon -----------------------------------------------------------------------


class Squeeze(Fault):
    name = "squeeze"

    def __init__(self, nem: FaultHost) -> None:
        super().__init__(nem)
        self.m: GreenMachine | None = None
        self.p: GreenProcess | None = None

    def begin(self, detail: dict[str, Any]) -> None:
        self.m = m = GreenMachine.attach(self.nem.endpoint)
        d = m.directory
        pages = max(1, int(d.nframes * self.nem.options.squeeze_fraction))
        detail["pages"] = pages
        self.p = p = m.spawn()
        detail["session"] = m.session
        va = p.mmap(pages * d.page_size)
        try:
            p.mlock(va, pages * d.page_size)
            detail["wired"] = pages
        except OutOfMemory as e:  # the machine said no: recorded, not a crash
            detail["oom"] = str(e)
        except RequestError as e:
            detail["refused"] = f"{e.errno}: {e.detail}"

    def end(self, detail: dict[str, Any]) -> None:
        m, self.m, self.p = self.m, None, None
        if m is None:
            return
        try:
            for proc in list(m.processes.values()):
                proc.exit()
        except MachineError as e:
            detail["exit_error"] = str(e)
        finally:
            m.close()  # detach: whatever is left exits


# -- a client killed -------------------------------------------------------------------


class ClientKill(Fault):
    name = "client-kill"

    def __init__(self, nem: FaultHost) -> None:
        super().__init__(nem)
        self.proc: gevent.subprocess.Popen[str] | None = None
        self.session = 0

    def begin(self, detail: dict[str, Any]) -> None:
        cmd = [sys.executable, "-m", "machine.stress.victim", self.nem.endpoint]
        cmd += ["--pages", str(self.nem.options.victim_pages)]
        self.proc = p = gevent.subprocess.Popen(cmd, stdout=gevent.subprocess.PIPE, text=True)
        detail["pid"] = p.pid
        assert p.stdout is not None
        with gevent.Timeout(30.0, MachineError("the victim did not attach within 30 s")):
            line = p.stdout.readline()
        if not line.startswith("ready "):
            raise MachineError(f"the victim said {line!r}, not ready")
        self.session = int(line.split()[1])
        detail["session"] = self.session

    def end(self, detail: dict[str, Any]) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        alive = p.poll() is None
        if alive:
            p.send_signal(signal.SIGKILL)
        p.wait()
        if p.stdout is not None:
            p.stdout.close()
        detail["killed"] = alive
        if self.session:
            session, self.session = self.session, 0
            self._follow_up = gevent.spawn(self._watch_reap, session, detail)

    def _watch_reap(self, session: int, detail: dict[str, Any]) -> None:
        """Poll until the victim's session is gone (uvm.owners when the kernel endpoint is
        known, else the `reaped` counter), for at most lease_s + reap_grace_s."""
        t0 = time.monotonic()
        detail["reaped"] = None  # not known yet (None stays if the nemesis stops first)
        try:
            with GreenMachine.attach(self.nem.endpoint) as m:
                base = self._reaped(m)  # the victim's lease has not run out yet
                deadline = t0 + m.directory.lease_s + self.nem.options.reap_grace_s
                while time.monotonic() < deadline:
                    if self._gone(m, session, base):
                        detail["reaped"] = True
                        detail["reap_s"] = round(time.monotonic() - t0, 2)
                        detail["free_after"] = m.status().frames.get("free")
                        return
                    gevent.sleep(0.25)
                detail["reaped"] = False
        except MachineError as e:
            detail["reap_error"] = str(e)

    @staticmethod
    def _reaped(m: GreenMachine) -> int:
        return int(m.status().roles["uvm"].counters.get("reaped", 0))

    def _gone(self, m: GreenMachine, session: int, base: int) -> bool:
        """uvm.owners says exactly; without the kernel endpoint, uvm's `reaped` counter
        rising is the sign (another session reaped meanwhile would be taken for it)."""
        if "uvm" in self.nem.roles:
            rep = self.kernel("uvm", UvmOwners(h=_H, sessions=[session]), UvmOwnersReply)
            return bool(rep.live == [False])
        return self._reaped(m) > base


# -- a role stopped --------------------------------------------------------------------
#
# The greenlet that ends a window continues the role; should the gevent hub be starved
# (a greenlet that never yields), it would wake too late and the supervisor would
# declare the role missing: a machine panic the nemesis caused. So every stop also
# starts a watchdog in a real OS thread (gevent's originals: Locust monkey-patches),
# which continues the role at ROLE_STOP_MAX_S whatever the hub does. A stop's token
# keeps a late watchdog from continuing a later stop of the same role.

_STOPPED: dict[int, int] = {}  # pid -> token of the stop in effect (this process's)
_WATCHDOG_FIRED: dict[int, float] = {}  # token -> when the watchdog continued it
_tokens = itertools.count(1)
_start_thread = gevent.monkey.get_original("_thread", "start_new_thread")
_real_sleep = gevent.monkey.get_original("time", "sleep")


def _stop(pid: int) -> int:
    """SIGSTOP pid, with its watchdog. => the stop's token."""
    token = next(_tokens)
    _STOPPED[pid] = token
    try:
        os.kill(pid, signal.SIGSTOP)
    except BaseException:
        _cont(pid)
        raise
    _start_thread(_watchdog, (pid, token))
    return token


def _watchdog(pid: int, token: int) -> None:
    _real_sleep(ROLE_STOP_MAX_S)
    if _STOPPED.get(pid) == token:
        _WATCHDOG_FIRED[token] = time.monotonic()
        _cont(pid)


def _cont(pid: int) -> None:
    _STOPPED.pop(pid, None)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def _continue_all() -> None:
    for pid in list(_STOPPED):
        _cont(pid)


atexit.register(_continue_all)  # never leave a role stopped, even on the way out


class RoleStop(Fault):
    name = "role-stop"

    def __init__(self, nem: FaultHost) -> None:
        super().__init__(nem)
        self.turn = 0
        self.pid = 0
        self.token = 0
        self.role = ""

    def begin(self, detail: dict[str, Any]) -> None:
        self.role = STOP_ROLES[self.turn % len(STOP_ROLES)]
        self.turn += 1
        pid = int(self.nem.roles[self.role]["pid"])
        detail["role"], detail["pid"] = self.role, pid
        self.token = _stop(pid)
        self.pid = pid
        detail["stopped_at"] = time.monotonic()

    def end(self, detail: dict[str, Any]) -> None:
        pid, self.pid = self.pid, 0
        if not pid:
            return
        _cont(pid)
        ended = _WATCHDOG_FIRED.pop(self.token, None)
        if ended is not None:  # the hub was starved: the watchdog continued it
            detail["watchdog"] = True
        if "stopped_at" in detail:
            stopped_at = detail.pop("stopped_at")
            detail["stopped_s"] = round((ended or time.monotonic()) - stopped_at, 3)
        try:
            rep = kcall(str(self.nem.roles[self.role]["kernel"]), CtlPing(h=_H), timeout_s=5.0)
            detail["answered"] = rep.status is Status.OK
        except MachineError as e:
            detail["answered"] = False
            detail["ping_error"] = str(e)


FAULTS: dict[str, type[Fault]] = {
    f.name: f for f in (LinkSlow, LinkHold, PdaemonKick, Squeeze, ClientKill, RoleStop)
}


def make_fault(name: str, nem: FaultHost) -> Fault:
    return FAULTS[name](nem)
