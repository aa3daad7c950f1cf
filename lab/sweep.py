"""`python -m lab.sweep COORDINATOR`: power off and release the places this host's lab worker still locks.

A lab worker runs it at start-up (workers/tasks.py) in a process of its own: gRPC must not be
started in the Celery parent, whose pool processes are forked from it later.
"""

from __future__ import annotations

import logging
import sys

from lab.board import sweep_stale_locks


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for address in argv:
        for place in sweep_stale_locks(address):
            print(f"{address}: released {place}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
