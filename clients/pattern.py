"""pattern: store a recognisable pattern across many pages, load it back, verify it.

    python -m clients pattern --endpoint tcp://127.0.0.1:7700 --pages 256 --procs 2

Each process maps `pages` pages, writes into every page a pattern derived
from (seed, pid, page number) at an offset that varies per page (so both
page-crossing and in-page accesses happen), reads everything back and
compares. Exit status 0 when every byte matches, 1 on a mismatch, 2 when the
machine reports an error (panic, segv, timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass

from machine.client import Machine, MachineError
from machine.params import PAGE_SIZE


def page_pattern(seed: int, pid: int, page: int, n: int = 64) -> bytes:
    h = hashlib.blake2b(f"{seed}:{pid}:{page}".encode(), digest_size=32).digest()
    return (h * (n // len(h) + 1))[:n]


@dataclass
class Result:
    processes: int
    pages: int
    bytes_checked: int
    mismatches: int
    faults: int
    seconds: float


async def run_process(m: Machine, pages: int, seed: int, chunk: int) -> tuple[int, int, int]:
    p = await m.spawn()
    length = pages * PAGE_SIZE
    va = await p.mmap(length, prot="rw")
    expect = bytearray(length)
    for pg in range(pages):
        pat = page_pattern(seed, p.pid, pg)
        off = pg * PAGE_SIZE + (pg * 97) % (PAGE_SIZE - len(pat))
        expect[off : off + len(pat)] = pat
        await p.store(va + off, pat)
    got = bytearray()
    for off in range(0, length, chunk):
        got += await p.load(va + off, min(chunk, length - off))
    mismatches = sum(1 for a, b in zip(got, expect, strict=True) if a != b) if got != expect else 0
    faults = p.faults
    await p.munmap(va, length)
    await p.exit()
    return len(got), mismatches, faults


async def run(endpoint: str, pages: int, procs: int, seed: int) -> Result:
    t0 = time.perf_counter()
    async with Machine.attach(endpoint) as m:
        results = await asyncio.gather(
            *(run_process(m, pages, seed, 64 * PAGE_SIZE) for _ in range(procs))
        )
    return Result(
        processes=procs,
        pages=pages * procs,
        bytes_checked=sum(r[0] for r in results),
        mismatches=sum(r[1] for r in results),
        faults=sum(r[2] for r in results),
        seconds=round(time.perf_counter() - t0, 3),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m clients pattern",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--endpoint", default="tcp://127.0.0.1:7700")
    ap.add_argument("--pages", type=int, default=256)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    try:
        r = asyncio.run(run(a.endpoint, a.pages, a.procs, a.seed))
    except MachineError as e:
        print(f"pattern: machine error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(asdict(r)))
    else:
        verdict = "ok" if r.mismatches == 0 else f"MISMATCH in {r.mismatches} bytes"
        print(
            f"pattern: {r.processes} process(es), {r.pages} pages, {r.bytes_checked} bytes "
            f"checked, {r.faults} faults, {r.seconds} s: {verdict}"
        )
    return 0 if r.mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
