#!/usr/bin/env python3
"""Zero-copy transmit: loan versus copy, over real processes, measured in the same run.

    .venv/bin/python bench/bench_net.py [--quick] [--rounds N] [--json PATH]

Per round, two fresh machines (`uvm-machine up --ram 256M`, link unthrottled):
`modern` (LOAN_THRESHOLD 4096: sends of 4 KiB and more are loaned) and the
same profile with LOAN_THRESHOLD -1 (every send copied); the order alternates
between rounds. On each, one process fills a 4 MiB buffer and, for every size
from 4 KiB to 4 MiB, sends it k times back to back (write(2) in a loop; k =
16 MiB / size, at least 8, at most 256) on one socket, while a wire
subscriber in the same client receives every packet (the sender stays at most
8 MiB ahead of it, so the wire's queue of 16 MiB never drops). Throughput = bytes /
(first send -> last packet received), so the driver's DMA read, the wire and
(for loans) the deferred kremove/unloan all count. Every payload is compared
with the buffer.

Kernel messages per send: what the send path used (net.send's reply: one
uvm.loan_chunks per window of up to 64 chunks of 64 KiB, a whole-send loan whose
kernel mappings uvm enters itself; on the copy path a pmap.uhold and a
pmap.urelease per run of copied chunks, plus any uvm.kfault), uvm's
pmap.page_protect(READ) per loan and pmap.kenter_chunks per window (the mmu's
counters), and the driver's messages (net's `driver_msgs`: with the kernel page
table in shared memory no translation message, only a pmap.kextract for a kernel
fault's evidence; one pmap.kremove and one uvm.unloan per sopendfree pass). Page
bytes never travel in a kernel message, loaned or copied.

Markdown on stdout, progress on stderr, JSON in bench/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_uvm import booted, log, table  # bench/ is on sys.path when run as a script

from machine.client import Machine, Process, Socket
from machine.ipc.peer import Identity, Peer
from machine.ipc.zmqtransport import ZmqTransport
from machine.profile import load_profile, with_overrides
from machine.proto import NO_HEADER, CtlAck, CtlStats, CtlStatsReply, NetLink

BENCH_DIR = Path(__file__).resolve().parent
SIZES = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20]
BUF = 4 << 20
TOTAL = 16 << 20
AHEAD = 8 << 20  # bytes sent and not yet received, at most (half of limits.wire_bytes)
MODES = ["loan", "copy", "loan-1M"]  # loan-1M: SOCK_LOAN_CHUNK raised to 1 MiB (experiment)


async def role_counters(m: Machine, role: str) -> dict[str, int]:
    rep: CtlStatsReply = await m.call_role(role, CtlStats(h=NO_HEADER), CtlStatsReply)
    return dict(rep.counters)


async def one_size(m: Machine, wire: Any, p: Any, s: Any, va: int, buf: bytes, size: int,
                   k: int) -> dict[str, Any]:  # fmt: skip
    c0, p0 = await role_counters(m, "net"), await role_counters(m, "mmu")
    msgs = 0
    loaned = copied = 0
    got = 0

    async def receive() -> None:
        nonlocal got
        pkt = await wire.get(120)
        if pkt.payload != buf[:size]:
            raise AssertionError(f"size {size}: a payload differs from the buffer")
        got += 1

    t0 = time.perf_counter()
    for i in range(k):
        while (i - got) * size >= AHEAD:  # the wire's queue never overflows (wire_bytes)
            await receive()
        r = await p.send(s, va, size)
        msgs += r.messages
        loaned += r.loaned_pages
        copied += r.copied_bytes
    t_sent = time.perf_counter()
    while got < k:
        await receive()
    t1 = time.perf_counter()
    c1, p1 = await role_counters(m, "net"), await role_counters(m, "mmu")
    driver = c1["driver_msgs"] - c0["driver_msgs"]  # kextract, kremove, unloan batches
    driver += p1["page_protects"] - p0["page_protects"]  # uvm's write-protect, per loan
    driver += p1.get("kenter_msgs", 0) - p0.get("kenter_msgs", 0)  # uvm's kenter, per window
    return {
        "size": size,
        "sends": k,
        "mb_s": k * size / (t1 - t0) / 1e6,
        "send_mb_s": k * size / (t_sent - t0) / 1e6,
        "msgs_per_send": (msgs + driver) / k,
        "send_path_msgs": msgs / k,
        "loaned_pages": loaned,
        "copied_bytes": copied,
    }


async def set_chunk(mach: dict[str, Any], chunk: int) -> None:
    """SOCK_LOAN_CHUNK through net's kernel endpoint (net.link), for the experiment."""
    t = ZmqTransport()
    peer = await Peer(Identity("bench", 3), mach["roles"]["net"]["kernel"]).open(t)
    try:
        await peer.call_ok(NetLink(h=NO_HEADER, loan_chunk=chunk), CtlAck)
    finally:
        await peer.close()
        await t.close()


