#!/usr/bin/env bash
# What only the tests need, on top of scripts/setup.sh (sourced after it by scripts/test.sh).
set -euo pipefail
# prometheus: the tests scrape the engine with a real Prometheus server (and promtool checks the
# shipped rules); chromium and its driver: pages are tested in a real browser; openssl: a DKIM
# test key; spamassassin: the mail is scored by it (local rules, offline).
apt_need prometheus openssl chromium chromium-driver spamassassin
# A real SMTP server for the tests (aiosmtpd), a real DKIM verifier (dkimpy), the browser
# driver's client (selenium, pointed at Debian's chromedriver: nothing is downloaded), the
# official Segment and RudderStack SDKs, the reference OpenAPI validator and a reference of the Java client's
# partitioner (kafka-python), the Standard Webhooks reference verifier and an iCalendar parser.
for mod in aiosmtpd:aiosmtpd dkim:dkimpy selenium:selenium segment.analytics:segment-analytics-python \
  openapi_spec_validator:openapi-spec-validator kafka:kafka-python \
  rudderstack.analytics:rudder-sdk-python standardwebhooks:standardwebhooks icalendar:icalendar; do
  if ! python3 -c "import ${mod%%:*}" 2>/dev/null; then
    echo "setup: installing ${mod#*:} (pip)" >&2
    python3 -m pip install --quiet --disable-pip-version-check "${mod#*:}" 2>/dev/null \
      || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${mod#*:}"
  fi
done
