#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every test, slow ones included, then lint and types.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/pytest "$@"
