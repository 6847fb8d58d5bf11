"""Compare page-daemon policies under the same load: the clock (profile `modern`) and the
FIFO of fifo.py (profile fifo.toml), or any profiles you name.

    python examples/policies/compare.py                     # modern vs fifo.toml
    python examples/policies/compare.py modern my.toml ...  # any profiles, by name or file

Each profile boots the in-process machine (every role's own code on the in-memory bus, in
virtual time: the same seed gives the same run) with 4 MiB of RAM and 16 MiB of swap, and
one process runs the load: it writes a cold stream of COLD pages (twice the RAM) in
slices, and reads its hot set of HOT pages again after every slice. A policy that keeps
the hot set resident pages the cold stream out and little else; one that does not faults
the hot set back in from swap. Every byte read back is checked. Prints one row per profile.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the policy module, for "python:fifo:Fifo"

from machine.ipc.inmemory import run_simulation  # noqa: E402
from machine.params import PAGE_SIZE  # noqa: E402
from machine.testing import SimMachine  # noqa: E402

RAM = 4 << 20  # 1024 frames
HOT, COLD, SLICE, ROUNDS = 256, 2048, 128, 2
SWAP = 16 << 20
COUNTERS = ("faults", "pgswapin", "pgswapout")


async def load(profile: str) -> dict[str, Any]:
    boot = SimMachine.boot(seed=1, ram_bytes=RAM, swap_bytes=SWAP, profile=profile)
    async with boot as sim, sim.attach() as m:
        p = await m.spawn()
        hot = await p.mmap(HOT * PAGE_SIZE, "rw")
        cold = await p.mmap(COLD * PAGE_SIZE, "rw")
        for i in range(HOT):
            await p.store(hot + i * PAGE_SIZE, i.to_bytes(4, "little"))
        hot_faults = 0
        for r in range(ROUNDS):
            for s in range(0, COLD, SLICE):
                for i in range(s, s + SLICE):
                    await p.store(cold + i * PAGE_SIZE, (r * COLD + i).to_bytes(4, "little"))
                before = p.faults
                for i in range(HOT):  # the hot set, read after every slice
                    got = await p.load(hot + i * PAGE_SIZE, 4)
                    assert got == i.to_bytes(4, "little"), f"hot page {i}: {got!r}"
                hot_faults += p.faults - before
        uvm = sim.service("uvm").counters()
        pd = sim.service("pdaemon").counters()
        await p.exit()
        return {
            "profile": profile,
            "hot_refaults": hot_faults,
            **{k: uvm[k] for k in COUNTERS},
            "pdreact": pd.get("pdreact", 0),
            "pdpageouts": pd.get("pdpageouts", 0),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profiles", nargs="*", default=["modern", str(HERE / "fifo.toml")])
    a = ap.parse_args()
    cols = ("profile", "hot_refaults", "faults", "pgswapin", "pgswapout", "pdreact", "seconds")
    print(" ".join(f"{c:>12}" for c in cols))
    for prof in a.profiles:
        t0 = time.monotonic()
        row = run_simulation(load(prof))
        row["seconds"] = f"{time.monotonic() - t0:.1f}"
        row["profile"] = Path(prof).stem
        print(" ".join(f"{row[c]!s:>12}" for c in cols), flush=True)


if __name__ == "__main__":
    main()
