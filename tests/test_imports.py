"""Imports point one way: no module of the package or of bench/ imports, directly or through
others, a module that imports it back; deferred imports (inside functions) count too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules(folder: Path, package: str) -> dict[str, Path]:
    """Every module under ``folder`` by dotted name (``package`` prefixed; "" for scripts)."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        parts = [*path.relative_to(folder).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(filter(None, [package, *parts]))] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The known modules ``path`` imports, anywhere in it (a package's own ``__init__`` when
    it is imported through is not counted: only the module named)."""
    is_package = path.name == "__init__.py"
    base = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative
                anchor = base.split(".")[: len(base.split(".")) - node.level + 1]
                module = ".".join(filter(None, [*anchor, module]))
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in out if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def graph_of(known: dict[str, Path]) -> dict[str, set[str]]:
    return {name: imports(path, name, known) for name, path in known.items()}


def test_the_package_has_no_import_cycle() -> None:
    known = modules(ROOT / "src" / "fastsvd", "fastsvd")
    assert cycles(graph_of(known)) == []


def test_bench_has_no_import_cycle() -> None:
    # the scripts import each other by their bare names (their folder is on the path), and the
    # package and bench.* by full name
    known = {**modules(ROOT / "bench", ""), **modules(ROOT / "bench", "bench")}
    known.pop("", None)
    graph = {
        name: {m.removeprefix("bench.") for m in deps}
        for name, deps in graph_of(known).items()
        if not name.startswith("bench.")
    }
    assert cycles(graph) == []


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
