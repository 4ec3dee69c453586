#!/usr/bin/env python3
"""Prints which modules of src/ import which (`crate::<module>[::<file>]` paths, in `use` lines and inline
paths), and every cycle between them. Exit 1 when there is a cycle.

A node is a top-level module, or one file of a folder module when an import names it
(`crate::ops::metrics`): `ops/metrics.rs` importing nothing while `ops/http.rs` imports `context` is not a
cycle. Imports within one top-level module (a folder's files using each other) are not edges.

    scripts/import-graph.py            the graph and its cycles
    scripts/import-graph.py --dot      Graphviz

Tests (`tests.rs`, `#[cfg(test)] mod tests` blocks) are left out: a test may use anything."""
import re
import sys
from pathlib import Path

src = Path(__file__).resolve().parent.parent / "src"
mods = sorted(p.stem if p.is_file() else p.name for p in src.iterdir()
              if (p.is_dir() or p.suffix == ".rs") and p.stem not in ("lib", "main"))
# Files of folder modules that can be named as nodes: ops/metrics.rs -> "ops::metrics".
subs = {f"{d.name}::{f.stem}" for d in src.iterdir() if d.is_dir() for f in d.glob("*.rs")
        if f.stem not in ("mod", "tests")}
graph = {}


def node_of(path: Path) -> str:
    rel = path.relative_to(src).parts
    if len(rel) == 1:
        return rel[0][:-3]
    sub = f"{rel[0]}::{Path(rel[1]).stem}"
    return sub if sub in subs else rel[0]


def target(path: str) -> str | None:
    parts = path.split("::")
    if parts[0] not in mods:
        return None
    sub = "::".join(parts[:2])
    return sub if sub in subs else parts[0]


def top(node: str) -> str:
    return node.split("::")[0]


def strip_tests(text: str) -> str:
    # Drop `#[cfg(test)] mod tests { ... }` blocks by brace counting.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod \w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


for f in src.rglob("*.rs"):
    if f.name == "tests.rs" or f.parent == src and f.name in ("lib.rs", "main.rs"):
        continue
    me = node_of(f)
    graph.setdefault(me, set())
    text = strip_tests(f.read_text())
    # Comments (doc links among them) are not imports.
    text = re.sub(r"//.*", "", text)
    used = re.findall(r"crate::(\w+(?:::\w+)?)", text)
    # `use crate::{a, b::c}` groups.
    for group in re.findall(r"use crate::\{([^;]*)\};", text, re.S):
        used += re.findall(r"(?:^|[,{\s])(\w+(?:::\w+)?)", group)
    for u in used:
        t = target(u)
        if t and top(t) != top(me):
            graph[me].add(t)
for uses in list(graph.values()):
    for u in uses:
        graph.setdefault(u, set())

if "--dot" in sys.argv:
    print("digraph modules {")
    for m, uses in graph.items():
        for u in sorted(uses):
            print(f'  "{m}" -> "{u}";')
    print("}")
    sys.exit(0)

for m, uses in sorted(graph.items()):
    print(f"{m:<20} -> {', '.join(sorted(uses)) or '-'}")

# Strongly connected components (Tarjan): every component of more than one module is a cycle.
index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]


def visit(v):
    index[v] = low[v] = n[0]
    n[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        sccs.append(comp)


sys.setrecursionlimit(10000)
for v in graph:
    if v not in index:
        visit(v)
cycles = [sorted(c) for c in sccs if len(c) > 1]
print()
if cycles:
    for c in cycles:
        print("cycle among: " + ", ".join(c))
    sys.exit(1)
print("no cycles")
