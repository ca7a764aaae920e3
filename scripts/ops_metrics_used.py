#!/usr/bin/env python3
"""Checks that every dripline_* metric the Grafana dashboard and the Prometheus alert rules use
is exported by the engine.

    python3 scripts/ops_metrics_used.py DUMP
        DUMP: a Prometheus text-format scrape (GET /metrics). A name counts as present when it
        has a sample or a `# HELP` / `# TYPE` line. `_bucket`, `_sum` and `_count` of a
        histogram (or summary) count as its family's name. Exit 1, listing where each missing
        name is used, if any is missing.
    python3 scripts/ops_metrics_used.py --list
        Prints the dripline_* names used, with where.
    python3 scripts/ops_metrics_used.py --dump-from-source FILE.rs...
        Prints a text-format dump (# HELP, # TYPE, histogram samples) of the metrics registered
        in the given Rust sources (`IntCounter::new("dripline_…", "help")`, `Opts::new(…)`,
        `HistogramOpts::new(…)`, …): a static stand-in for a scrape. Exit 1 if a "dripline_…"
        literal of those files could not be read as a registration.

Options: --dashboard FILE.json and --rules FILE.yml (repeatable) replace the defaults
docker/grafana/dashboards/*.json and docker/prometheus/alerts.yml.
Names of recording rules (`record:`) are produced by Prometheus, not the engine: not required.
Only PyYAML is needed beyond the standard library.
"""

import argparse
import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = re.compile(r"(?<![\w:])dripline_[A-Za-z0-9_:]*")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


def names_in_expr(expr):
    """dripline_* metric names in a PromQL expression (Grafana variables allowed)."""
    found = set()
    # A label matcher's value is not a metric name, except for __name__ matchers.
    out = []
    pos = 0
    for m in STRING.finditer(expr):
        before = expr[pos:m.start()]
        if re.search(r"__name__\s*(=~|!~|!=|=)\s*$", before):
            found.update(NAME.findall(m.group(0)[1:-1]))
        out.append(before)
        out.append('""')
        pos = m.end()
    out.append(expr[pos:])
    text = "".join(out)
    for m in NAME.finditer(text):
        # `dripline_x="..."` would be a label name (none is named so today): skip it.
        if re.match(r'\s*(=~|!~|!=|=)\s*""', text[m.end():]):
            continue
        found.add(m.group(0))
    return found


def dashboard_exprs(path):
    """(where, expr) for every query of a Grafana dashboard: panel targets, nested rows,
    template variables."""
    with open(path, encoding="utf-8") as f:
        dash = json.load(f)
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            title = node.get("title") or node.get("name")
            here = f"{where} / {title}" if title and ("type" in node or "query" in node) else where
            for k, v in node.items():
                if k in ("expr", "definition") and isinstance(v, str):
                    found.append((here, v))
                elif k == "query" and isinstance(v, str):
                    found.append((here, v))
                elif k == "query" and isinstance(v, dict) and isinstance(v.get("query"), str):
                    found.append((here, v["query"]))
                else:
                    walk(v, here)
        elif isinstance(node, list):
            for v in node:
                walk(v, where)

    walk(dash, os.path.relpath(path, ROOT))
    return found


def rule_exprs(path):
    import yaml

    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f) or {}
    found, records = [], set()
    for g in doc.get("groups") or []:
        for r in g.get("rules") or []:
            if "record" in r:
                records.add(r["record"])
            name = r.get("alert") or r.get("record")
            found.append((f"{os.path.relpath(path, ROOT)} / {g.get('name')} / {name}", str(r.get("expr", ""))))
    return found, records


def used(dashboards, rules):
    """{metric name: [where used]}, minus recording-rule outputs."""
    uses, records = {}, set()
    exprs = []
    for d in dashboards:
        exprs += dashboard_exprs(d)
    for r in rules:
        e, rec = rule_exprs(r)
        exprs += e
        records |= rec
    for where, expr in exprs:
        for n in names_in_expr(expr):
            if n not in records:
                uses.setdefault(n, []).append(where)
    return uses


