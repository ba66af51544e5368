#!/usr/bin/env python3
"""Fails when two library modules import each other, directly or around a loop.

Reads every `crate::…` and `super::…` path in src/ (outside `#[cfg(test)]` modules), maps
each to the module it names, and lifts the edges to every level of the tree (`fill::round`
importing `ingest::stream` is also `fill` importing `ingest`). A module and its own parent
or child do not count. The metrics module must import nothing from the crate.

    python3 scripts/check-module-graph.py
"""

import collections
import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
LEAVES = {"observe::metrics"}


def modules():
    found = {}
    for path in SRC.rglob("*.rs"):
        if path.name in ("main.rs", "lib.rs"):
            continue
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "mod":
            parts.pop()
        found["::".join(parts)] = path
    return found


def edges(found):
    def resolve(path):
        parts = path.split("::")
        for end in range(len(parts), 0, -1):
            name = "::".join(parts[:end])
            if name in found:
                return name
        return None

    result = set()
    for module, path in found.items():
        code = path.read_text().split("#[cfg(test)]")[0]
        named = []
        for match in re.finditer(r"crate::((?:[a-z_]+::)*[a-z_]+)(?:::\{([^}]*)\})?", code):
            named.append(match.group(1))
            for item in (match.group(2) or "").split(","):
                item = item.strip().split(" ")[0].split("::")[0]
                if item and item != "self" and item[0].islower():
                    named.append(f"{match.group(1)}::{item}")
        parent = module.rsplit("::", 1)[0] if "::" in module else ""
        for match in re.finditer(r"\bsuper::([a-z_]+)", code):
            named.append(f"{parent}::{match.group(1)}" if parent else match.group(1))
        for name in named:
            target = resolve(name)
            if target and target != module:
                result.add((module, target))
    return result


def related(a, b):
    return a == b or b.startswith(a + "::") or a.startswith(b + "::")


def lifted(direct):
    def levels(name):
        parts = name.split("::")
        return ["::".join(parts[:end]) for end in range(1, len(parts) + 1)]

    return {(a, b) for x, y in direct for a in levels(x) for b in levels(y) if not related(a, b)}


def cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def main():
    found = modules()
    direct = edges(found)
    failures = [f"{a} imports {b}, but it must be a leaf" for a, b in direct if a in LEAVES]
    graph = collections.defaultdict(set)
    for a, b in lifted(direct):
        graph[a].add(b)
    loop = cycle(graph)
    if loop:
        failures.append("import cycle: " + " -> ".join(loop))
    for failure in failures:
        print(f"check-module-graph: {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"check-module-graph: {len(found)} modules, {len(direct)} imports, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
