#!/usr/bin/env bash
# The test command: formatting, lints, then every test (release profile only, so RocksDB is
# compiled once and shared with the demo and the benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source scripts/setup-test.sh
# A real Kafka-compatible broker for tests/kafka.rs: tansu 0.6.0 (Apache-2.0, from crates.io),
# built once into ~/.cache (about 17 minutes on two cores) and reused after that.
TANSU="$HOME/.cache/tansu/bin/tansu"
if [ ! -x "$TANSU" ]; then
  echo "test: installing the tansu broker (once)" >&2
  cargo install tansu --version 0.6.0 --locked --features dynostore,libsql \
    --root "$HOME/.cache/tansu" --target-dir "$HOME/.cache/tansu-build" --quiet
fi
export DRIPLINE_TANSU="$TANSU"
cargo fmt --all -- --check
# Documentation: no diary references, README length, links that resolve.
bash scripts/check-docs.sh
# The production kit: promtool on the Prometheus config and rules (with their unit tests), the
# compose file against the Compose Specification's schema, the Grafana dashboard.
bash scripts/check-ops.sh
# The architecture: no import cycle among the crate's top-level modules.
python3 scripts/check-imports.py
cargo clippy --release --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --no-fail-fast
else
  cargo test --release --no-fail-fast
fi
