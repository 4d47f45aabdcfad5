"""Fail on any import circle between handwritten modules (``make lint``; decision 0026).

import-linter's ``acyclic_siblings`` contract (pyproject.toml) forbids circles between the
children of each package; this check is the finer one: no module may reach itself through the
imports of other modules, at any level, whether the import runs at start-up, inside a function
or only for type checking. It prints every circle's modules and the imports that close it.
"""

from __future__ import annotations

import sys

import grimp

PACKAGES = ("flowledger", "flowledger_core", "store_service", "engine_service", "flowctl")
GENERATED = "flowledger.v1"


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """The import graph's circles: strongly connected components of more than one module
    (Tarjan's algorithm, iterative)."""
    modules = sorted(m for m in graph.modules if not m.startswith(GENERATED))
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & set(modules)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(edges[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def main() -> int:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    circles = strongly_connected(graph)
    for members in circles:
        print(f"import circle of {len(members)} modules:")
        inside = set(members)
        for module in members:
            for imported in sorted(graph.find_modules_directly_imported_by(module) & inside):
                lines = graph.get_import_details(importer=module, imported=imported)
                where = ", ".join(f"line {d['line_number']}" for d in lines)
                print(f"  {module} -> {imported} ({where})")
    if circles:
        print(f"{len(circles)} import circle(s); move what both sides need into a third module")
        return 1
    print(f"no import circles in {', '.join(PACKAGES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
