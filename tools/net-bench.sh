#!/usr/bin/env bash
# Network-layer benchmarks, strobe and anvil in the same run (BENCHMARKS.md, "Network layer"):
#   1. eth_chainId and eth_getBalance over HTTP keep-alive, 64 connections, wrk on its own core,
#      requests/s and p50/p99 latency; the server gets one core (strobe: one network thread
#      pinned to CPU 0; anvil: pinned to CPU 0 with taskset).
#   2. The same with 16 requests pipelined per connection (throughput only).
#   3. miniBlocks fan-out to N WebSocket subscribers: delivery latency p50/p99 (strobe only; anvil
#      has no mini-blocks).
# Usage: tools/net-bench.sh [seconds per run, default 10] [subscribers, default 1000]
# Environment: SERVER_CPUS (default 0) and CLIENT_CPUS (default 1) are taskset lists; strobe runs
# one network thread per server CPU (so on a bigger machine `SERVER_CPUS=0-3 CLIENT_CPUS=4-7`
# spreads 1,000 subscribers over 4 network cores). The HTTP runs use the first server CPU only.
# Installs what it needs: wrk (apt), anvil (npm, tests/js), release builds of strobe and tools.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-10}"
SUBS="${2:-1000}"
CONNS=64
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
(cd tests/js && [ -x node_modules/.bin/anvil ] || npm ci --no-audit --no-fund --loglevel=error)
ANVIL="$PWD/tests/js/node_modules/.bin/anvil"
if [ -z "${NET_BENCH_SKIP_BUILD:-}" ]; then  # set it to measure binaries built earlier
  cargo build --release --bin strobe >/dev/null
  cargo build --release -p strobe-tools --bin strobe-tools >/dev/null
fi
STROBE="${CARGO_TARGET_DIR:-$PWD/target}/release/strobe"
TOOLS="${CARGO_TARGET_DIR:-$PWD/target}/release/strobe-tools"
CPUS=$(nproc)
SERVER_CPUS="${SERVER_CPUS:-0}"
CLIENT_CPUS="${CLIENT_CPUS:-$((CPUS > 1 ? 1 : 0))}"
SERVER_CPU="${SERVER_CPUS%%[-,]*}"
CLIENT_CPU="$CLIENT_CPUS"
SEQ_CPU="${CLIENT_CPUS%%[-,]*}"
# Expand a taskset list (0-3,6) into a count of CPUs.
count_cpus() { python3 -c 'import sys; n=0
for p in sys.argv[1].split(","):
    a,_,b=p.partition("-"); n+=int(b or a)-int(a)+1
print(n)' "$1"; }
FANOUT_THREADS=$(count_cpus "$SERVER_CPUS")
ulimit -n 65536 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
LUA=$(mktemp --suffix=.lua)
cat > "$LUA" <<'LUAEOF'
local depth = tonumber(os.getenv("PIPELINE") or "1")
local body = os.getenv("BODY")
local req
init = function(args)
  local r = {}
  for i = 1, depth do
    r[i] = wrk.format("POST", "/", {["Content-Type"] = "application/json"}, body)
  end
  req = table.concat(r)
end
request = function() return req end
LUAEOF
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -f "$LUA"; }
trap cleanup EXIT

wait_rpc() {
  for _ in $(seq 1 100); do
    curl -s -o /dev/null -X POST -H 'content-type: application/json' \
      --data '{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}' "http://127.0.0.1:$1" && return 0
    sleep 0.1
  done
  echo "server on port $1 did not start" >&2; exit 1
}

# name port method-body pipeline
run_wrk() {
  local out
  out=$(BODY="$3" PIPELINE="$4" taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "$LUA" "http://127.0.0.1:$2/" 2>&1)
  local rps p50 p99 errors
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  printf '{"server":"%s","method":"%s","pipeline":%s,"connections":%s,"requests_per_s":%s,"p50":"%s","p99":"%s","errors":"%s"}\n' \
    "$1" "$(echo "$3" | sed 's/.*"method":"\([^"]*\)".*/\1/')" "$4" "$CONNS" "${rps:-0}" "$p50" "$p99" "$errors"
}

BAL='{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":["0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","latest"]}'
CID='{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}'

echo "# $(date -u +%F) $(lscpu | awk -F: '/Model name/ {gsub(/^ +/,"",$2); print $2}') x$CPUS; server CPU $SERVER_CPU, client CPU $CLIENT_CPU, ${SECS}s runs, $CONNS connections"

SP=$(free_port)
"$STROBE" dev --quiet --port "$SP" --net-threads 1 --recovery-threads 0 --cores "net=$SERVER_CPU,seq=$SEQ_CPU" >/dev/null 2>&1 &
PIDS+=($!)
wait_rpc "$SP"
AP=$(free_port)
taskset -c "$SERVER_CPU" "$ANVIL" --port "$AP" --silent >/dev/null 2>&1 &
PIDS+=($!)
wait_rpc "$AP"

for body in "$CID" "$BAL"; do
  run_wrk strobe "$SP" "$body" 1
  run_wrk anvil "$AP" "$body" 1
done
run_wrk strobe "$SP" "$BAL" 16
run_wrk anvil "$AP" "$BAL" 16

# Fan-out: a node with one network thread per server CPU.
FP=$(free_port)
"$STROBE" dev --quiet --port "$FP" --net-threads "$FANOUT_THREADS" --recovery-threads 0 \
  --cores "net=${SERVER_CPUS//,/+},seq=$SEQ_CPU" >/dev/null 2>&1 &
PIDS+=($!)
wait_rpc "$FP"
taskset -c "$CLIENT_CPU" "$TOOLS" ws-fanout --addr "127.0.0.1:$FP" --subscribers "$SUBS" --seconds "$SECS"
