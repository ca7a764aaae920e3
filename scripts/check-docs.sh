#!/usr/bin/env bash
# Checks the documentation: README.md stays short (under 300 lines), no tracked file refers to
# numbered development sessions or work periods, and every relative Markdown
# link in README.md, CHANGELOG.md and docs/ points to a file that exists. Prints each problem and
# exits non-zero if there is one.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 - <<'PY'
import os
import re
import subprocess
import sys

SELF = "scripts/check-docs.sh"
problems = []

# 1. README.md under 300 lines.
with open("README.md", encoding="utf-8") as f:
    lines = f.read().count("\n")
if lines >= 300:
    problems.append(f"README.md: {lines} lines (keep it under 300; move reference material to docs/)")

# 2. No development-diary references in files git tracks or would track.
diary = re.compile(r"\b(session|period)s? [0-9]+\b|before (session|period)", re.IGNORECASE)
listed = subprocess.run(
    ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
    check=True, capture_output=True,
).stdout.decode("utf-8", "surrogateescape").split("\0")
for path in sorted(set(p for p in listed if p)):
    if path == SELF or path.startswith(".git/") or not os.path.isfile(path):
        continue
    with open(path, "rb") as f:
        data = f.read()
    if b"\0" in data[:8192]:
        continue  # binary
    text = data.decode("utf-8", "replace")
    for number, line in enumerate(text.splitlines(), 1):
        m = diary.search(line)
        if m:
            problems.append(f"{path}:{number}: refers to a development session or period: `{m.group(0)}`")

# 3. Relative Markdown links point to files that exist.
docs = ["README.md", "CHANGELOG.md"]
for root, dirs, files in os.walk("docs"):
    dirs.sort()
    docs += [os.path.join(root, name) for name in sorted(files) if name.endswith(".md")]
fence = re.compile(r"^\s*(```|~~~)")
code_span = re.compile(r"`[^`]*`")
link = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
for doc in docs:
    if not os.path.isfile(doc):
        problems.append(f"{doc}: missing")
        continue
    base = os.path.dirname(doc)
    in_fence = False
    with open(doc, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if fence.match(line):
                in_fence = not in_fence
                continue
            if in_fence:
                continue
            for target in link.findall(code_span.sub("", line)):
                if re.match(r"^(https?:|mailto:)", target, re.IGNORECASE) or target.startswith("#"):
                    continue
                path = target.split("#", 1)[0].split("?", 1)[0]
                if not path:
                    continue
                resolved = os.path.normpath(os.path.join(base, path))
                if not os.path.exists(resolved):
                    problems.append(f"{doc}:{number}: link to `{target}`: {resolved} does not exist")

for p in problems:
    print(p)
if problems:
    print(f"check-docs: {len(problems)} problem(s)", file=sys.stderr)
    sys.exit(1)
print(f"check-docs: ok (README.md {lines} lines, {len(docs)} Markdown files checked)")
PY
