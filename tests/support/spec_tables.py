"""The spec's tables (protocol/README.md) as the code defines them: the error codes from
protocol/errors.py and the limits from protocol/limits.py, each field with the docstring under it.

The tests compare the page with these; after changing either module, rewrite the page's tables with

    .venv/bin/python -m tests.support.spec_tables
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

from dreampolish.protocol import limits
from dreampolish.protocol.errors import ERROR_CODES

PAGE = Path(limits.__file__).parent / "README.md"
MARKERS = {"error-codes": "error codes", "limits": "limits"}


def field_docs(source: str, class_name: str) -> dict[str, str]:
    """The docstring under each field of a dataclass, from its source (Python keeps none at run time)."""
    cls = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == class_name)
    docs: dict[str, str] = {}
    for field_node, doc_node in zip(cls.body, cls.body[1:]):
        if (isinstance(field_node, ast.AnnAssign) and isinstance(field_node.target, ast.Name)
                and isinstance(doc_node, ast.Expr) and isinstance(doc_node.value, ast.Constant)):
            docs[field_node.target.id] = " ".join(str(doc_node.value.value).split())
    return docs


def _size(value: int, name: str) -> str:
    if name.endswith("_bytes") and value >= 1024 and value % 1024 == 0:
        return f"{value:,} ({value // 1024 ** 2} MiB)" if value >= 1024 ** 2 else f"{value:,} ({value // 1024} KiB)"
    return f"{value:,}"


def limits_table() -> str:
    docs = field_docs(Path(limits.__file__).read_text(), "Limits")
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(limits.Limits):
        rows.append(f"| `{f.name}` | {_size(getattr(limits.LIMITS, f.name), f.name)} | {docs.get(f.name, '')} |")
    return "\n".join(rows)


def error_codes_table() -> str:
    rows = ["| code | sent in | meaning |", "|---|---|---|"]
    for c in ERROR_CODES.values():
        sent_in = ", ".join(f"`{m.strip()}`" for m in c.sent_in.split(","))
        rows.append(f"| `{c.code}` | {sent_in} | {c.meaning} |")
    return "\n".join(rows)


TABLES = {"error-codes": error_codes_table, "limits": limits_table}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {name}: generated[^>]*-->\n)(.*?)(<!-- /{name} -->)", re.S)


def page_table(text: str, name: str) -> str:
    """The table between the page's markers for `name` ("" when the page has none)."""
    found = _block(name).search(text)
    return found.group(2).strip() if found else ""


def rewrite(text: str) -> str:
    for name, table in TABLES.items():
        text = _block(name).sub(lambda mo, t=table: mo.group(1) + t() + "\n" + mo.group(3), text)
    return text


if __name__ == "__main__":
    PAGE.write_text(rewrite(PAGE.read_text()))
