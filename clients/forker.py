"""forker: a tree of forked processes that checks copy-on-write and shared memory.

    python -m clients forker --endpoint tcp://127.0.0.1:7700 --depth 3 --pages 32

The root maps private anonymous memory, a shared anonymous region and a
shared file, and writes a pattern to each. Every process then forks `width`
children down to `depth`; each child overwrites its private copy with its
own pattern and appends its id to its slot of the shared region. At the end
every process checks that its private memory holds exactly its own pattern
(no write of a parent, sibling or child leaked through COW) and the root
checks that every process's mark is in the shared region and, after msync,
in the host file. Exit status 0 when all holds, 1 on a mismatch, 2 on a
machine error.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time

from machine.client import Machine, MachineError, Process
from machine.params import PAGE_SIZE


def pattern(ident: str, n: int) -> bytes:
    h = hashlib.blake2b(ident.encode(), digest_size=32).digest()
    return (h * (n // 32 + 1))[:n]


async def run(endpoint: str, depth: int, width: int, pages: int) -> tuple[int, int, float]:
    t0 = time.perf_counter()
    async with Machine.attach(endpoint) as m:
        root = await m.spawn()
        n = pages * PAGE_SIZE
        priv = await root.mmap(n)
        nslots = sum(width**d for d in range(depth + 1))
        shared = await root.mmap(nslots * 16, shared=True)
        f = await m.open(f"forker-{m.session:x}.bin", create=True, size=nslots * 16)
        fmap = await root.mmap(nslots * 16, file=f, shared=True)
        await root.store(priv, pattern("root", n))
        procs: list[tuple[str, Process]] = [("root", root)]
        frontier = [("root", root)]
        for _ in range(depth):
            nxt = []
            for name, p in frontier:
                for k in range(width):
                    child = await p.fork()
                    cname = f"{name}.{k}"
                    nxt.append((cname, child))
            # children write only after all forks at this level: their parents still
            # hold the old bytes, which must not change
            for cname, child in nxt:
                await child.store(priv, pattern(cname, n))
            procs += nxt
            frontier = nxt
        for slot, (name, p) in enumerate(procs):
            mark = name.encode()[:16].ljust(16, b".")
            await p.store(shared + slot * 16, mark)
            await p.store(fmap + slot * 16, mark)
        bad = 0
        for name, p in procs:
            if await p.load(priv, n) != pattern(name, n):
                bad += 1
                print(f"forker: {name}: private memory changed", file=sys.stderr)
        marks = await root.load(shared, len(procs) * 16)
        fmarks = await root.load(fmap, len(procs) * 16)
        for slot, (name, _) in enumerate(procs):
            want = name.encode()[:16].ljust(16, b".")
            if marks[slot * 16 : slot * 16 + 16] != want or fmarks[slot * 16 :][:16] != want:
                bad += 1
                print(f"forker: {name}: mark missing from shared memory", file=sys.stderr)
        await root.msync(fmap, nslots * 16)
        for _, p in procs[1:]:
            await p.exit()
        await root.exit()
        await f.close()
        return len(procs), bad, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m clients forker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--endpoint", default="tcp://127.0.0.1:7700")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--width", type=int, default=2)
    ap.add_argument("--pages", type=int, default=16)
    a = ap.parse_args(argv)
    try:
        nprocs, bad, secs = asyncio.run(run(a.endpoint, a.depth, a.width, a.pages))
    except MachineError as e:
        print(f"forker: machine error: {e}", file=sys.stderr)
        return 2
    verdict = "ok" if bad == 0 else f"{bad} MISMATCHES"
    print(f"forker: {nprocs} processes, {a.pages} private pages each, {secs:.2f} s: {verdict}")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
