"""Sizes a reader can hold: no function over 80 lines (CONVENTIONS: each function one job to hold in one's
head) and no module over 600 lines (a module is one concern; past that it has usually grown a second) in
protocol/, backend/ and blender_addon/."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("protocol", "backend", "blender_addon")
MAX_LINES = 80
MAX_MODULE_LINES = 600


def sources() -> list[tuple[str, str]]:
    """(path relative to the repository, text) of every Python module in FOLDERS."""
    return [(path.relative_to(REPO).as_posix(), path.read_text())
            for folder in FOLDERS for path in sorted((REPO / folder).rglob("*.py"))]


def long_functions() -> list[str]:
    found = []
    for rel, text in sources():
        for node in ast.walk(ast.parse(text, rel)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    found.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    return found


def long_modules() -> list[str]:
    return [f"{rel} ({len(text.splitlines())} lines)" for rel, text in sources()
            if len(text.splitlines()) > MAX_MODULE_LINES]


def test_no_function_is_over_80_lines():
    assert long_functions() == []


def test_no_module_is_over_600_lines():
    assert long_modules() == []
