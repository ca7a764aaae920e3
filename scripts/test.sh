#!/usr/bin/env bash
# The test command: formatting, lints, then every test (release profile only, so RocksDB is
# compiled once and shared with the demo and the benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --no-fail-fast
else
  cargo test --release --no-fail-fast
fi
