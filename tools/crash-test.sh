#!/usr/bin/env bash
# Crash torture with any number of SIGKILL/restart cycles (the test suite runs 50):
#   tools/crash-test.sh [ITERATIONS] [VERIFY_EVERY]
# Each cycle kills `strobe dev --datadir` under sync-send load at a random moment, restarts it,
# and checks every acknowledged receipt and every block hash it served; every VERIFY_EVERY
# cycles (and at the end) the whole chain is re-executed from genesis. Set STROBE_CRASH_SEED to
# vary the schedule.
set -euo pipefail
cd "$(dirname "$0")/.."
export STROBE_CRASH_ITERATIONS="${1:-50}"
export STROBE_CRASH_VERIFY_EVERY="${2:-1}"
cargo test --release --test crash_recovery -- --nocapture
