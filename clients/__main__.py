"""`python -m clients NAME [args]`: run one of the ready-made test clients."""

from __future__ import annotations

import sys

from clients import forker, hog, pattern, sender

CLIENTS = {"pattern": pattern.main, "forker": forker.main, "hog": hog.main, "sender": sender.main}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in CLIENTS:
        print(f"usage: python -m clients {{{','.join(CLIENTS)}}} [args]", file=sys.stderr)
        return 2
    return CLIENTS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
