"""`python -m machine.stress [LOCUST ARGS]`: Locust on the harness's locustfile.

The same as `locust -f <this package>/locustfile.py [LOCUST ARGS]`, without
having to know where the package is installed (the compose services use it).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    from locust.main import main as locust_main  # patches the process for gevent

    here = Path(__file__).resolve().parent
    sys.argv = ["locust", "-f", str(here / "locustfile.py"), *sys.argv[1:]]
    locust_main()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
