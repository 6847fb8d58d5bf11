"""`python -m machine` and the `uvm-machine` script (pyproject: machine.__main__:main).

The command line itself is machine.cli; this module only runs it.
"""

from __future__ import annotations

import sys

from machine.cli import main, parser

__all__ = ["main", "parser"]

if __name__ == "__main__":
    sys.exit(main())
