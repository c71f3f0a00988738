#!/usr/bin/env bash
# Regenerates StrobeInbox.json (ABI and creation bytecode) from StrobeInbox.sol with the solc-js
# pinned in tests/js (offline). The settlement crate embeds the bytecode; the test
# `inbox_bytecode_is_reproducible` recompiles the source and fails if the two differ.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
node "$here/../tests/js/compile.js" "$here/StrobeInbox.sol" \
  | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const c=JSON.parse(s).StrobeInbox;process.stdout.write(JSON.stringify({abi:c.abi,bytecode:c.bytecode},null,1)+"\n")})' \
  > "$here/StrobeInbox.json"
