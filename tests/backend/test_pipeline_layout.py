"""The pipeline package and the stages stay readable: no function over 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BACKEND = Path(__file__).resolve().parents[2] / "backend"
FILES = sorted((BACKEND / "pipeline").glob("*.py")) + [
    BACKEND / "stages" / f"{name}.py" for name in ("base", "step", "nerf", "neus", "dmtet", "polish", "texture",
                                                    "reference")]
MAX_LINES = 80


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [f"{path.relative_to(BACKEND)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_LINES]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(BACKEND)))
def test_no_function_is_over_80_lines(path):
    assert path.exists()
    assert _long_functions(path) == []
