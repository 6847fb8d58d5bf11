"""The nemesis (Jepsen's idea): faults on a schedule while the users run.

With faults F1..Fk selected (`--nemesis a,b,...`), slot i starts at i * period_s
and applies F(i mod k) for its window (by default 40 % of the period), then the
machine is left alone until the next slot. Each window is recorded, when it is
over, as (name, start, end, detail) in `Nemesis.windows`, and in the VM series
(`series.mark(...)`: the charts shade it): marked open (end None) once the fault
is in effect, closed when it is undone, and updated once a follow-up ends
(client-kill's reap).

The faults (machine.stress.nemesis_faults has their bodies):

  link-slow     net.link(bandwidth, latency), restored to what net had before
  link-hold     net.link(hold=True), then hold=False (short: loans pile up)
  pdaemon-kick  pd.wakeup to the page daemon a few times a second (forced passes)
  squeeze       a balloon session wires a fraction of RAM (mlock) for the window
  client-kill   a victim client process (machine.stress.victim) SIGKILLed
                mid-operation; its lease is reaped and its frames come back
  role-stop     SIGSTOP of one role (mmu, uvm, pdaemon, net in turn) for at most
                half its heartbeat limit, then SIGCONT

Invariants:
  - the schedule (`plan`, `window_for`, `check_names`: machine.stress.nemesis_plan,
    re-exported here) is pure, and this module imports neither gevent nor the
    green client at import time (pytest imports it); the runner imports them
    (and nemesis_faults) when it first needs them;
  - at most one fault is in effect at a time, and a window's undo runs in a
    `finally`: no role is left stopped, no link left held or slowed, no balloon
    left wired, whatever ends the window (its end, an error, `stop()`);
  - `stop()` undoes whatever is in effect and is idempotent;
  - a role is never stopped for more than half of HEARTBEAT_INTERVAL_S *
    HEARTBEAT_LIVENESS (the supervisor would declare it missing: a panic);
  - kernel-side faults (link-*, pdaemon-kick, role-stop) need the state dir
    (machine.json: kernel endpoints and pids): without it the Nemesis is refused
    at construction, with the names of the faults that need `--state`.

`python -m machine.stress.nemesis --selftest F[,F...] --endpoint EP [--state DIR]`
applies one window of each fault in turn (`--repeat N` rounds), or runs the
schedule for `--run S` seconds and stops it, and prints the windows as JSON (the
tests drive it: the rest of the suite is asyncio and must not import gevent).
With `--stdin-ends` it prints {"begun": ...} once a fault is in effect and ends
that window when a line arrives on stdin (or at --window), so a test can look
at the machine during the window.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from machine.stress.nemesis_plan import (
    HOLD_MAX_S,
    KERNEL_SIDE,
    KNOWN,
    ROLE_STOP_MAX_S,
    STOP_ROLES,
    Marker,
    Options,
    Slot,
    Window,
    check_names,
    kernel_roles,
    parse_names,
    plan,
    window_for,
)

if TYPE_CHECKING:
    import gevent
    import gevent.event

    from machine.stress.nemesis_faults import Fault

__all__ = [
    "HOLD_MAX_S",
    "KERNEL_SIDE",
    "KNOWN",
    "ROLE_STOP_MAX_S",
    "STOP_ROLES",
    "Nemesis",
    "Options",
    "Slot",
    "Window",
    "check_names",
    "parse_names",
    "plan",
    "window_for",
]


class Nemesis:
    """The schedule's greenlet and the faults it applies (on a Locust master or local
    runner; see the module's invariants)."""

    def __init__(
        self,
        names: list[str],
        *,
        endpoint: str,
        state_dir: str | None,
        series: Marker | None,
        period_s: float = 10.0,
        window_s: float | None = None,
        options: Options | None = None,
        clock: Callable[[], float] = time.time,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.names = check_names(names, state_dir)
        window_for(self.names[0], period_s, window_s)  # a bad period is refused here
        self.endpoint, self.state_dir, self.series = endpoint, state_dir, series
        self.period_s, self.window_s = period_s, window_s
        self.options = options or Options()
        self.clock = clock
        self.log = log or (lambda s: print(f"nemesis: {s}", file=sys.stderr))
        self.roles = kernel_roles(state_dir) if state_dir else {}
        self.windows: list[Window] = []
        self._faults: dict[str, Fault] = {}
        self._current: Fault | None = None
        self._loop: gevent.Greenlet[Any, Any] | None = None
        self._followups: list[gevent.Greenlet[Any, Any]] = []
        self._stopped = False

    def _fault(self, name: str) -> Fault:
        if name not in self._faults:
            from machine.stress.nemesis_faults import make_fault

            self._faults[name] = make_fault(name, self)
        return self._faults[name]

    def start(self) -> Nemesis:
        import gevent

        if self._loop is None and not self._stopped:
            self._loop = gevent.spawn(self._run)
        return self

    def _run(self) -> None:
        import gevent

        t0 = time.monotonic()
        for slot in plan(self.names, self.period_s, self.window_s):
            gevent.sleep(max(0.0, t0 + slot.start_s - time.monotonic()))
            self.run_window(slot.name, slot.end_s - slot.start_s)

    def run_window(
        self,
        name: str,
        duration_s: float,
        *,
        on_begun: Callable[[Window], None] | None = None,
        ends: gevent.event.Event | None = None,
    ) -> Window:
        """Apply `name` now for duration_s (or until `ends` is set), undo it, record the
        window (its mark waits for the fault's follow-up, e.g. client-kill's reap)."""
        import gevent

        if name == "role-stop":
            duration_s = min(duration_s, ROLE_STOP_MAX_S)  # never long enough to be missed
        fault = self._fault(name)
        w = Window(name, self.clock())
        self._current = fault
        try:
            fault.begin(w.detail)
            self._mark(w, open_=True)
            if on_begun is not None:
                on_begun(w)
            if ends is not None:
                ends.wait(timeout=duration_s)
            else:
                gevent.sleep(duration_s)
        except Exception as e:  # a fault that failed is recorded, never the run's end
            w.detail["error"] = f"{type(e).__name__}: {e}"
            self.log(f"{name}: {w.detail['error']}")
        finally:
            self._undo(fault, w)
            w.end = self.clock()
            self.windows.append(w)
            self._mark(w)
            follow = fault.take_follow_up()
            if follow is not None:  # its result (e.g. the reap) updates the mark
                self._followups.append(gevent.spawn(self._mark_after, follow, w))
        return w

    def _undo(self, fault: Fault, w: Window) -> None:
        try:
            fault.end(w.detail)
        except Exception as e:
            w.detail["undo_error"] = f"{type(e).__name__}: {e}"
            self.log(f"{fault.name}: undo failed: {w.detail['undo_error']}")
        finally:
            self._current = None

    def _mark_after(self, follow: gevent.Greenlet[Any, Any], w: Window) -> None:
        try:
            follow.join()
        finally:
            follow.kill(block=True, timeout=5.0)  # done, or its watcher was stopped: ends it
            self._mark(w)

    def _mark(self, w: Window, open_: bool = False) -> None:
        if self.series is not None:
            self.series.mark(w.name, w.start, None if open_ else w.end, w.detail_text())

    def join_followups(self, timeout_s: float | None = None) -> None:
        """Wait for the windows still being watched (client-kill's reap)."""
        import gevent

        gevent.joinall(self._followups, timeout=timeout_s)

    def stop(self) -> None:
        """Stop the schedule and undo whatever is in effect (idempotent)."""
        self._stopped = True
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.kill(block=True, timeout=30.0)  # its finally undoes the fault in effect
        for f in list(self._faults.values()):
            try:  # idempotent: continue a role, restore the link, free the balloon
                f.close()
            except Exception as e:  # e.g. the machine panicked: logged, the others go on
                self.log(f"{f.name}: close failed: {type(e).__name__}: {e}")
        if self._followups:  # watches only (their windows are marked as they end): ended
            import gevent  # here, not left behind (not imported before: pytest calls stop())

            gevent.killall(self._followups, block=True, timeout=10.0)
            self._followups.clear()

    def windows_json(self) -> list[dict[str, Any]]:
        return [w.to_dict() for w in self.windows]


# -- the selftest (one window, for the tests) -----------------------------------------


class _Marks:
    def __init__(self) -> None:
        self.marks: list[dict[str, Any]] = []

    def mark(self, name: str, start: float, end: float | None = None, detail: str = "") -> None:
        self.marks.append({"name": name, "start": start, "end": end, "detail": detail})


def _print(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, default=str), flush=True)


