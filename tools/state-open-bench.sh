#!/usr/bin/env bash
# Open time and memory of `strobe node` on a large state:
#   tools/state-open-bench.sh [ACCOUNTS] [RUNS]          (defaults: 10000000 accounts, 5 runs)
# Builds the release binaries, creates the data directory with `strobe-tools state-gen` if it is
# missing (DATADIR, default /tmp/strobe-state-ACCOUNTS; 10M accounts take ~6 GB and ~1 min), then
# starts `strobe node --datadir` RUNS times. Each run is timed from process start to the
# "Listening on" line; VmRSS is read from /proc right then and again one second later. Prints each
# run and the medians. COLD=1 evicts the data directory's files from the page cache before each
# run (posix_fadvise DONTNEED, nothing else on the machine is touched). Set KEEP=0 to remove the
# data directory at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ACCOUNTS="${1:-10000000}"
RUNS="${2:-5}"
DATADIR="${DATADIR:-/tmp/strobe-state-$ACCOUNTS}"
PORT="${PORT:-8645}"
KEEP="${KEEP:-1}"
COLD="${COLD:-0}"

cargo build --release -p strobe -p strobe-tools
if [ ! -e "$DATADIR/state/HEADER" ]; then
  echo "creating $DATADIR with $ACCOUNTS accounts..."
  /usr/bin/time -f "state-gen: %e s wall, peak RSS %M KiB" \
    target/release/strobe-tools state-gen --accounts "$ACCOUNTS" --datadir "$DATADIR"
fi
target/release/strobe db stats --datadir "$DATADIR"

rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
median() { sort -n | awk '{v[NR]=$1} END{print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
evict() {
  python3 - "$DATADIR" <<'PY'
import os, sys
for root, _, files in os.walk(sys.argv[1]):
    for name in files:
        fd = os.open(os.path.join(root, name), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
PY
}

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
open_ms=() rss_open=() rss_later=()
for run in $(seq 1 "$RUNS"); do
  : >"$log"
  if [ "$COLD" = 1 ]; then evict; fi
  start=$(date +%s%N)
  target/release/strobe node --datadir "$DATADIR" --port "$PORT" >"$log" 2>&1 &
  pid=$!
  until grep -q '^Listening on' "$log"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "strobe node exited before listening:" >&2
      cat "$log" >&2
      exit 1
    fi
    sleep 0.002
  done
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  rss1=$(rss_kib "$pid")
  sleep 1
  rss2=$(rss_kib "$pid")
  kill -INT "$pid"
  wait "$pid" || true
  echo "run $run: open ${ms} ms, VmRSS at open $((rss1 / 1024)) MiB, 1 s later $((rss2 / 1024)) MiB"
  open_ms+=("$ms") rss_open+=("$rss1") rss_later+=("$rss2")
done
echo "median over $RUNS runs ($ACCOUNTS accounts): open $(printf '%s\n' "${open_ms[@]}" | median) ms," \
  "VmRSS at open $(( $(printf '%s\n' "${rss_open[@]}" | median | cut -d. -f1) / 1024 )) MiB," \
  "1 s later $(( $(printf '%s\n' "${rss_later[@]}" | median | cut -d. -f1) / 1024 )) MiB"
if [ "$KEEP" = 0 ]; then
  rm -rf "$DATADIR"
fi
