"""docs/tutorial.md runs as written: every ```sh block in order, in a temporary directory,
against the real CLI, and each prints what the page says it prints.

A block marked `<!-- tutorial: terminal 1 -->` is the first terminal: it runs in the
background and the next blocks start once it printed `attach:`; the next terminal-1
block first waits for the one before it to end (the bug1999 machine stops by itself at
its panic) and checks its exit. `<!-- tutorial: skip -->` blocks (the install) are not
run: the test runs in the project's venv. The machine's endpoint is a free port
(UVM_MACHINE_ENDPOINT, and 7700 replaced in the commands).

CHECKS holds, per command, the patterns its output must match; each must also match
what the page shows for that command, so the page and the machine cannot drift apart.
Real processes and a real stress run of 30 s: 50 s in all on an idle 2-core host, 91 s
with other jobs on it, so it is marked slow (`.ci/run` runs `pytest -m slow`); the check
that the page and CHECKS agree runs by default."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.docs.pages import DOCS, Command, commands

PAGE = DOCS / "tutorial.md"
PANIC = r"panic: uvm: .*kernel page fault at 0x[0-9a-f]+: .*was revoked by \w+: pmap_page_protect"
#: what each command (in the page's order, skipped ones left out) must print
CHECKS: list[list[str]] = [
    [r"attach: tcp://127\.0\.0\.1:\d+"],  # 1. up --profile bug1999 (terminal 1)
    [r"machine: running  profile: bug1999", r"frames: total 1024  free \d+"],  # status
    [  # 2. stress until the panic
        PANIC,
        r"corruption 0",
        r"explain: uvm-machine explain \S*bug-report/dump\.json",
        r"replay: uvm-machine replay --from-dump \S*bug-report/dump\.json",
        r"exit status 3",
    ],
    [  # 3. explain
        r"outcome: panic",
        r"revoker: \w+",
        r"1\. uvm loaned page \d+ to net",
        r"revoked that mapping: pmap\.page_protect\(NONE\)",
        r"net's driver took a kernel page fault",
        r"diagram: bug-report/why\.html",
    ],
    [  # 4. replay --from-dump
        r"target panic",
        r"reproduced \([^)]*\) in \d+ runs",  # (recorded), or (search: paced) under load
        r"shrunk \(\d+ re-runs\) to \d+ steps",
        r"shrunk replay: uvm-machine replay --profile bug1999 .*--workload \S*dump\.shrunk\.json",
    ],
    [r"outcome: panic", r"diagram: replay\.html", r"exit status 1"],  # the shrunk run, drawn
    [r"attach: tcp://127\.0\.0\.1:\d+"],  # 5. up --profile modern (terminal 1)
    [r"panic: none", r"failures 0  corruption 0", r"frames back: True", r"exit status 0"],
]
PANICKED = r"machine panicked; crash dump: \S*bug/dump/crash-\S+\.json"
ATTEMPTS = 3  # steps 1-2 again when the panic is not the chain's (the page says so)
BOOT_S, STEP_S = 30.0, 180.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Terminal1:
    """The first terminal: one background command at a time, its output collected."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env
        self.proc: subprocess.Popen[str] | None = None
        self.out = ""

    def start(self, body: str) -> str:
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {body.strip()}"],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # `up` prints `attach:` once ready, then waits
        assert line.startswith("attach:"), f"terminal 1: {line!r}"
        return line

    def finish(self, timeout_s: float) -> tuple[int, str]:
        """=> its exit status and the rest of its output, once it ends by itself."""
        assert self.proc is not None
        rest, _ = self.proc.communicate(timeout=timeout_s)
        return self.proc.returncode, rest

    def interrupt(self) -> int:
        """Ctrl-C, as the page says; => its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
        return self.proc.returncode


def _run(cmd: Command, cwd: Path, env: dict[str, str]) -> str:
    r = subprocess.run(
        ["bash", "-c", cmd.body],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_S,
        check=False,
    )
    return r.stdout + r.stderr


def _check(k: int, cmd: Command, out: str) -> None:
    for pat in CHECKS[k]:
        assert re.search(pat, cmd.says), f"the page does not show {pat!r} for: {cmd.body}"
        assert re.search(pat, out), f"{cmd.body} printed no {pat!r}:\n{out[-3000:]}"


def test_the_page_has_the_commands_the_test_checks() -> None:
    run = [c for c in commands(PAGE) if c.marker != "skip"]
    assert len(run) == len(CHECKS)
    assert [c.marker for c in run].count("terminal 1") == 2
    assert re.search(PANICKED, "".join(c.says for c in run))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(600)
def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    port = _free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, UVM_MACHINE_ENDPOINT=endpoint)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    run = [c for c in commands(PAGE) if c.marker != "skip"]
    for c in run:
        c.body = c.body.replace("tcp://127.0.0.1:7700", endpoint)
    term1 = Terminal1(tmp_path, env)
    t0 = time.monotonic()
    try:
        for attempt in range(ATTEMPTS):  # steps 1 and 2: boot bug1999, stress to the panic
            _check(0, run[0], term1.start(run[0].body))
            _check(1, run[1], _run(run[1], tmp_path, env))
            out = _run(run[2], tmp_path, env)
            status, rest = term1.finish(timeout_s=60)
            if re.search(PANIC, out) or attempt == ATTEMPTS - 1:
                break
            for d in ("bug", "bug-report"):  # a panic of another kind: again, as the page says
                shutil.rmtree(tmp_path / d, ignore_errors=True)
        _check(2, run[2], out)
        assert status == 3, rest
        assert re.search(PANICKED, rest), rest
        for k in (3, 4, 5):  # explain, replay --from-dump, the shrunk run drawn
            _check(k, run[k], _run(run[k], tmp_path, env))
        for html in ("bug-report/why.html", "replay.html"):
            assert "<svg" in (tmp_path / html).read_text(), html
        _check(6, run[6], term1.start(run[6].body))  # modern
        _check(7, run[7], _run(run[7], tmp_path, env))
        assert term1.interrupt() in (0, 130)  # Ctrl-C: a clean stop, not a kill
    finally:
        if term1.proc is not None:
            term1.interrupt()
    print(f"tutorial: {time.monotonic() - t0:.1f} s, {attempt + 1} attempt(s)")
