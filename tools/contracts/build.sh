#!/usr/bin/env bash
# Regenerates Workload.json (creation bytecode of each contract) from Workload.sol with the
# solc-js pinned in tests/js. Run from anywhere; needs node and `npm ci` in tests/js.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
node "$here/../../tests/js/compile.js" "$here/Workload.sol" \
  | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const o=JSON.parse(s);const r={};for(const k of Object.keys(o).sort())r[k]=o[k].bytecode;process.stdout.write(JSON.stringify(r,null,1)+"\n")})' \
  > "$here/Workload.json"
