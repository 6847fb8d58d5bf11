"""The client the nemesis' client-kill kills: `python -m machine.stress.victim ENDPOINT`.

A separate OS process (its own session, its own lease): it attaches with the green
client, maps `--pages` pages it keeps (touched, so they hold frames), prints
`ready <session id>` once (flushed: the nemesis waits for it), then loops forever
on mmap / store / load (checked) / send / munmap, so a SIGKILL lands mid-operation.
It never detaches on purpose: its session ends by the lease running out (uvm reaps
it and every frame comes back) or by the machine stopping. Should the process that
started it die first, it notices (its parent changes) and exits, detaching nothing.
A wrong byte read back exits it with status 4 (corruption, not the nemesis' doing).
"""

from __future__ import annotations

import argparse
import os
import sys

from machine.client.errors import MachineError
from machine.stress.green import GreenMachine

CHUNK_PAGES = 4  # each loop's own mapping


def run(endpoint: str, pages: int) -> int:
    m = GreenMachine.attach(endpoint)
    page = m.directory.page_size
    p = m.spawn()
    keep = p.mmap(pages * page)
    p.touch(keep, pages)
    sock = p.socket()
    print(f"ready {m.session}", flush=True)
    parent = os.getppid()
    i = 0
    while os.getppid() == parent:  # the nemesis gone (its process killed): end, not leak
        i += 1
        va = p.mmap(CHUNK_PAGES * page)
        data = bytes([i % 251]) * (CHUNK_PAGES * page)
        p.store(va, data)
        if p.load(va, len(data)) != data:
            print(f"victim: loop {i}: a wrong byte read back", file=sys.stderr, flush=True)
            return 4
        p.send(sock, va, len(data))
        p.munmap(va, len(data))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m machine.stress.victim")
    ap.add_argument("endpoint")
    ap.add_argument("--pages", type=int, default=32, help="pages kept mapped and touched")
    a = ap.parse_args(argv)
    try:
        return run(a.endpoint, a.pages)
    except MachineError as e:  # the machine stopped or panicked under it
        print(f"victim: {e}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