def parse_dump(path):
    """Names present in a text-format dump, and the declared type of each family."""
    present, types = set(), {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    present.add(parts[2])
                    if parts[1] == "TYPE" and len(parts) == 4:
                        types[parts[2]] = parts[3].strip()
                continue
            m = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line)
            if m:
                present.add(m.group(0))
    return present, types


def is_present(name, present, types):
    if name in present:
        return True
    for s in HIST_SUFFIXES:
        if name.endswith(s):
            base = name[: -len(s)]
            if types.get(base) in ("histogram", "summary"):
                return True
            # Without a # TYPE line, a family's other series still show it is a histogram.
            if types.get(base) is None and any(base + o in present for o in HIST_SUFFIXES if o != s):
                return True
    return False


CTOR = re.compile(
    r"(\w+)::(?:new|with_opts)\(\s*(?:(\w+)::new\(\s*)?"
    r'"(dripline_[A-Za-z0-9_:]*)"\s*,\s*"((?:[^"\\]|\\.)*)"',
    re.S,
)


def dump_from_source(files):
    metrics, literals = {}, set()
    for path in files:
        with open(path, encoding="utf-8") as f:
            src = f.read()
        literals |= set(re.findall(r'"(dripline_[A-Za-z0-9_:]*)"', src))
        for outer, inner, name, help_ in CTOR.findall(src):
            kind = outer + " " + (inner or "")
            if "Histogram" in kind:
                t = "histogram"
            elif "Counter" in kind:
                t = "counter"
            elif "Gauge" in kind:
                t = "gauge"
            else:
                t = "untyped"
            metrics[name] = (t, help_.replace("\\", "\\\\"))
    unread = sorted(literals - set(metrics))
    if unread:
        print("ops_metrics_used: not read as a registration: " + ", ".join(unread), file=sys.stderr)
        return 1
    for name in sorted(metrics):
        t, h = metrics[name]
        print(f"# HELP {name} {h}")
        print(f"# TYPE {name} {t}")
        if t == "histogram":
            print(f'{name}_bucket{{le="+Inf"}} 0')
            print(f"{name}_sum 0")
            print(f"{name}_count 0")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dump", nargs="?", help="Prometheus text-format dump to check against")
    ap.add_argument("--dashboard", action="append", help="Grafana dashboard JSON (repeatable)")
    ap.add_argument("--rules", action="append", help="Prometheus rule file (repeatable)")
    ap.add_argument("--list", action="store_true", help="print the dripline_* names used")
    ap.add_argument("--dump-from-source", nargs="+", metavar="FILE", help="print a dump built from Rust sources")
    a = ap.parse_args()

    if a.dump_from_source:
        return dump_from_source(a.dump_from_source)

    dashboards = a.dashboard or sorted(glob.glob(os.path.join(ROOT, "docker/grafana/dashboards/*.json")))
    rules = a.rules or [os.path.join(ROOT, "docker/prometheus/alerts.yml")]
    uses = used(dashboards, rules)
    if not uses:
        print("ops_metrics_used: no dripline_* metric found in " + ", ".join(dashboards + rules), file=sys.stderr)
        return 1
    if a.list:
        for n in sorted(uses):
            print(f"{n}\t{len(uses[n])}\t{uses[n][0]}")
        return 0
    if not a.dump:
        ap.error("give a metrics dump, --list or --dump-from-source")

    present, types = parse_dump(a.dump)
    missing = sorted(n for n in uses if not is_present(n, present, types))
    if missing:
        print(f"ops_metrics_used: {len(missing)} metric(s) used but not in {a.dump}:", file=sys.stderr)
        for n in missing:
            print(f"  {n}", file=sys.stderr)
            for w in sorted(set(uses[n])):
                print(f"      used in {w}", file=sys.stderr)
        return 1
    print(f"ops_metrics_used: all {len(uses)} dripline_* metrics used by the dashboard and alerts are in {a.dump}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
