#!/usr/bin/env bash
# Runs `make test` ROUNDS times in a row (default 3) with a CPU hog on every core beside
# it: the suite asserts behaviour, never a figure that needs free CPU, so it must stay
# green on a busy machine. Stops at the first failure; the hogs stop with the script.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
cores="$(nproc)"
hogs=()
cleanup() { for p in "${hogs[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
for _ in $(seq "$cores"); do
  # A busy loop per core, at normal priority, for as long as the tests run.
  sh -c 'while :; do :; done' &
  hogs+=("$!")
done
echo "test-under-load: $rounds rounds of make test beside $cores CPU hogs"
for i in $(seq "$rounds"); do
  start="$(date +%s)"
  make test
  echo "test-under-load: round $i of $rounds green in $(( $(date +%s) - start )) s"
done
