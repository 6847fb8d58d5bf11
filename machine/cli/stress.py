"""`uvm-machine stress`: boot a machine (or attach to one) and run the Locust harness on it.

    uvm-machine stress --ram 16M --profile modern --users 16 --spawn-rate 8 --run-time 30s \\
        --workers 2 --mix pattern=3,sender=1 --nemesis link-slow,squeeze --report out/ --json

Steps: boot `uvm-machine up` as a child (the machine flags of `up`), or take
`--endpoint` (and `--state`, the state dir of a machine on this host, which the
kernel-side faults and the host-file checks need); run Locust headless on
machine/stress/locustfile.py — one process (`--workers 0`) or a master and W
local workers; read the verdict the master wrote (summary.json), add the
harness's own cost (CPU of the Locust processes and of the machine's roles per
operation), print it (`--json`: the summary, last on stdout) and stop the machine.

Exit status: the verdict (machine.stress.outcome: 0 held, 1 a threshold or
failure, 3 a panic, 4 corruption); 2 when the run itself could not be made
(bad flags, the machine did not boot, Locust wrote no summary).
Invariants: the machine this command booted is stopped, and every Locust
process it started has exited, before it returns, whatever happened.
Importing this module imports neither gevent nor Locust (they run in children).
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine.cli.args import endpoint, machine_args

PY = sys.executable
LOCUSTFILE = str(Path(__file__).resolve().parent.parent / "stress" / "locustfile.py")
BOOT_TIMEOUT_S = 60.0
MASTER_GRACE_S = 90.0  # an interrupted master's verdict: nemesis undone, lease + 10 s for frames
EXIT_RUN = 2


def add_parser(sub: Any) -> None:
    p = sub.add_parser("stress", help="run the Locust stress harness on a machine")
    machine_args(p)
    p.add_argument("--endpoint", type=endpoint, help="attach to this machine instead of booting")
    p.add_argument("--users", "-u", type=int, default=8)
    p.add_argument("--spawn-rate", "-r", type=float, default=8.0)
    p.add_argument("--run-time", "-t", default="30s", help="e.g. 30s, 2m")
    p.add_argument("--workers", type=int, default=0, help="local Locust workers (0: one process)")
    p.add_argument("--mix", default="", help="users and weights: pattern=3,sender=1,...")
    p.add_argument("--nemesis", default="", help="faults: link-slow,link-hold,pdaemon-kick,...")
    p.add_argument("--nemesis-period", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=0.0, help="operations/s per user (open model)")
    p.add_argument("--max-p99-ms", type=float)
    p.add_argument("--max-fail-ratio", type=float, default=0.0)
    p.add_argument("--min-ops-per-s", type=float)
    p.add_argument(
        "--locustfile",
        action="append",
        default=[],
        help="more users (your own), imported after the harness's; name them in --mix",
    )
    p.add_argument("--report", help="directory: report.html, Locust's CSVs, vm.csv, summary.json")
    p.add_argument("--json", action="store_true", help="print summary.json last")
    p.add_argument("-v", "--verbose", action="store_true", help="show Locust's output")
    p.set_defaults(fn=cmd_stress)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Booted:
    """A machine this command booted (`uvm-machine up` as a child)."""

    def __init__(self, a: argparse.Namespace, state: Path) -> None:
        cmd = [PY, "-m", "machine", "up", "--endpoint", "tcp://127.0.0.1:0"]
        cmd += ["--state", str(state), "--ram", str(a.ram), "--profile", a.profile]
        cmd += ["--lease", str(a.lease)]
        if a.swap:
            cmd += ["--swap", str(a.swap)]
        lim = {k: v for k, v in a.limit.to_dict().items() if v != type(a.limit)().to_dict()[k]}
        if lim:
            cmd += ["--limit", ",".join(f"{k}={v}" for k, v in lim.items())]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self._attach_line(self.proc.stdout.fileno(), time.monotonic() + BOOT_TIMEOUT_S)
        if not line.startswith("attach: "):
            self.stop()
            raise RuntimeError(f"the machine did not boot: {line.strip() or 'no output'}")
        self.endpoint = line.split(" ", 1)[1].strip()

    @staticmethod
    def _attach_line(fd: int, deadline: float) -> str:
        """`up`'s "attach: EP" line, read with a deadline (a hung, silent `up` must not
        hang this command). => that line, or the last line / why there is none."""
        buf, last = b"", ""
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([fd], [], [], left)[0]:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                return last  # `up` exited
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                last = raw.decode(errors="replace")
                if last.startswith("attach: "):
                    return last
        return f"no attach line within {BOOT_TIMEOUT_S:.0f} s"

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)


def _locust_args(a: argparse.Namespace, host: str, state: str, report: Path) -> list[str]:
    files = ",".join([LOCUSTFILE, *(str(Path(f).resolve()) for f in a.locustfile)])
    args = [PY, "-m", "locust", "-f", files, "--host", host]
    opts: list[tuple[str, Any]] = [
        ("--mix", a.mix),
        ("--nemesis", a.nemesis),
        ("--nemesis-period", a.nemesis_period),
        ("--rate", a.rate),
        ("--max-p99-ms", a.max_p99_ms),
        ("--max-fail-ratio", a.max_fail_ratio),
        ("--min-ops-per-s", a.min_ops_per_s),
        ("--uvm-state", state),
    ]
    for flag, v in opts:
        if v not in (None, ""):
            args += [flag, str(v)]
    return args


def _role_cpu_s(state: str) -> float | None:
    """CPU seconds the machine's roles (and supervisor) have used, from machine.json."""
    try:
        import psutil

        info = json.loads((Path(state) / "machine.json").read_text())
        pids = [int(r["pid"]) for r in info["roles"].values()] + [int(info["supervisor_pid"])]
        total = 0.0
        for pid in pids:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        return total
    except (OSError, ValueError, KeyError, ImportError):
        return None
    except Exception:  # psutil.Error: a role gone (after a panic)
        return None


