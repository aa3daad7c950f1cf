#!/usr/bin/env bash
# The quickstart: set up, turn examples/hello into a git repository, and run
# `labgate try` with its three patches: one passes, one fails a test, one does not apply.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 2

work=$(mktemp -d -t labgate-demo.XXXXXX)
cp -a examples/hello/. "$work/hello"
(cd "$work/hello" && git init -q -b main && git add -A &&
  git -c user.name="Example Dev" -c user.email=dev@example.org commit -q -m "hello: import") || exit 2
echo "demo: examples/hello is now a git repository at $work/hello"

status=0
expect() {  # expect PATCH EXIT_CODE
  echo
  echo "=== labgate try hello --patch $1 (expecting exit $2) ==="
  .venv/bin/labgate try "$work/hello" --patch "examples/hello/patches/$1"
  local got=$?
  echo "=== $1: exit $got ==="
  [ "$got" -eq "$2" ] || { echo "demo: $1 should exit $2, got $got"; status=1; }
}
expect pass.patch 0
expect fail.patch 1
expect conflict.patch 2
echo
echo "demo: to see the pipeline and job pages, run '.venv/bin/labgate up' and open the 'details:' links above"
exit $status