async def sender(m: Machine) -> tuple[Process, Socket, int, bytes]:
    """A process with BUF bytes of a known pattern stored at va and a socket whose send
    buffer holds a whole send. => (process, socket, va, the bytes)."""
    p = await m.spawn()
    va = await p.mmap(BUF, "rw")
    buf = bytes((i * 131 + (i >> 12)) & 0xFF for i in range(BUF))
    await p.store(va, buf)
    return p, await p.socket(sndbuf=16 << 20), va, buf


async def run_mode(mach: dict[str, Any], sizes: Sequence[int], chunk: int) -> list[dict[str, Any]]:
    if chunk:
        await set_chunk(mach, chunk)
    async with Machine.attach(mach["endpoint"]) as m, m.wire() as wire:
        p, s, va, buf = await sender(m)
        await one_size(m, wire, p, s, va, buf, 64 << 10, 8)  # warm-up
        out = []
        for size in sizes:
            k = max(8, min(256, TOTAL // size))
            out.append(await one_size(m, wire, p, s, va, buf, size, k))
            log(f"     {size >> 10:>5} KiB x {k}: {out[-1]['mb_s']:.1f} MB/s")
        await p.exit()
        return out


def measure(rounds: int, sizes: Sequence[int]) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="uvm-bench-net-"))
    copy = with_overrides(load_profile("modern"), {"LOAN_THRESHOLD": -1}, tmp, "modern-copy")
    profiles = {"loan": "modern", "copy": copy, "loan-1M": "modern"}
    chunks = {"loan": 0, "copy": 0, "loan-1M": 1 << 20}
    raw: dict[str, list[list[dict[str, Any]]]] = {mode: [] for mode in MODES}
    for rnd in range(rounds):
        order = MODES if rnd % 2 == 0 else MODES[::-1]
        for mode in order:
            log(f"round {rnd + 1}/{rounds}: {mode}")
            with booted("256M", "--profile", profiles[mode]) as mach:
                raw[mode].append(asyncio.run(run_mode(mach, sizes, chunks[mode])))
    med: dict[str, Any] = {}
    for mode, runs in raw.items():
        med[mode] = []
        for i, size in enumerate(sizes):
            rows = [r[i] for r in runs]
            med[mode].append(
                {
                    "size": size,
                    "mb_s": statistics.median(r["mb_s"] for r in rows),
                    "mb_s_all": [round(r["mb_s"], 1) for r in rows],
                    "send_mb_s": statistics.median(r["send_mb_s"] for r in rows),
                    "msgs_per_send": rows[0]["msgs_per_send"],
                    "send_path_msgs": rows[0]["send_path_msgs"],
                    "loaned_pages": rows[0]["loaned_pages"] // rows[0]["sends"],
                    "copied_bytes": rows[0]["copied_bytes"] // rows[0]["sends"],
                }
            )
    return {"raw": raw, "median": med, "rounds": rounds}


def kib(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def report(res: dict[str, Any]) -> str:
    rows = []
    cross = None
    cross1m = None
    med = res["median"]
    for lo, co, big in zip(med["loan"], med["copy"], med["loan-1M"], strict=True):
        ratio = lo["mb_s"] / co["mb_s"]
        ratio1m = big["mb_s"] / co["mb_s"]
        if cross is None and ratio > 1:
            cross = lo["size"]
        if cross1m is None and ratio1m > 1:
            cross1m = lo["size"]
        rows.append(
            [
                kib(lo["size"]),
                f"{lo['mb_s']:.1f}",
                f"{co['mb_s']:.1f}",
                f"**{ratio:.2f}x**",
                f"{lo['msgs_per_send']:.1f} ({lo['loaned_pages']} pages)",
                f"{co['msgs_per_send']:.1f} ({co['copied_bytes'] >> 10} KiB)",
                f"{big['mb_s']:.1f} ({ratio1m:.2f}x, {big['msgs_per_send']:.1f} msgs)",
            ]
        )
    head = (
        "send size|loan MB/s|copy MB/s|loan / copy|kernel msgs per send, loan|… copy|"
        "loan with 1 MiB chunks (experiment)"
    )
    out = [
        f"Loan vs copy, real processes, medians of {res['rounds']} rounds per mode "
        "(`modern` vs `modern` with LOAN_THRESHOLD -1), link unthrottled:",
        "",
        table(head, rows),
        "",
        f"Crossover (first size where loaning wins): {kib(cross) if cross else 'none'}; "
        f"with 1 MiB loan chunks: {kib(cross1m) if cross1m else 'none'}.",
    ]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one round, three sizes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--sizes", help="comma-separated KiB, e.g. 64,256,1024,4096")
    a = ap.parse_args(argv)
    sizes = [4 << 10, 256 << 10, 4 << 20] if a.quick else SIZES
    if a.sizes:
        sizes = [int(x) << 10 for x in a.sizes.split(",")]
    res = measure(1 if a.quick else a.rounds, sizes)
    print(report(res))
    path = a.json or BENCH_DIR / "results" / f"bench_net-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    log(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