def _run_locust(a: argparse.Namespace, host: str, state: str, report: Path) -> int:
    base = _locust_args(a, host, state, report)
    run = ["--headless", "-u", str(a.users), "-r", str(a.spawn_rate), "-t", a.run_time]
    run += ["--uvm-report", str(report), "--html", str(report / "report.html")]
    run += ["--csv", str(report / "locust"), "--only-summary", "--loglevel", "WARNING"]
    out = None if a.verbose else subprocess.DEVNULL
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if a.workers <= 0:
            procs.append(subprocess.Popen([*base, *run], stdout=out, stderr=None))
        else:
            port = _free_port()
            master = [*run, "--master", "--expect-workers", str(a.workers)]
            master += ["--master-bind-host", "127.0.0.1", "--master-bind-port", str(port)]
            procs.append(subprocess.Popen([*base, *master], stdout=out, stderr=None))
            for _ in range(a.workers):
                w = [*base, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)]
                w += ["--loglevel", "WARNING"]
                procs.append(subprocess.Popen(w, stdout=out, stderr=out))
        limit = _seconds(a.run_time) + MASTER_GRACE_S + a.lease + 60.0
        try:
            return procs[0].wait(timeout=limit)
        except subprocess.TimeoutExpired:
            print(f"uvm-machine stress: Locust ran past {limit:.0f} s: stopped", file=sys.stderr)
            return EXIT_RUN
    finally:
        # the master first, and given time: its quitting undoes the nemesis (a role
        # stopped, a link slowed) and writes the verdict; a SIGKILL there would leave a
        # fault applied to an attached machine. SIGTERM is Locust's graceful stop (a
        # Ctrl-C has reached it already; a SIGTERM of this command, or a run past its
        # time, has not).
        if procs and procs[0].poll() is None:
            procs[0].send_signal(signal.SIGTERM)
        for i, p in enumerate(procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=MASTER_GRACE_S if i == 0 else 15.0)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _seconds(span: str) -> float:
    """Locust's --run-time ("90", "30s", "2m", "1h30m") in seconds. => ValueError if bad."""
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", span.strip())
    if not span.strip() or m is None:
        raise ValueError(f"--run-time {span!r}: use e.g. 30s, 2m, 1h30m")
    h, mi, sec = (int(x) if x else 0 for x in m.groups())
    return float(h * 3600 + mi * 60 + sec)


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: unwind as Ctrl-C does, through every finally


