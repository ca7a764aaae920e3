#!/usr/bin/env bash
# Checks the production kit under docker/ offline: Prometheus config and alert rules (promtool),
# the rules' unit tests, docker/compose.yaml against the Compose Specification's JSON schema and
# for consistency, the Grafana dashboard, and that every dripline_* metric the dashboard and
# alerts use is one the engine registers.
#
#   bash scripts/check-ops.sh
#   DRIPLINE_METRICS_DUMP=scrape.txt bash scripts/check-ops.sh   # also against a real scrape
#
# Needs: promtool (Debian package `prometheus`, installed here when missing, as scripts/setup.sh
# does), python3 with PyYAML and check-jsonschema (pip, installed here when missing).
#
# The Compose schema: check-jsonschema's built-in `vendor.compose-spec`, the Compose
# Specification's schema (github.com/compose-spec/compose-spec, schema/compose-spec.json,
# Apache-2.0) as vendored and kept current by check-jsonschema (PyPI, Apache-2.0; licence in its
# check_jsonschema/builtin_schemas/vendor/licenses/LICENSE.compose-spec). The version of
# check-jsonschema installed here is pinned below, so the schema changes only with the pin.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECK_JSONSCHEMA_VERSION=0.39.0

if ! command -v promtool >/dev/null; then
  echo "check-ops: installing promtool (Debian package prometheus)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
pip_install() {
  echo "check-ops: installing $1 (pip)" >&2
  python3 -m pip install --quiet --disable-pip-version-check "$1" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$1"
}
python3 -c "import yaml" 2>/dev/null || pip_install pyyaml
python3 -c "import check_jsonschema" 2>/dev/null || pip_install "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

passed=0
failed=0
# Runs a check and counts it. Inside `if`, bash ignores set -e, so the check functions below
# return 1 explicitly on each failing command.
step() {
  local name=$1
  shift
  echo "== $name"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "check-ops: FAILED: $name" >&2
  fi
}

# --- Prometheus -------------------------------------------------------------------------------
# The config as shipped, syntax only: its credentials_file is the compose secret
# /run/secrets/dripline_metrics_token, which exists only inside the container.
step "promtool check config --syntax-only (as shipped)" \
  promtool check config --syntax-only docker/prometheus/prometheus.yml

# The full check (rule files, credentials file) on a copy whose credentials_file points at a
# stand-in token file; nothing else differs (checked by diff below).
full_config_check() {
  mkdir -p "$tmp/prometheus" || return 1
  cp docker/prometheus/alerts.yml "$tmp/prometheus/" || return 1
  printf 'stand-in-token' >"$tmp/prometheus/dripline_metrics_token" || return 1
  sed "s#/run/secrets/dripline_metrics_token#$tmp/prometheus/dripline_metrics_token#" \
    docker/prometheus/prometheus.yml >"$tmp/prometheus/prometheus.yml" || return 1
  local changed
  changed=$(diff docker/prometheus/prometheus.yml "$tmp/prometheus/prometheus.yml" | grep -c '^>' || true)
  if [ "$changed" != 1 ]; then
    echo "expected exactly one credentials_file line to stand in for, changed $changed" >&2
    return 1
  fi
  promtool check config "$tmp/prometheus/prometheus.yml"
}
step "promtool check config (rule files and credentials file)" full_config_check

step "promtool check rules" promtool check rules docker/prometheus/alerts.yml
step "promtool test rules" promtool test rules docker/prometheus/alerts_test.yml

# Every alerting rule has a test in which it fires and one in which it does not.
rules_tested() {
  python3 - <<'EOF'
import yaml
rules = {r["alert"] for g in yaml.safe_load(open("docker/prometheus/alerts.yml"))["groups"]
         for r in g["rules"] if "alert" in r}
fires, quiet = set(), set()
for t in yaml.safe_load(open("docker/prometheus/alerts_test.yml"))["tests"]:
    for c in t.get("alert_rule_test") or []:
        (fires if c.get("exp_alerts") else quiet).add(c["alertname"])
bad = [f"{r}: no test where it {w}" for r in sorted(rules)
       for w, s in (("fires", fires), ("does not fire", quiet)) if r not in s]
unknown = sorted((fires | quiet) - rules)
for b in bad + [f"{u}: tested but no such rule" for u in unknown]:
    print("  " + b)
print(f"{len(rules)} alerting rules, each tested firing and not firing" if not bad + unknown else "")
raise SystemExit(1 if bad or unknown else 0)
EOF
}
step "every alert tested firing and not firing" rules_tested

