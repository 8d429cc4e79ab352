"""The import graph of the package has no circle, counting every import, also those inside functions:
arrows point down (config, data, models, runs below the loop; report, api and cli above it)."""

from __future__ import annotations

import ast
from pathlib import Path

import vaekit

PACKAGE = Path(vaekit.__file__).parent


def module_name(path: Path) -> str:
    parts = ("vaekit", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (a `from . import name` of a module counts as that module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    found = f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                    if found in modules and found != name:
                        graph[name].add(found)
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in modules and a.name != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    graph = import_graph()
    assert {"vaekit.train", "vaekit.runs", "vaekit.checkpoint", "vaekit.models.vae"} <= graph.keys()
    assert "vaekit.report" in graph["vaekit.api"]  # the parser sees function-level imports too
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_loop_never_imports_the_user_facing_layer():
    graph = import_graph()

    def below(module: str) -> set[str]:
        seen, todo = set(), [module]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    for low in ("vaekit.train", "vaekit.checkpoint", "vaekit.runs", "vaekit.models"):
        assert not below(low) & {"vaekit.api", "vaekit.cli", "vaekit.report", "vaekit.explore"}, low
    assert "vaekit.models" not in below("vaekit.checkpoint")
