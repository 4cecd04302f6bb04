"""Every wire error code is defined once, in protocol/errors.py: the backend, the clients and the add-on
name codes by its constants, and the spec's tables of codes and limits are the code's own."""

from __future__ import annotations

import ast
from pathlib import Path

from dreampolish.protocol.errors import ERROR_CODES

from tests.support import spec_tables

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("backend", "protocol", "blender_addon")


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, kinds) and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}


def stray_codes(root: Path) -> list[str]:
    """`path:line: code` for every string literal in product code that spells a wire error code outside
    protocol/errors.py (docstrings aside)."""
    found = []
    for folder in PRODUCT:
        for path in sorted((root / folder).rglob("*.py")):
            if path == root / "protocol" / "errors.py":
                continue
            tree = ast.parse(path.read_text(), str(path))
            docs = _docstrings(tree)
            found += [f"{path.relative_to(root)}:{node.lineno}: {node.value}" for node in ast.walk(tree)
                      if isinstance(node, ast.Constant) and isinstance(node.value, str)
                      and node.value in ERROR_CODES and id(node) not in docs]
    return found


def test_no_product_module_spells_an_error_code_of_its_own():
    assert stray_codes(ROOT) == []


def test_the_stray_code_check_finds_a_literal_code(tmp_path):
    (tmp_path / "backend").mkdir()
    (tmp_path / "protocol").mkdir()
    (tmp_path / "blender_addon").mkdir()
    (tmp_path / "backend" / "stage.py").write_text('"""Mentions queue_full."""\nraise JobFailed("queue_full", "x")\n')
    assert stray_codes(tmp_path) == ["backend/stage.py:2: queue_full"]


def test_the_spec_lists_every_error_code_with_its_meaning():
    page = spec_tables.PAGE.read_text()
    assert spec_tables.page_table(page, "error-codes") == spec_tables.error_codes_table()
    for code in ERROR_CODES:
        assert f"| `{code}` |" in page


def test_the_spec_lists_every_limit_with_its_default_and_meaning():
    page = spec_tables.PAGE.read_text()
    table = spec_tables.page_table(page, "limits")
    assert table == spec_tables.limits_table()
    assert "| `max_reference_image_bytes` | 67,108,864 (64 MiB) | Largest reference image PNG file. |" in table


def test_every_code_has_a_meaning_and_the_messages_that_carry_it():
    for code, entry in ERROR_CODES.items():
        assert entry.code == code and entry.meaning and entry.sent_in in ("error", "failed", "error, failed")
