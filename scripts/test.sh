#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every test, slow ones included, then lint and types.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
# Two test processes (the machine has two cores; most tests wait on QEMU, git or the network stack),
# whole files to one process so module-scoped fixtures are made once. Then, alone, the tests that count
# every process of the sandbox uids or build a kernel (marked exclusive in tests/conftest.py).
# Both parts run whatever the first gives; exit 5 is "nothing selected" (e.g. a file with no exclusive tests).
# Each part's log ends with its 25 slowest tests: where CI's time goes (issue 11 asks for under 20 minutes).
status=0
.venv/bin/pytest -n 2 --dist loadfile -m "not exclusive" --durations=25 "$@" || status=$?
.venv/bin/pytest -m exclusive --durations=25 "$@" || { part=$?; [ "$part" -eq 5 ] || status=$part; }
[ "$status" -eq 5 ] && status=0
exit "$status"
