"""hog: store more random data than the machine has RAM, across anonymous and shared file
mappings, then load it all back and check every byte, and check the file on disk.

    python -m clients hog --endpoint tcp://127.0.0.1:7700 --mib 64 --state DIR

Half of the data goes to anonymous private memory (paged out to swap under
pressure), half to a shared mapping of a file in the machine's disk/ (paged
out to the file). After msync, the host file <state>/disk/NAME must hold what
was stored, byte for byte (checked when --state is given). Progress (the page
daemon's counters) is printed while it runs. Exit 0 when all holds, 1 on a
mismatch, 2 on a machine error.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

from machine.client import Machine, MachineError
from machine.params import PAGE_SIZE

CHUNK = 16 * PAGE_SIZE


async def run(endpoint: str, mib: int, state: str, seed: int) -> int:
    n = mib << 20
    half = n // 2 // CHUNK * CHUNK
    rng = random.Random(seed)
    anon_data = rng.randbytes(half)
    file_data = rng.randbytes(half)
    async with Machine.attach(endpoint) as m:
        name = f"hog-{seed}-{m.session:x}.bin"
        f = await m.open(name, create=True, size=half)
        p = await m.spawn()
        anon = await p.mmap(half)
        fmap = await p.mmap(half, file=f, shared=True)
        t0 = time.perf_counter()
        for off in range(0, half, CHUNK):
            await p.store(anon + off, anon_data[off : off + CHUNK])
            await p.store(fmap + off, file_data[off : off + CHUNK])
            if off % (4 << 20) == 0:
                pd = (await m.stats())["roles"]["pdaemon"]["counters"]
                print(
                    f"hog: {2 * off >> 20} MiB stored; pdscans {pd['pdscans']} "
                    f"pdpageouts {pd['pdpageouts']} pdfreed {pd['pdfreed']}",
                    flush=True,
                )
        await p.msync(fmap, half)
        bad = 0
        for off in range(0, half, CHUNK):
            bad += await p.load(anon + off, CHUNK) != anon_data[off : off + CHUNK]
            bad += await p.load(fmap + off, CHUNK) != file_data[off : off + CHUNK]
        if state:
            bad += (Path(state) / "disk" / name).read_bytes() != file_data
        st = await m.stats()
        await p.exit()
        await f.close()
        pd = st["roles"]["pdaemon"]["counters"]
        print(
            f"hog: {2 * half >> 20} MiB in {time.perf_counter() - t0:.1f} s; "
            f"pdpageouts {pd['pdpageouts']} fltanget {st['roles']['uvm']['counters']['fltanget']}"
            f": {'ok' if not bad else f'{bad} MISMATCHING CHUNKS'}"
        )
        return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m clients hog",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--endpoint", default="tcp://127.0.0.1:7700")
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--state", default="", help="the machine's state dir, to check the file")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    try:
        bad = asyncio.run(run(a.endpoint, a.mib, a.state, a.seed))
    except MachineError as e:
        print(f"hog: machine error: {e}", file=sys.stderr)
        return 2
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
