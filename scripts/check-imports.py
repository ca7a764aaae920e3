#!/usr/bin/env python3
"""Fails when the crate's top-level modules import each other in a cycle.

Every `crate::NAME` a file under src/NAME/ (or src/NAME.rs) mentions is an edge NAME -> that
module; `super::` inside a module stays inside it. Prints the graph with --graph.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
REF = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")


def module_of(path):
    rel = os.path.relpath(path, ROOT)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def strip_comments(text):
    out = []
    for line in text.splitlines():
        code = line.split("//", 1)[0]
        out.append(code)
    return "\n".join(out)


def graph():
    edges = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            src = module_of(path)
            if src in ("main", "lib"):
                continue
            text = strip_comments(open(path, encoding="utf-8").read())
            # Test modules may reach anywhere.
            text = text.split("#[cfg(test)]", 1)[0]
            for m in REF.finditer(text):
                dst = m.group(1)
                if dst != src:
                    edges.setdefault(src, set()).add(dst)
    return edges


def cycles(edges):
    found, state, stack = [], {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif state.get(m) is None:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if state.get(n) is None:
            visit(n)
    return found


def main():
    edges = graph()
    if "--graph" in sys.argv:
        for n in sorted(edges):
            print(f"{n} -> {', '.join(sorted(edges[n]))}")
    found = cycles(edges)
    for c in found:
        print("import cycle: " + " -> ".join(c))
    if found:
        sys.exit(1)
    print(f"check-imports: no cycle among {len(edges)} modules")


if __name__ == "__main__":
    main()
