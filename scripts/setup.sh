#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine needs to build dripline (skips what is present) and
# points cargo at a target directory under ~/.cache so repeat builds are warm. The test command
# adds what only the tests need (scripts/setup-test.sh).
set -euo pipefail

# apt_need PKG...: installs the packages not installed yet.
apt_need() {
  local need=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}" >&2
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

# RocksDB and librdkafka are compiled from source by their crates.
apt_need cmake clang libclang-dev libcurl4-openssl-dev
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dripline-target}"