def _check(a: argparse.Namespace) -> str | None:
    """Refuse bad flags before booting anything. => the error, or None."""
    from machine.stress.nemesis_plan import check_names, parse_names

    try:
        if names := parse_names(a.nemesis):
            # a booted machine's state dir is this command's; an attached one needs --state
            check_names(names, None if a.endpoint and not a.state else "state")
        _seconds(a.run_time)
    except ValueError as e:
        return str(e)
    if a.users < 1 or a.workers < 0 or a.spawn_rate <= 0:
        return "--users must be >= 1, --workers >= 0, --spawn-rate > 0"
    return None


def cmd_stress(a: argparse.Namespace) -> int:
    if (err := _check(a)) is not None:
        print(f"uvm-machine stress: {err}", file=sys.stderr)
        return EXIT_RUN
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return _stress(a)
    except KeyboardInterrupt:
        print("uvm-machine stress: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stress(a: argparse.Namespace) -> int:
    temp_state = a.state is None
    state = Path(a.state or tempfile.mkdtemp(prefix="uvm-stress-")).resolve()
    temp_report = a.report is None
    report = Path(a.report or tempfile.mkdtemp(prefix="uvm-stress-report-")).resolve()
    report.mkdir(parents=True, exist_ok=True)
    (report / "summary.json").unlink(missing_ok=True)
    booted: _Booted | None = None
    keep_state = False  # a dump (a panic's, a corruption's, a leak's) lives in the state dir
    try:
        if a.endpoint:
            host, state_arg = a.endpoint, (str(state) if a.state else "")
        else:
            booted = _Booted(a, state)
            host, state_arg = booted.endpoint, str(state)
        cpu0 = _role_cpu_s(state_arg) if state_arg else None
        child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        code = _run_locust(a, host, state_arg, report)
        child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu1 = _role_cpu_s(state_arg) if state_arg else None
        path = report / "summary.json"
        if not path.exists():
            print(f"uvm-machine stress: Locust exited {code} and wrote no summary", file=sys.stderr)
            return EXIT_RUN
        summary = json.loads(path.read_text())
        locust_cpu = (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)
        machine_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        ops = max(int(summary.get("ops", 0)), 1)
        summary["harness"] = {
            "client": summary.get("client", "green"),
            "locust_processes": 1 + max(a.workers, 0),
            "locust_cpu_s": round(locust_cpu, 2),
            "machine_cpu_s": None if machine_cpu is None else round(machine_cpu, 2),
            "locust_cpu_per_op_us": round(locust_cpu / ops * 1e6, 1),
            "machine_cpu_per_op_us": None
            if machine_cpu is None
            else round(machine_cpu / ops * 1e6, 1),
        }
        summary["flags"] = {**summary.get("flags", {}), "workers": a.workers, "ram": a.ram}
        if int(summary.get("exit_status", code)) != 0 and summary.get("dump"):
            if temp_report:  # no report to keep it in: the state dir keeps it
                summary["explain"] = f"uvm-machine explain {summary['dump']}"
                summary["replay"] = f"uvm-machine replay --from-dump {summary['dump']}"
            else:
                _evidence(summary, report)
        path.write_text(json.dumps(summary, indent=1) + "\n")
        # a dump lives in the state dir: never removed then
        keep_state = summary.get("panic") is not None or summary.get("dump") is not None
        _print(summary, report, a.json, temp_report)
        return int(summary.get("exit_status", code))
    except RuntimeError as e:
        print(f"uvm-machine stress: {e}", file=sys.stderr)
        return EXIT_RUN
    finally:
        if booted is not None:
            booted.stop()
        if temp_state and (a.endpoint or not keep_state):
            shutil.rmtree(state, ignore_errors=True)  # attached: an unused temporary dir
        elif keep_state and temp_state:
            print(f"uvm-machine stress: state (with the dump) kept in {state}", file=sys.stderr)
        if temp_report:
            shutil.rmtree(report, ignore_errors=True)


def _evidence(summary: dict[str, Any], report: Path) -> None:
    """A run whose verdict is not 0: its dump (with every flight recorder) is copied into
    the report as dump.json, explained into explain.html, linked from report.html; the
    summary gains the `explain` and `replay` commands (or `evidence_error`)."""
    from machine.dumpfile import DumpError, copy_private, read_dump
    from machine.explore.explain import explain

    dump = report / "dump.json"
    try:
        copy_private(summary["dump"], dump)
        ex = explain(read_dump(dump), str(dump))
        (report / "explain.html").write_text(ex.html(f"{ex.outcome}: the stress run's dump"))
    except (OSError, DumpError) as e:
        summary["evidence_error"] = f"{type(e).__name__}: {e}"
        return
    summary["explain"] = f"uvm-machine explain {dump} --html {report / 'explain.html'}"
    summary["replay"] = f"uvm-machine replay --from-dump {dump}"
    summary["explained"] = {k: ex.to_json()[k] for k in ("outcome", "revoker", "caption", "page")}
    page = report / "report.html"
    if page.exists():
        text = page.read_text()
        why = html.escape((ex.caption or ex.outcome)[:300])
        link = (
            '<p id="uvm-explain" style="padding:12px 16px;margin:0;background:#fbeaea;'
            'font:15px sans-serif"><b>Why this run failed:</b> <a href="explain.html">the '
            f"explain page</a> ({why}) &middot; the dump: "
            '<a href="dump.json">dump.json</a> &middot; replay it in the simulator: '
            "<code>uvm-machine replay --from-dump dump.json</code></p>"
        )
        at = text.find("<body")
        at = text.find(">", at) + 1 if at >= 0 else 0
        page.write_text(text[:at] + link + text[at:])


def _print(summary: dict[str, Any], report: Path, as_json: bool, temp: bool) -> None:
    p = summary.get("panic")
    h = summary["harness"]
    lines = [
        f"ops {summary['ops']}  failures {summary['failures']}  corruption "
        f"{summary['corruption']}  {summary['ops_per_s']} ops/s  p50 {summary['p50_ms']} ms  "
        f"p99 {summary['p99_ms']} ms",
        f"panic: {p['role']}: {p['message']} (dump {p['dump'] or '-'})" if p else "panic: none",
        f"frames back: {summary['vm'].get('frames_back')}  frames at the end: "
        f"{summary['vm'].get('frames_end')}",
        f"harness: {h['locust_cpu_per_op_us']} us CPU per op in Locust, "
        f"{h['machine_cpu_per_op_us']} us in the machine",
    ]
    for name, t in summary.get("thresholds", {}).items():
        lines.append(
            f"threshold {name}: {t['value']} vs {t['limit']}: {'held' if t['held'] else 'MISSED'}"
        )
    if not temp:
        lines.append(f"report: {report}")
    if summary.get("explain"):
        lines.append(f"explain: {summary['explain']}")
        lines.append(f"replay: {summary['replay']}")
    print("\n".join(lines), file=sys.stderr if as_json else sys.stdout, flush=True)
    if as_json:
        print(json.dumps(summary), flush=True)
