"""The asyncio bridge (machine/stress/bridge.py) and the green client under overlapping greenlets.

A script run in a subprocess (gevent never enters this process) monkey-patches as a
Locust process does, boots nothing (the machine is this test's), and drives 8 greenlets
at once, each with its own session, process and page: rounds of store + load checked
byte for byte, through AsyncBridge and then through GreenMachine. It prints one JSON
line: per client the operations, how many were verified and how many failed, and the
most calls in flight at once (overlap proven, not assumed). The bridge also shows that
an error (Segv) reaches the greenlet, and that killing a waiting greenlet cancels its
Task in the loop thread.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import boot_real

pytestmark = pytest.mark.integration

USERS, ROUNDS = 8, 40

SCRIPT = r"""
from gevent import monkey

monkey.patch_all()

import asyncio, json, sys, time
import gevent
from machine.client import Segv
from machine.params import PAGE_SIZE

ep, users, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = {}


def drive(name, attach, call):
    # users greenlets at once; call(fn) makes one machine call, counted in flight
    t = {"ops": 0, "verified": 0, "failed": 0, "errors": [], "max_inflight": 0}
    inflight = [0]

    def counted(fn):
        inflight[0] += 1
        t["max_inflight"] = max(t["max_inflight"], inflight[0])
        try:
            return fn()
        finally:
            inflight[0] -= 1

    def user(i):
        try:
            with attach() as m:
                p = call(m, "spawn")
                va = call(p, "mmap", PAGE_SIZE)
                for n in range(rounds):
                    off = (n * 64) % PAGE_SIZE
                    data = bytes((i * 31 + n + k) % 256 for k in range(64))
                    t["ops"] += 2
                    try:
                        counted(lambda: call(p, "store", va + off, data))
                        got = counted(lambda: call(p, "load", va + off, 64))
                    except Exception as e:
                        t["failed"] += 1
                        t["errors"].append(repr(e))
                        continue
                    if got == data:
                        t["verified"] += 2
                    else:
                        t["failed"] += 1
                        t["errors"].append(f"user {i} round {n}: {got.hex()} != {data.hex()}")
                call(p, "exit")
        except Exception as e:
            t["failed"] += 1
            t["errors"].append(f"user {i}: {e!r}")

    gevent.joinall([gevent.spawn(user, i) for i in range(users)], raise_error=True)
    out[name] = t


from machine.stress.bridge import AsyncBridge

bridge = AsyncBridge()
drive("bridge", lambda: bridge.attach(ep),
      lambda obj, meth, *a: bridge.run(getattr(obj, meth)(*a)))

# an error comes back to the greenlet as the async client raised it
with bridge.attach(ep) as m:
    p = bridge.run(m.spawn())
    try:
        bridge.run(p.load(0x1000, 1))
        out["segv"] = False
    except Segv:
        out["segv"] = True

# a greenlet killed while waiting cancels its Task (killed once the Task runs)
started, cancelled = [], []

async def long_call():
    started.append(True)
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        cancelled.append(True)
        raise

g = gevent.spawn(bridge.run, long_call())
deadline = time.monotonic() + 5
while not started and time.monotonic() < deadline:
    gevent.sleep(0.01)
g.kill()
deadline = time.monotonic() + 5
while not cancelled and time.monotonic() < deadline:
    gevent.sleep(0.01)
out["kill_cancels"] = bool(cancelled)
t0 = time.monotonic()
bridge.close()
out["close_s"] = time.monotonic() - t0

from machine.stress.green import GreenMachine

drive("green", lambda: GreenMachine.attach(ep),
      lambda obj, meth, *a: getattr(obj, meth)(*a))

print(json.dumps(out))
"""


@pytest.mark.timeout(90)
def test_overlapping_greenlets_verify_every_byte(tmp_path: Path) -> None:
    m = boot_real(tmp_path / "state", "--ram", "4M")
    try:
        r = subprocess.run(
            [sys.executable, "-c", SCRIPT, m.endpoint, str(USERS), str(ROUNDS)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        for name in ("bridge", "green"):
            t = out[name]
            assert t["errors"] == [], (name, t["errors"][:3])
            assert t["failed"] == 0, (name, t)
            assert t["ops"] == USERS * ROUNDS * 2, (name, t)
            assert t["verified"] == t["ops"], (name, t)
            assert t["max_inflight"] >= 2, (name, "the greenlets' calls never overlapped")
        assert out["segv"] is True
        assert out["kill_cancels"] is True
        assert out["close_s"] < 5.0
    finally:
        assert m.stop() == 0
