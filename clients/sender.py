"""sender: zero-copy sends under concurrency, every payload checked on the wire.

    python -m clients sender --endpoint tcp://127.0.0.1:7700 --sends 200 --seed 3

One process maps a buffer (anonymous, or a shared file with --file), fills it
with a pattern and sends random ranges of it (1 byte .. 256 KiB: below the
loan threshold they are copied, above it loaned in 64 KiB chunks). Right
after a send returns it does what a careless program would: overwrites the
range (a loan break), forks a child that writes and exits, or unmaps and
remaps the buffer. The session's wire (m.wire(): its own packets only)
receives them and checks each against what memory held when its send returned
(machine.wirecheck). Exit status 0 when every payload matched and arrived,
1 on corruption, 2 when the machine reports an error (panic, timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import asdict, dataclass

from machine.client import Machine, MachineError, MachineTimeout, Wire
from machine.params import PAGE_SIZE
from machine.wirecheck import WireCheck, WireCorruption

MAX_SEND = 256 << 10


@dataclass
class Result:
    sends: int
    bytes_sent: int
    loaned_pages: int
    copied_bytes: int
    checked: int
    corruption: str
    seconds: float


def fill(rng: random.Random, n: int) -> bytearray:
    seed = rng.getrandbits(32).to_bytes(4, "little")
    return bytearray((seed * (n // 4 + 1))[:n])


async def _receive(m: Machine, wire: Wire, check: WireCheck, done: asyncio.Event) -> None:
    """Check this session's packets until every send is accounted for (120 s of silence
    with sends outstanding is a failure)."""
    quiet = 0.0
    while not (done.is_set() and not check.expected):
        try:
            pkt = await wire.get(0.5)
        except MachineTimeout:
            quiet += 0.5
            if quiet > 120 and check.expected:
                raise
            continue
        quiet = 0.0
        if pkt.session == m.session:
            check.check(pkt)


async def run(endpoint: str, sends: int, seed: int, pages: int, file: str) -> Result:
    rng = random.Random(seed)
    t0 = time.perf_counter()
    check = WireCheck()
    res = Result(0, 0, 0, 0, 0, "", 0.0)
    async with Machine.attach(endpoint) as m, m.wire() as wire:
        done = asyncio.Event()
        rx = asyncio.ensure_future(_receive(m, wire, check, done))
        p = await m.spawn()
        n = pages * PAGE_SIZE
        f = await m.open(file, create=True, size=n) if file else None
        va = await p.mmap(n, "rw", file=f, shared=f is not None)
        mem = fill(rng, n)
        await p.store(va, bytes(mem))
        s = await p.socket(sndbuf=4 << 20)
        try:
            for _ in range(sends):
                size = min(n, rng.choice([rng.randint(1, 4096), rng.randint(4096, MAX_SEND)]))
                off = rng.randint(0, n - size)
                r = await p.send(s, va + off, size)
                check.expect(r, bytes(mem[off : off + size]))
                res.sends += 1
                res.bytes_sent += size
                res.loaned_pages += r.loaned_pages
                res.copied_bytes += r.copied_bytes
                what = rng.random()
                if what < 0.4:  # overwrite what was just sent (a loan break)
                    new = fill(rng, size)
                    await p.store(va + off, bytes(new))
                    mem[off : off + size] = new
                elif what < 0.5:  # a child that writes and exits
                    c = await p.fork()
                    k = min(size, 4096)
                    await c.store(va + off, b"\x5a" * k)
                    await c.exit()
                    if f is not None:  # a shared mapping: the parent sees the child's bytes
                        mem[off : off + k] = b"\x5a" * k
                elif what < 0.55 and f is None:  # unmap the buffer, map a fresh one
                    await p.munmap(va, n)
                    va = await p.mmap(n, "rw")
                    mem = fill(rng, n)
                    await p.store(va, bytes(mem))
                if rx.done():
                    break
            done.set()
            await asyncio.wait_for(rx, 120)
        except WireCorruption as e:
            res.corruption = e.detail
        finally:
            rx.cancel()
        res.checked = check.checked
        await p.exit()
        if f is not None:
            await f.close()
    res.seconds = round(time.perf_counter() - t0, 3)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m clients sender",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--endpoint", default="tcp://127.0.0.1:7700")
    ap.add_argument("--sends", type=int, default=100)
    ap.add_argument("--pages", type=int, default=128, help="buffer size in pages")
    ap.add_argument("--file", default="", help="send from a shared mapping of this file")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    try:
        r = asyncio.run(run(a.endpoint, a.sends, a.seed, a.pages, a.file))
    except (MachineError, TimeoutError) as e:
        print(f"sender: machine error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(asdict(r)))
    else:
        verdict = "ok" if not r.corruption and r.checked == r.sends else "CORRUPTION"
        print(
            f"sender: {r.sends} sends, {r.bytes_sent} bytes ({r.loaned_pages} pages loaned, "
            f"{r.copied_bytes} bytes copied), {r.checked} checked on the wire, "
            f"{r.seconds} s: {verdict} {r.corruption}"
        )
    return 0 if not r.corruption and r.checked == r.sends else 1


if __name__ == "__main__":
    sys.exit(main())
