"""No import cycles in dreampolish.backend and dreampolish.protocol, counting imports inside functions.

Reads every module's source (AST), so an import that runs only when a function is called counts as
much as one at the top: a cycle through a lazy import is still two modules that need each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"dreampolish.backend": REPO / "backend", "dreampolish.protocol": REPO / "protocol"}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The most specific module of ours that `name` (a dotted import target) loads, or None."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import mod` loads pkg.mod when it is a module, else pkg itself.
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                found = _resolve(target, modules)
                if found is not None and found != name:
                    graph[name].add(found)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None; iterative depth-first search."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_graph_sees_imports_inside_functions_and_relative_ones():
    graph = import_graph(_modules())
    # commands/render.py imports the rasteriser only inside render_to_folder.
    assert "dreampolish.backend.render.rasterize" in graph["dreampolish.backend.commands.render"]
    # protocol/ imports relatively.
    assert "dreampolish.protocol.errors" in graph["dreampolish.protocol.codec"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph(_modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


LOWER = ("geometry", "render", "guidance", "models")
"""The parts the stages are built from: they may import each other, never what is built on them."""
UPPER = ("stages", "pipeline", "pipeline_api", "jobs", "server", "executor", "presets", "commands")


def test_layers_point_down():
    graph = import_graph(_modules())
    wrong = []
    for name, targets in graph.items():
        for target in targets:
            if name.startswith("dreampolish.protocol") and target.startswith("dreampolish.backend"):
                wrong.append((name, target))
            low = any(name.startswith(f"dreampolish.backend.{p}.") for p in LOWER)
            up = any(target == f"dreampolish.backend.{p}" or target.startswith(f"dreampolish.backend.{p}.")
                     for p in UPPER)
            if low and up:
                wrong.append((name, target))
    assert wrong == [], "imports against the layering: " + ", ".join(f"{a} -> {b}" for a, b in wrong)
