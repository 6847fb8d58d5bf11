"""The run's controller, on the Locust master (or the one process of a local run).

It owns what is one per run, not one per user:
  - a session of its own (`m`) that samples the machine's status once a second
    into the VmSeries (the VM tab, vm.csv, the report's charts);
  - the EventWatch that sees the machine's panic event, and the listeners of
    the users' reports (uvm_corruption, uvm_panic): the first panic stops the
    run at once (runner.quit(): the master stops every worker);
  - the nemesis, started with the run and stopped (every fault undone) when the
    users stop (Locust's test_stop) and again, idempotently, before the verdict;
  - the verdict: once every user has left, frames are awaited back (every
    frame a user held is free again, and swap is as it was) within a deadline,
    summary.json is written with the report files, and the exit status set;
  - the evidence: a dump of the machine with every role's flight recorder
    (ctl.dumpsys, through the supervisor's kernel endpoint: needs the state dir)
    at the first corruption, while the recorders still hold its history, when
    frames are not back, and for any other verdict but 0 (a threshold, failures)
    at the end; a panic's crash dump is the supervisor's own. Its path is
    summary.json's `dump` (`uvm-machine stress` adds the explain page and commands).
Invariants: `finish` runs once (Locust's quitting event) and always sets
`environment.process_exit_code`; no greenlet of the controller outlives it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import gevent
from locust.env import Environment
from locust.rpc.protocol import Message

from machine.client.errors import MachineError, MachinePanic, MachineStopped
from machine.proto import NO_HEADER, CtlDumpsys, CtlDumpsysReply, UvmAudit, UvmAuditReply
from machine.stress.base import MSG_CORRUPTION, MSG_PANIC
from machine.stress.charts import inject_report
from machine.stress.green import EventWatch, GreenMachine, kcall
from machine.stress.nemesis import Nemesis, parse_names
from machine.stress.nemesis_plan import kernel_roles
from machine.stress.outcome import Record, Thresholds, verdict, verdict_line, write_summary
from machine.stress.vmstats import VmSeries
from machine.stress.webui import install as install_vm_tab

FRAMES_BACK_S = 10.0  # beyond the lease: how long frames may take to come back
DUMP_TIMEOUT_S = 120.0  # a dump with every flight recorder (tens of MB) is written in time
_H = NO_HEADER
#: The options the summary repeats (with the users, spawn rate and run time).
SUMMARY_FLAGS = (
    "num_users",
    "spawn_rate",
    "run_time",
    "mix",
    "nemesis",
    "nemesis_period",
    "rate",
    "max_p99_ms",
    "max_fail_ratio",
    "min_ops_per_s",
)


def _frames_back(start: dict[str, int], now: dict[str, int]) -> bool:
    """Every frame users held is free again and swap is as it was at the start."""
    return now.get("free", -1) >= start.get("free", 0) and now.get("swpginuse", 0) <= start.get(
        "swpginuse", 0
    )


class Controller:
    def __init__(self, env: Environment) -> None:
        self.env = env
        self.record = Record()
        self.series = VmSeries()
        self.m: GreenMachine | None = None
        self.watch: EventWatch | None = None
        self.nemesis: Nemesis | None = None  # the current test's; earlier tests' in _nemeses
        self._nemeses: list[Nemesis] = []
        self.frames_start: dict[str, int] = {}
        self.profile = ""
        self.started = 0.0  # time.time() of the run's start
        self._poller: gevent.Greenlet[Any, Any] | None = None
        self._quitter: gevent.Greenlet[Any, Any] | None = None
        self.sample_errors = 0  # status samples that failed (not a panic or stop): skipped
        self.dump: dict[str, Any] = {}  # the evidence: {path, reason} or {error}
        self._dumper: gevent.Greenlet[Any, Any] | None = None
        self._finished = False
        assert env.runner is not None
        env.runner.register_message(MSG_CORRUPTION, self._on_corruption)
        env.runner.register_message(MSG_PANIC, self._on_panic)
        env.events.test_start.add_listener(self.on_test_start)  # type: ignore[no-untyped-call]
        env.events.test_stop.add_listener(self.on_test_stop)  # type: ignore[no-untyped-call]
        env.events.quitting.add_listener(self.finish)  # type: ignore[no-untyped-call]
        install_vm_tab(env, self.series)

    def option(self, name: str, default: Any = None) -> Any:
        return getattr(self.env.parsed_options, name, default)

    # -- the run ----------------------------------------------------------------------

    def on_test_start(self, **_: Any) -> None:
        """The first test attaches and starts sampling (the series spans the process's
        life); every test (a new one from the web UI too) gets its own nemesis."""
        if self.m is None:
            assert self.env.host, "no --host (the machine's attach endpoint)"
            self.started = time.time()
            self.m = GreenMachine.attach(self.env.host)
            self.watch = EventWatch(self.m.directory.events).start()
            self.m.watch = self.watch
            self.profile = self.m.directory.profile
            self.frames_start = dict(self.m.stats().get("frames", {}))
            self._sample()
            self._poller = gevent.spawn(self._poll)
        names = parse_names(self.option("nemesis", "") or "")
        assert self.env.host is not None
        if names and self.nemesis is None:
            self.nemesis = Nemesis(
                names,
                endpoint=self.env.host,
                state_dir=self.option("uvm_state", "") or None,
                series=self.series,
                period_s=float(self.option("nemesis_period", 10.0)),
            ).start()

    def on_test_stop(self, **_: Any) -> None:
        """The users are stopped (run time, a panic, the web UI's Stop): so is the nemesis,
        every fault undone, not left running its schedule against an idle machine."""
        if self.nemesis is not None:
            self.nemesis.stop()
            self._nemeses.append(self.nemesis)
            self.nemesis = None

    def _sample(self) -> bool:
        """One status sample. => False once the machine is gone (panicked or stopped);
        a sample that fails otherwise (a timeout under a fault) is skipped, not the end."""
        assert self.m is not None
        try:
            self.series.sample(time.time(), self.m.stats())
        except (MachinePanic, MachineStopped):
            return False
        except MachineError:
            self.sample_errors += 1
        return True

    def _poll(self) -> None:
        while True:
            gevent.sleep(self.series.interval_s)
            if self.watch is not None and self.watch.panic is not None:
                p = self.watch.panic
                self._stop_for_panic(p.role, p.message, p.dump)
            if not self._sample():
                return

    def _on_corruption(self, environment: Environment, msg: Message, **_: Any) -> None:
        self.record.add_corruption(dict(msg.data))
        if self.record.corruption == 1:  # now, while the recorders hold its history
            reason = "corruption: " + json.dumps(dict(msg.data), default=str)
            self._dumper = gevent.spawn(self._dumpsys, reason)

    def _crash_dump(self) -> None:
        """The panic's crash dump: its path came with the supervisor's panic event, or it
        is the newest crash-*.json the supervisor writes into the state dir (it may still
        be writing it: waited for, within DUMP_TIMEOUT_S)."""
        assert self.record.panic is not None
        path = self.record.panic.get("dump") or ""
        state = self.option("uvm_state", "") or ""
        deadline = time.monotonic() + DUMP_TIMEOUT_S
        while not path and state and time.monotonic() < deadline:
            found = [
                p
                for p in (Path(state) / "dump").glob("crash-*.json")
                if p.stat().st_mtime >= self.started - 1
            ]
            if found:
                path = str(max(found, key=lambda p: p.stat().st_mtime))
                self.record.panic["dump"] = path
            else:
                gevent.sleep(0.1)
        if path:
            self.dump = {"path": path, "reason": "panic"}
        elif not state:
            self.dump = {"error": "no dump: the machine's state dir is not known (--state)"}
        else:
            self.dump = {"error": f"no crash dump appeared in {state}/dump"}

    def _dumpsys(self, reason: str) -> None:
        """A dump of the live machine (ctl.dumpsys) as the run's evidence (the first one
        wins). Without the state dir (an attached machine) it says why there is none."""
        if self.dump:
            return
        state = self.option("uvm_state", "") or ""
        if not state:
            self.dump = {"error": "no dump: the machine's state dir is not known (--state)"}
            return
        try:
            info = json.loads((Path(state) / "machine.json").read_text())
            rep = kcall(
                str(info["supervisor"]["kernel"]),
                CtlDumpsys(h=_H, reason=reason[:4000]),
                timeout_s=DUMP_TIMEOUT_S,
            )
        except (OSError, ValueError, KeyError, MachineError) as e:
            self.dump = {"error": f"no dump: {e}"}
            return
        if isinstance(rep, CtlDumpsysReply) and rep.path:
            self.dump = {"path": rep.path, "reason": reason}
        else:
            self.dump = {"error": f"no dump: {rep.errno}: {rep.detail}"}

    def _audit(self) -> list[str] | None:
        """uvm.audit of the quiet machine, once every frame is back: the invariants the
        model tests check after every step (a reference count left behind by no frame,
        a mapping the mmu holds and uvm does not). => its problems ([] when all hold);
        None when not run (no state dir, or no answer)."""
        state = self.option("uvm_state", "") or ""
        if not state:
            return None
        try:
            rep = kcall(
                str(kernel_roles(state)["uvm"]["kernel"]),
                UvmAudit(h=_H),
                timeout_s=DUMP_TIMEOUT_S,
            )
        except (OSError, ValueError, KeyError, MachineError):
            return None
        return list(rep.problems) if isinstance(rep, UvmAuditReply) else None

    def _on_panic(self, environment: Environment, msg: Message, **_: Any) -> None:
        d = msg.data
        self._stop_for_panic(d.get("role", ""), d.get("message", ""), d.get("dump", ""))

    def _record_panic(self, role: str, message: str, dump: str) -> bool:
        """Record a report of the panic (`after_s`: when first reported). => True if first."""
        if not self.record.add_panic(role, message, dump):
            return False
        assert self.record.panic is not None
        self.record.panic["after_s"] = round(time.time() - self.started, 1)
        return True

    def _stop_for_panic(self, role: str, message: str, dump: str) -> None:
        if self._record_panic(role, message, dump):
            print(f"uvm-machine stress: machine panic: {role}: {message}", file=sys.stderr)
            assert self.env.runner is not None
            # not in this greenlet: quit() kills the runner's greenlets, the caller's too
            self._quitter = gevent.spawn(self.env.runner.quit)

    # -- the verdict --------------------------------------------------------------------

    def _await_frames_back(self) -> bool | None:
        """Poll until frames are back or the deadline. => None if the machine is gone."""
        if self.m is None or self.record.panic is not None:
            return None
        deadline = time.monotonic() + self.m.directory.lease_s + FRAMES_BACK_S
        while True:
            if not self._sample():
                return None
            if _frames_back(self.frames_start, self.series.frames_end()):
                return True
            if time.monotonic() > deadline:
                return False
            gevent.sleep(0.25)

    def finish(self, environment: Environment, **_: Any) -> None:
        if self._finished:
            return
        self._finished = True
        if environment.runner is not None:
            # quitting comes before Locust's runner.quit() on SIGTERM / Ctrl-C: the users
            # must leave before their frames can come back (a no-op once stopped)
            environment.runner.stop()
        self.on_test_stop()
        if self._poller is not None:
            self._poller.kill()
        back = self._await_frames_back()
        audit = self._audit() if back else None
        if self.watch is not None and self.watch.panic is not None:
            p = self.watch.panic
            self._record_panic(p.role, p.message, p.dump)
        if self._dumper is not None:
            self._dumper.join(timeout=DUMP_TIMEOUT_S)
            self._dumper.kill()  # no greenlet of the controller outlives it (a no-op if done)
        if back is False:
            end = self.series.frames_end()
            self._dumpsys(f"frames not back: at the start {self.frames_start}, at the end {end}")
        elif audit:
            self._dumpsys(f"audit: {len(audit)} problems after the run, the first: {audit[0]}")
        if self.record.panic is not None and not self.dump.get("path"):
            self._crash_dump()  # a corruption's dump, taken first, is the verdict's evidence
        summary = self.summary(back)
        summary["vm"]["audit"] = audit
        code = verdict(summary)
        if code != 0 and not self.dump and back is not None:  # a threshold, failures, ...
            self._dumpsys(f"verdict {code}: {verdict_line(summary)}")
            summary["dump"] = self.dump.get("path")
            summary["dump_reason"] = self.dump.get("reason") or self.dump.get("error")
        summary["exit_status"] = code
        print(f"uvm-machine stress: exit {code}: {verdict_line(summary)}", file=sys.stderr)
        report = self.option("uvm_report", "") or ""
        if report:
            out = Path(report)
            write_summary(out / "summary.json", summary)
            self.series.write_csv(out / "vm.csv")
            html = self.option("html_file", "") or ""
            if html and Path(html).exists():
                inject_report(html, self.series)
        if self.watch is not None:
            self.watch.close()
        if self.m is not None:
            self.m.close()
        if self._quitter is not None:
            self._quitter.join(timeout=10.0)  # done by now: quitting follows quit()
        environment.process_exit_code = code

    def summary(self, frames_back: bool | None) -> dict[str, Any]:
        st = self.env.stats
        total = st.total
        ops, failures = total.num_requests, total.num_failures
        last = total.last_request_timestamp or total.start_time
        span = max(last - total.start_time, 1e-9) if ops else 0.0
        ops_per_s = ops / span if span else 0.0
        p50 = float(total.get_response_time_percentile(0.5) or 0.0) if ops else 0.0
        p99 = float(total.get_response_time_percentile(0.99) or 0.0) if ops else 0.0
        per_op = {
            e.name: {
                "ops": e.num_requests,
                "failures": e.num_failures,
                "ops_per_s": round(e.num_requests / span, 1) if span else 0.0,
                "p50_ms": float(e.get_response_time_percentile(0.5) or 0.0),
                "p99_ms": float(e.get_response_time_percentile(0.99) or 0.0),
            }
            for e in sorted(st.entries.values(), key=lambda e: e.name)
        }
        thresholds = Thresholds(
            max_p99_ms=self.option("max_p99_ms"),
            max_fail_ratio=float(self.option("max_fail_ratio", 0.0) or 0.0),
            min_ops_per_s=self.option("min_ops_per_s"),
        ).judge(ops, failures, ops_per_s, p99)
        vm = self.series.summary()
        vm["frames_start"] = self.frames_start
        vm["frames_back"] = frames_back
        errors = [
            {"name": e.name, "error": str(e.error), "count": e.occurrences}
            for e in list(st.errors.values())[:50]
        ]
        runner = self.env.runner
        raised = list(runner.exceptions.values()) if runner is not None else []
        vm["sample_errors"] = self.sample_errors
        return {
            "ops": ops,
            "failures": failures,
            "corruption": self.record.corruption,
            "corruptions": self.record.corruptions,
            "panic": self.record.panic,
            "ops_per_s": round(ops_per_s, 1),
            "elapsed_s": round(time.time() - self.started, 1) if self.started else 0.0,
            "p50_ms": p50,
            "p99_ms": p99,
            "operations": per_op,
            "errors": errors,
            "user_errors": sum(int(x["count"]) for x in raised),
            "user_exceptions": [{"msg": x["msg"], "count": x["count"]} for x in raised[:10]],
            "thresholds": thresholds,
            "vm": vm,
            "nemesis": [w for n in self._nemeses for w in n.windows_json()],
            "profile": self.profile,
            "flags": {k: self.option(k) for k in SUMMARY_FLAGS},
            "host": self.env.host,
            "client": "green",
            "dump": self.dump.get("path"),
            "dump_reason": self.dump.get("reason") or self.dump.get("error"),
        }
