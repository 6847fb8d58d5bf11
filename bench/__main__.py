"""`python -m bench summary [--quick] [--json]`: the issue-11 ratios in one run (summary.py)."""

from __future__ import annotations

import sys

COMMANDS = {"summary": "the message-economy ratios in one run (bench/summary.py)"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        lines = [f"  {k:10} {v}" for k, v in COMMANDS.items()]
        print("usage: python -m bench COMMAND [options]\n" + "\n".join(lines), file=sys.stderr)
        return 2
    from bench import summary  # only when asked for

    return summary.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