def _setter(ev: gevent.event.Event) -> Callable[[Any], None]:
    return lambda _result: ev.set()


def selftest(a: argparse.Namespace) -> int:
    """Apply windows of the named faults in turn (--repeat), or run the schedule for
    --run seconds and stop it; print {"windows", "marks"}. => 1 if a window failed."""
    import gevent
    import gevent.event
    import gevent.monkey

    marks = _Marks()
    names = parse_names(a.selftest)
    n = Nemesis(
        names,
        endpoint=a.endpoint,
        state_dir=a.state,
        series=marks,
        period_s=a.period,
        window_s=a.window,
    )

    def begun(w: Window) -> None:
        if a.stdin_ends:
            _print({"begun": w.to_dict()})
        if a.block_hub:  # what a greenlet that never yields does to the schedule
            gevent.monkey.get_original("time", "sleep")(a.block_hub)

    try:
        if a.run:
            n.start()
            gevent.sleep(a.run)
        else:
            for i in range(a.repeat * len(names)):
                ends: gevent.event.Event | None = None
                if a.stdin_ends:
                    ends = gevent.event.Event()
                    line = gevent.get_hub().threadpool.spawn(sys.stdin.readline)
                    line.rawlink(_setter(ends))
                n.run_window(names[i % len(names)], a.window, on_begun=begun, ends=ends)
        n.join_followups(timeout_s=120.0)
    finally:
        n.stop()  # undoes what a --run left in effect
    _print({"windows": n.windows_json(), "marks": marks.marks})
    failed = any("error" in w.detail or "undo_error" in w.detail for w in n.windows)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m machine.stress.nemesis")
    ap.add_argument("--selftest", required=True, metavar="FAULT[,FAULT...]")
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--state", default=None)
    ap.add_argument("--window", type=float, default=2.0, help="seconds per window")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the faults, in turn")
    ap.add_argument("--stdin-ends", action="store_true", help="end a window on a stdin line")
    ap.add_argument("--run", type=float, default=0.0, help="run the schedule this long, stop")
    ap.add_argument("--period", type=float, default=10.0, help="the schedule's period (--run)")
    ap.add_argument("--block-hub", type=float, default=0.0, help="block gevent this long at begin")
    a = ap.parse_args(argv)
    try:
        return selftest(a)
    except ValueError as e:
        print(f"nemesis: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
