"""The tests' own layout: test modules share helpers through tests/support, never through each other, and
nothing edits sys.path (pytest's pythonpath setting is the one place)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _is_test_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "tests" and parts[-1].startswith(("test_", "conftest"))


def test_no_test_module_imports_another():
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in _imported_modules(path) if _is_test_module(n))
        for path in sorted(TESTS.rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_sees_a_cross_import(tmp_path):
    path = tmp_path / "test_x.py"
    path.write_text("from tests.service.test_api import matched\nimport tests.support.tools\n")
    assert [n for n in _imported_modules(path) if _is_test_module(n)] == ["tests.service.test_api"]


def test_nothing_edits_sys_path():
    needle = "sys.path." + "insert"  # spelled apart so that this file does not match itself
    files = [*TESTS.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    assert [str(p.relative_to(ROOT)) for p in files if needle in p.read_text()] == []
