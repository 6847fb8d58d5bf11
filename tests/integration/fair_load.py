"""Greedy sessions against ordinary ones on a real machine (issue 21's fair-share check).

    python tests/integration/fair_load.py --endpoint tcp://127.0.0.1:PORT [--greedy 4 ...]
    python tests/integration/fair_load.py --boot --limit inflight_total=2048,maxentries=4096

(--boot: a fresh machine, `uvm-machine up --ram 32M --limit ...`, whose frames are
checked when the sessions are gone; PYTHONPATH=<a tree> measures that tree's machine.)

Greedy sessions first fill what they can: each holds `polls` net.recv long polls
(re-issued as each ends; an EAGAIN retried after 10 ms) and maps one-page regions
until refused (retried every 20 ms while the run lasts). Then `ordinary` sessions
each do the pattern users' operations (machine.stress.users_memory) for `ops`
operations: stores and loads checked against a byte model, mincore, an extra
mmap/munmap, a fork whose child exits, and a short net.recv; then a whole-region
verify and exit (a session refused its region does only the short net.recv, `ops`
times, so refusals at net are still counted). Every error an ordinary session sees
is counted by errno, never retried. Prints (or returns) a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import sys
import time
from typing import Any

from machine.client import Machine, RequestError
from machine.params import PAGE_SIZE
from machine.proto import NetListen, NetRecv, NetRecvReply, Reply

_H: Any = None  # the client fills the header


async def _recv(m: Machine, wait_ms: int) -> None:
    req = NetRecv(h=_H, max_packets=1, wait_ms=wait_ms)
    await m.call_role("net", req, NetRecvReply)


async def _greedy(
    endpoint: str, polls: int, ready: asyncio.Event, stop: asyncio.Event, out: dict[str, Any]
) -> None:
    async with Machine.attach(endpoint, timeout_s=60.0) as m:
        await m.call_role("net", NetListen(h=_H), Reply)
        p = await m.spawn()
        entries = 0
        while True:  # map entries until refused
            try:
                await p.mmap(PAGE_SIZE, prot="r")
                entries += 1
            except RequestError as e:
                out["entry_refusals"][e.errno.name] += 1
                break
        held = [0]

        async def poller() -> None:
            while not stop.is_set():
                try:
                    held[0] += 1
                    await _recv(m, 2000)
                except RequestError:
                    out["poll_refusals"] += 1
                    await asyncio.sleep(0.01)
                finally:
                    held[0] -= 1

        tasks = [asyncio.create_task(poller()) for _ in range(polls)]
        await asyncio.sleep(0.5)  # the polls are out
        out["polls_held_at_start"].append(held[0])
        out["entries"].append(entries)
        ready.set()
        while not stop.is_set():  # keep asking for more map entries
            try:
                await p.mmap(PAGE_SIZE, prot="r")
                out["entries_later"] += 1
            except RequestError:
                await asyncio.sleep(0.02)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _ordinary(endpoint: str, seed: int, ops: int, out: dict[str, Any]) -> None:
    rng = random.Random(seed)
    errors: collections.Counter[str] = out["errors"]

    async def op(name: str, coro: Any) -> Any:
        """=> the call's result (True for a call that returns nothing); None if refused."""
        try:
            got = await coro
        except RequestError as e:
            errors[f"{name}:{e.errno.name}"] += 1
            return None
        out["ops"] += 1
        return True if got is None else got

    async with Machine.attach(endpoint, timeout_s=60.0) as m:
        await op("listen", m.call_role("net", NetListen(h=_H), Reply))
        p = await op("spawn", m.spawn())
        if p is None:
            return
        npages = rng.randint(32, 64)
        va = await op("mmap", p.mmap(npages * PAGE_SIZE))
        if va is None:  # no memory to work on: only the net part of the operations
            for _ in range(ops):
                await op("recv", _recv(m, 1))
            return
        model = bytearray(npages * PAGE_SIZE)
        for _ in range(ops):
            r = rng.random()
            if r < 0.05:
                await op("recv", _recv(m, 1))
            elif r < 0.1:
                await op("mincore", p.mincore(va, npages * PAGE_SIZE))
            elif r < 0.15:
                extra = await op("mmap", p.mmap(PAGE_SIZE))
                if extra is not None:
                    await op("munmap", p.munmap(extra, PAGE_SIZE))
            elif r < 0.2:
                child = await op("fork", p.fork())
                if child is not None:
                    await op("exit", child.exit())
            else:
                n = rng.randint(1, 2 * PAGE_SIZE)
                off = rng.randrange(0, len(model) - n + 1)
                if rng.random() < 0.5:
                    data = rng.randbytes(n)
                    if await op("store", p.store(va + off, data)):
                        model[off : off + n] = data
                else:
                    got = await op("load", p.load(va + off, n))
                    if got and got != model[off : off + n]:
                        out["mismatches"] += 1
        got = await op("verify", p.load(va, len(model)))
        if got and got != model:
            out["mismatches"] += 1
        await op("exit", p.exit())


async def run(
    endpoint: str, greedy: int = 4, polls: int = 512, ordinary: int = 15, ops: int = 60
) -> dict[str, Any]:
    g_out: dict[str, Any] = {
        "entries": [],
        "entries_later": 0,
        "entry_refusals": collections.Counter(),
        "polls_held_at_start": [],
        "poll_refusals": 0,
    }
    o_out: dict[str, Any] = {"ops": 0, "errors": collections.Counter(), "mismatches": 0}
    stop = asyncio.Event()
    readies = [asyncio.Event() for _ in range(greedy)]
    gtasks = [asyncio.create_task(_greedy(endpoint, polls, ev, stop, g_out)) for ev in readies]
    for ev in readies:
        await ev.wait()
    t0 = time.monotonic()
    try:
        await asyncio.gather(*(_ordinary(endpoint, s, ops, o_out) for s in range(ordinary)))
    finally:
        seconds = time.monotonic() - t0
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.gather(*gtasks)
    return {
        "ordinary": {**o_out, "errors": dict(o_out["errors"]), "seconds": round(seconds, 2)},
        "greedy": {**g_out, "entry_refusals": dict(g_out["entry_refusals"])},
    }


def _booted(a: argparse.Namespace) -> dict[str, Any]:
    import tempfile
    from pathlib import Path

    from machine.testing import poll_for
    from tests.conftest import boot_real, status_json

    with tempfile.TemporaryDirectory() as d:
        rm = boot_real(Path(d) / "state", "--ram", "32M", "--limit", a.limit)
        try:
            out = asyncio.run(run(rm.endpoint, a.greedy, a.polls, a.ordinary, a.ops))

            def back() -> bool:
                f = status_json(rm.endpoint)["frames"]
                return bool(f["free"] + f["kernel_owned"] == f["total"])

            asyncio.run(poll_for(back, 20, 0.2, "every frame back"))
            out["frames_back"] = True
        finally:
            rm.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fair_load")
    ap.add_argument("--endpoint", default="")
    ap.add_argument("--boot", action="store_true", help="boot a machine of its own")
    ap.add_argument("--limit", default="inflight_total=2048,maxentries=4096")
    ap.add_argument("--greedy", type=int, default=4)
    ap.add_argument("--polls", type=int, default=512)
    ap.add_argument("--ordinary", type=int, default=15)
    ap.add_argument("--ops", type=int, default=100)
    a = ap.parse_args(argv)
    if a.boot:
        out = _booted(a)
    else:
        out = asyncio.run(run(a.endpoint, a.greedy, a.polls, a.ordinary, a.ops))
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