# --- Compose ----------------------------------------------------------------------------------
step "docker/compose.yaml against the Compose Specification schema" \
  python3 -m check_jsonschema --builtin-schema vendor.compose-spec docker/compose.yaml
step "docker/compose.yaml consistency (secrets, references, wiring)" python3 scripts/ops_compose_check.py

# --- Grafana ----------------------------------------------------------------------------------
# The dashboard parses, its panel ids are unique, panels do not overlap, it uses only its own
# variables, and every query is valid PromQL (each written as a recording rule for promtool to
# parse, with Grafana's variables replaced by values).
dashboard_check() {
  python3 - "$tmp/dashboard_queries.yml" <<'EOF' || return 1
import json, re, sys, yaml
d = json.load(open("docker/grafana/dashboards/dripline.json"))
panels = [p for p in d["panels"]] + [q for p in d["panels"] for q in p.get("panels", [])]
ids = [p["id"] for p in panels]
assert len(ids) == len(set(ids)), "duplicate panel ids"
assert d.get("uid"), "dashboard without uid"
cells = {}
for p in panels:
    g = p["gridPos"]
    assert g["x"] + g["w"] <= 24, f"{p['title']}: wider than the grid"
    for x in range(g["x"], g["x"] + g["w"]):
        for y in range(g["y"], g["y"] + g["h"]):
            assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
            cells[(x, y)] = p["title"]
defined = {v["name"] for v in d["templating"]["list"]} | {"__rate_interval", "__interval", "__range"}
exprs = []
for p in panels:
    for t in p.get("targets", []):
        exprs.append((p["title"], t["expr"]))
for v in d["templating"]["list"]:
    q = v.get("query")
    if v["type"] == "query":
        exprs.append((v["name"], q["query"] if isinstance(q, dict) else q))
rules = []
for i, (title, e) in enumerate(exprs):
    for var in re.findall(r"\$\{?(\w+)", e):
        assert var in defined, f"{title}: undefined variable ${var}"
    if e.startswith("label_values("):
        e = re.fullmatch(r"label_values\((.*),\s*\w+\)", e).group(1)
    e = e.replace("$__rate_interval", "5m").replace("${instance}", ".*").replace("$instance", ".*")
    rules.append({"record": f"dashboard:query_{i}", "expr": e})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[1], "w"))
print(f"{len(panels)} panels, {len(exprs)} queries")
EOF
  promtool check rules "$tmp/dashboard_queries.yml" >/dev/null || return 1
  echo "every dashboard query parses as PromQL"
}
step "Grafana dashboard JSON and queries" dashboard_check

# --- metrics used exist -------------------------------------------------------------------------
# Static: a dump built from the registrations in src/ (every file registering a metric).
metrics_from_source() {
  local files=()
  mapfile -t files < <(grep -rl 'Opts::new\|Counter::new\|Gauge::new\|HistogramOpts::new' src/ | sort)
  python3 scripts/ops_metrics_used.py --dump-from-source "${files[@]}" >"$tmp/source.prom" || return 1
  echo "$(grep -c '^# TYPE' "$tmp/source.prom") metrics registered in: ${files[*]}"
  python3 scripts/ops_metrics_used.py "$tmp/source.prom"
}
step "dripline_* metrics used are registered in src/" metrics_from_source

# The check itself: the same dump without one metric the alerts use must fail, naming it.
metrics_check_selftest() {
  grep -v 'dripline_mail_outbox_oldest_age_seconds' "$tmp/source.prom" >"$tmp/missing.prom"
  if python3 scripts/ops_metrics_used.py "$tmp/missing.prom" 2>"$tmp/missing.err"; then
    echo "a dump without dripline_mail_outbox_oldest_age_seconds passed" >&2
    return 1
  fi
  grep -q 'dripline_mail_outbox_oldest_age_seconds' "$tmp/missing.err" \
    && grep -q 'DriplineOutboxStale' "$tmp/missing.err" \
    && echo "a dump missing a metric fails and names it and its uses"
}
step "ops_metrics_used.py fails on a missing metric" metrics_check_selftest

if [ -n "${DRIPLINE_METRICS_DUMP:-}" ]; then
  step "dripline_* metrics used are in $DRIPLINE_METRICS_DUMP" \
    python3 scripts/ops_metrics_used.py "$DRIPLINE_METRICS_DUMP"
else
  echo "== (DRIPLINE_METRICS_DUMP not set: no check against a live scrape)"
fi

echo "check-ops: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
