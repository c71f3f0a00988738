#!/usr/bin/env bash
# The whole strobe test suite, from a fresh clone: installs what it needs (npm packages for the
# Solidity compiler and anvil, the L1 dev node of the settlement tests; a Python virtualenv
# with web3.py), checks formatting and lints, runs the Rust
# tests (unit, property and end-to-end with alloy) and the web3.py client suite.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test dependencies"
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo build --workspace
cargo test --workspace

echo "== web3.py client suite"
STROBE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/strobe" .venv/bin/python -m pytest tests/python -q
