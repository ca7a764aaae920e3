#!/usr/bin/env bash
# Runs the sample clickstream through the shipped workflows on embedded defaults and shows the
# emails produced (written as .eml files under out/mail/).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --bin dripline
"$CARGO_TARGET_DIR/release/dripline" validate
"$CARGO_TARGET_DIR/release/dripline" demo "$@"
