"""Bounded roles: the incomplete-multipart attack on every user endpoint stays bounded.

A raw ZMTP peer (tests/integration/multipart_attack.py: no session) sends parts
of a message that never ends to one role's user endpoint, reconnecting each
time the role drops it, while a sampler reads the role's memory from /proc
every few milliseconds. With role_memory=L the role's private memory must stay
under its panic line (3L/4) and VmData under the wall (L, its RLIMIT_DATA), the
role must report its resets (`status`: mem_resets), and an honest client must
be served by every role afterwards. A role whose own memory passes the panic
line panics cleanly, with a crash dump. Also: the RLIMIT_DATA set, and a RAM
segment larger than the limit boots (the shared segment is not counted).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from machine.client import Machine, MachinePanic, MachineTimeout
from machine.dumpfile import read_dump
from machine.params import PAGE_SIZE
from machine.proto import NO_HEADER, CtlPing, CtlPingReply
from tests.conftest import RealMachine, boot_real, pid_alive, status_json
from tests.integration.multipart_attack import Attack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LIMIT = 512 << 20
ROLES = ("uvm", "mmu", "pdaemon", "net")


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealMachine]:
    # RAM (640M) above role_memory (512M): the shared segment must not count against it.
    m = boot_real(
        tmp_path_factory.mktemp("memstate"),
        "--ram",
        "640M",
        "--swap",
        "16M",
        "--limit",
        f"role_memory={LIMIT}",
    )
    yield m
    assert m.stop() == 0


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("RssAnon", "VmData", "VmRSS"):
                out[k] = int(v.split()[0]) << 10
    return out


class Sampler(threading.Thread):
    """Peak RssAnon and VmData of a pid, sampled every 2 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak = pid, {"RssAnon": 0, "VmData": 0}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.002):
            try:
                st = _status(self.pid)
            except OSError:
                return
            for k in self.peak:
                self.peak[k] = max(self.peak[k], st[k])

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.join(timeout=5)


def _attack_until_dropped(
    ep: str, times: int, deadline_s: float, part_bytes: int = 1 << 20, batch: int = 1
) -> int:
    """Attack `times` times, each until the role drops the connection. => drops seen."""
    end = time.monotonic() + deadline_s
    drops = 0
    while drops < times and time.monotonic() < end:
        try:
            a = Attack(ep, part_bytes=part_bytes, timeout_s=5.0, batch=batch)
        except OSError:
            continue  # the endpoint is being bound again: connect once more
        while time.monotonic() < end and a.send_parts(16):
            pass
        drops += a.closed_by_peer
        a.close()
    return drops


def test_role_memory_sets_rlimit_data_and_ignores_shared_ram(machine: RealMachine) -> None:
    for role, pid in machine.role_pids().items():
        limits = Path(f"/proc/{pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max data size"))
        assert line.split()[3:5] == [str(LIMIT), str(LIMIT)], (role, line)
        assert _status(pid)["VmData"] < LIMIT // 4, role  # 512M of RAM mapped, not counted


@pytest.mark.parametrize(("role", "part_bytes"), [*((r, 1 << 20) for r in ROLES), ("pdaemon", 0)])
async def test_multipart_attack_is_bounded_and_reported(
    machine: RealMachine, role: str, part_bytes: int
) -> None:
    """Parts of 1 MiB at every role; empty parts (64 bytes each to the role) at one."""
    pid = machine.role_pids()[role]
    ep = machine.info["roles"][role]["user"]
    before = status_json(machine.endpoint)["roles"][role]["counters"]["mem_resets"]
    batch = 1 if part_bytes else 1 << 15
    with Sampler(pid) as s:
        drops = _attack_until_dropped(ep, 3, 30.0, part_bytes, batch)
    print(
        f"{role}: peak RssAnon {s.peak['RssAnon'] >> 20} MiB, VmData {s.peak['VmData'] >> 20} MiB"
    )
    assert drops == 3, f"{role} never dropped the attacking connection"
    assert pid_alive(pid)
    assert s.peak["RssAnon"] < LIMIT * 3 // 4, (role, s.peak)
    assert s.peak["VmData"] < LIMIT, (role, s.peak)
    st = status_json(machine.endpoint)
    assert st["state"] == "running", st
    c = st["roles"][role]["counters"]
    assert c["mem_resets"] >= before + 3, c
    assert c["mem_peak_kb"] << 10 >= LIMIT // 2, c  # it saw the attack's memory
    # The parts are gone: the role is back near where it started (trimmed).
    assert _status(pid)["RssAnon"] < LIMIT // 2
    # An honest client is served by every role afterwards.
    async with Machine.attach(machine.endpoint, timeout_s=10.0, keepalive=False) as m:
        p = await m.spawn()
        va = await p.mmap(PAGE_SIZE)
        await p.store(va, b"still here")
        assert await p.load(va, 10) == b"still here"
        so = await p.socket()
        await so.close()
        for r in ROLES:
            assert isinstance(await m.call_role(r, CtlPing(h=NO_HEADER)), CtlPingReply)


