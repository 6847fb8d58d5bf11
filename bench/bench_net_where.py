#!/usr/bin/env python3
"""Where a 4 MiB send's wall time goes: the send call, then each net.recv reply.

    .venv/bin/python bench/bench_net_where.py [--size KIB] [--sends N]

Per mode (`modern`, loaned; `modern` with LOAN_THRESHOLD -1, copied), one fresh machine
(`uvm-machine up --ram 256M`): after a warm-up, N sends of SIZE, each alone (the wire
empty before it), timed from the client: when `write(2)` returns (sosend: the loans or
copies set up, every mbuf queued), when each net.recv reply of the session's wire feed
arrives (its packets and bytes; the feed keeps one poll in flight, replies of at most
1 MiB), and when the whole send has been reassembled. Markdown on stdout. For the CPU
each role spends per send, profile a steady stream (bench/HISTORY.md: py-spy).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_net import one_size, sender  # bench/ is on sys.path when run as a script
from bench_uvm import booted

from machine.client import Machine
from machine.profile import load_profile, with_overrides


async def timeline(mach: dict[str, Any], size: int, sends: int) -> list[dict[str, Any]]:
    async with Machine.attach(mach["endpoint"]) as m, m.wire() as wire:
        p, s, va, buf = await sender(m)
        await one_size(m, wire, p, s, va, buf, size, 8)  # warm-up
        feed = m.session_feed()
        replies: list[tuple[float, int, int]] = []
        recv = feed._recv

        async def timed(max_packets: int, wait_ms: int) -> Any:
            rep = await recv(max_packets, wait_ms)
            if rep.packets:
                nbytes = sum(len(x.payload) for x in rep.packets)
                replies.append((time.perf_counter(), len(rep.packets), nbytes))
            return rep

        feed._recv = timed  # type: ignore[method-assign]
        out = []
        for _ in range(sends):
            replies.clear()
            t0 = time.perf_counter()
            await p.send(s, va, size)
            t1 = time.perf_counter()
            pkt = await wire.get(60)
            t2 = time.perf_counter()
            assert pkt.payload == buf[:size]
            ms = [(t - t0) * 1e3 for t, _, _ in replies]
            gaps = [round(b - a, 2) for a, b in itertools.pairwise(ms)]
            out.append(
                {
                    "send_ms": (t1 - t0) * 1e3,
                    "whole_ms": (t2 - t0) * 1e3,
                    "first_reply_ms": ms[0],
                    "replies": len(ms),
                    "per_reply_ms": gaps,
                }
            )
        await p.exit()
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="KiB (default 4096)")
    ap.add_argument("--sends", type=int, default=5)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="uvm-bench-where-"))
    copy = with_overrides(load_profile("modern"), {"LOAN_THRESHOLD": -1}, tmp, "modern-copy")
    print("| mode | send returns | first reply | each later reply | whole send |")
    print("|---|---|---|---|---|")
    for mode, prof in (("loan", "modern"), ("copy", str(copy))):
        with booted("256M", "--profile", prof) as mach:
            rows = asyncio.run(timeline(mach, args_size(a.size), a.sends))
        med = {
            k: statistics.median(r[k] for r in rows)
            for k in ("send_ms", "first_reply_ms", "whole_ms")
        }
        later = [x for r in rows for x in r["per_reply_ms"]]
        gap = statistics.median(later) if later else 0.0
        print(
            f"| {mode} | {med['send_ms']:.1f} ms | {med['first_reply_ms']:.1f} ms | "
            f"{gap:.1f} ms (of {len(later)}) | {med['whole_ms']:.1f} ms |"
        )
    return 0


def args_size(kib: int) -> int:
    return kib << 10


if __name__ == "__main__":
    sys.exit(main())
