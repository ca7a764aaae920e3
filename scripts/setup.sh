#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine needs to build dripline (skips what is present) and
# points cargo at a target directory under ~/.cache so repeat builds are warm.
set -euo pipefail
need=()
# prometheus: the tests scrape the engine with a real Prometheus server; chromium and its
# driver: the preference page is tested in a real browser; openssl: a DKIM test key.
for pkg in cmake clang libclang-dev libcurl4-openssl-dev prometheus openssl chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# A real SMTP server for the tests (aiosmtpd), a real DKIM verifier (dkimpy) and the browser
# driver's client (selenium, pointed at Debian's chromedriver: nothing is downloaded).
for mod in aiosmtpd:aiosmtpd dkim:dkimpy selenium:selenium; do
  if ! python3 -c "import ${mod%%:*}" 2>/dev/null; then
    echo "setup: installing ${mod#*:} (pip)" >&2
    python3 -m pip install --quiet --disable-pip-version-check "${mod#*:}" 2>/dev/null \
      || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${mod#*:}"
  fi
done
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dripline-target}"
