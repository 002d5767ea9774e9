"""The SQL core stays dialect-neutral: what differs per database lives in its dialect module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import runcore.storage.sql
from runcore.storage.sql import format_placeholders
from runcore.storage.sql.schema import create_statements
from runcore.storage.sqlite import SqliteDialect

SQL_CORE = Path(runcore.storage.sql.__file__).parent

#: What only SQLite speaks: it belongs in runcore/storage/sqlite.py, never in the core.
_SQLITE_ONLY = re.compile(
    r"json_extract|json_valid\(|json_group_array|json_remove\(|json_type\(|sqlite_master"
    r"|AUTOINCREMENT|WITHOUT ROWID|BEGIN IMMEDIATE|INSERT OR|PRAGMA",
)


def _sql_strings(path: Path) -> list[str]:
    """Every string literal of a module (f-string parts included), docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


@pytest.mark.parametrize("path", sorted(SQL_CORE.glob("*.py")), ids=lambda p: p.name)
def test_the_core_holds_no_sqlite_only_sql(path: Path) -> None:
    found = [text for text in _sql_strings(path) if _SQLITE_ONLY.search(text)]
    assert found == [], f"SQLite-only SQL in the core ({path.name}): {found}"
    assert "import sqlite3" not in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", sorted(SQL_CORE.glob("*.py")), ids=lambda p: p.name)
def test_no_core_module_is_over_600_lines(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 600


def test_sqlite_fills_in_its_types() -> None:
    statements = "\n".join(create_statements(SqliteDialect()))
    assert "{" not in statements
    assert statements.count("INTEGER PRIMARY KEY AUTOINCREMENT") == 3
    assert "run_pk INTEGER NOT NULL" in statements


@pytest.mark.parametrize(
    ("qmark", "format_style"),
    [
        ("SELECT 1 FROM runs WHERE run_id = ?", "SELECT 1 FROM runs WHERE run_id = %s"),
        ("INSERT INTO t (a, b) VALUES (?, ?)", "INSERT INTO t (a, b) VALUES (%s, %s)"),
        ("SELECT '?' , x FROM t WHERE y = ?", "SELECT '?' , x FROM t WHERE y = %s"),
        ("SELECT 5 % 2, '100%' WHERE a = ?", "SELECT 5 %% 2, '100%%' WHERE a = %s"),
        ('SELECT "we?ird" FROM t', 'SELECT "we?ird" FROM t'),
    ],
)
def test_format_placeholders(qmark: str, format_style: str) -> None:
    assert format_placeholders(qmark) == format_style