async def test_the_attach_endpoint_is_reset_too(machine: RealMachine) -> None:
    """The supervisor's ROUTER: bounded the same way (resets only), attach works after."""
    pid = machine.info["supervisor_pid"]
    with Sampler(pid) as s:
        drops = _attack_until_dropped(machine.endpoint, 2, 30.0)
    assert drops == 2
    assert s.peak["RssAnon"] < LIMIT * 3 // 4, s.peak
    async with Machine.attach(machine.endpoint, timeout_s=10.0, keepalive=False) as m:
        await m.spawn()
    assert status_json(machine.endpoint)["state"] == "running"


async def test_a_roles_own_memory_past_the_panic_line_is_a_clean_panic_with_a_dump(
    tmp_path: Path,
) -> None:
    """The mmu's flight recorder (record_bytes raised past the bound) keeps every 1 MiB
    store: resets free nothing, so the watchdog panics; the machine dumps and stops by
    itself (exit 3), and the client gets MachinePanic (or, when the reset just before the
    panic cut its store and the machine stopped within that store's timeout, timeouts),
    never a hang."""
    limit = 128 << 20  # soft 64 MiB, panic 96 MiB
    rm = boot_real(
        tmp_path / "state", "--ram", "16M", "--limit", f"role_memory={limit},record_bytes=512M"
    )
    try:
        got, tally = await _store_until_panic(
            rm.endpoint, deadline_s=60.0, stopped=lambda: rm.proc.poll() is not None
        )
        if got is None and rm.proc.poll() is None:  # say how far the stores got, and why
            try:
                mmu = status_json(rm.endpoint)["roles"]["mmu"]["counters"]
                seen = {k: v for k, v in mmu.items() if k.startswith("mem_")}
            except Exception as e:  # a diagnostic only
                seen = {"status": repr(e)}
            raise AssertionError(f"no panic within 60 s: {tally}; mmu {seen}")
        # The client hears of the panic (MachinePanic), unless the reset just before it
        # cut the store in flight and the machine was gone before its timeout ended.
        if got is not None:
            assert isinstance(got, MachinePanic), got
            assert "memory" in str(got), got
        rm.proc.wait(timeout=60)  # the machine stops by itself after a panic
    finally:
        status = rm.stop()
    assert status == 3  # a panic
    (path,) = (rm.state / "dump").glob("crash-*.json")
    dump = read_dump(path)
    assert dump["panic"]["role"] == "mmu"
    assert "the role's own" in dump["panic"]["message"]
    assert any("user endpoint reset" in line for line in dump["panic"]["trace"])


async def _store_until_panic(
    endpoint: str, deadline_s: float, stopped: Callable[[], bool]
) -> tuple[Exception | None, dict[str, int]]:
    """Store 1 MiB again and again, until a panic, the machine's exit or the deadline.
    => the panic (None: no panic heard), and how many stores were answered and how many
    timed out."""
    tally = {"stored": 0, "timeouts": 0}
    async with Machine.attach(endpoint, timeout_s=3.0, keepalive=False) as m:
        p = await m.spawn()
        va = await p.mmap(1 << 20)
        end = time.monotonic() + deadline_s
        while time.monotonic() < end and not stopped():
            try:
                await p.store(va, b"m" * (1 << 20))
                tally["stored"] += 1
            except MachineTimeout:
                tally["timeouts"] += 1  # a store cut by a reset of its connection
            except MachinePanic as e:
                return e, tally
    return None, tally
