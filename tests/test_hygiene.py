"""House rules the code keeps: no product function longer than 80 lines (docs: the developers' guide)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The product's folders. Links inside them (xscreen/model -> ../model, ...) are skipped: their targets
# are walked as the real folders.
PRODUCT_DIRS = ("xscreen", "model", "service", "training")
MAX_FUNCTION_LINES = 80


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """(qualified name, def line, lines) of every function in ``source`` longer than ``limit`` lines,
    counted from the ``def`` line to its last line (decorators not included)."""
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lines = child.end_lineno - child.lineno + 1
                    if lines > limit:
                        found.append((name, child.lineno, lines))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def product_files() -> list[Path]:
    files = []
    for top in PRODUCT_DIRS:
        for folder, dirs, names in os.walk(ROOT / top):
            dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(folder, d)))
            files += [Path(folder) / n for n in sorted(names) if n.endswith(".py")]
    return files


def _function(name: str, lines: int, indent: str = "") -> str:
    """Source of a function ``lines`` lines long (def line included)."""
    return f"{indent}def {name}():\n" + "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 1))


def test_the_check_counts_from_def_to_last_line():
    assert long_functions(_function("f", 80)) == []
    assert long_functions(_function("f", 81)) == [("f", 1, 81)]
    assert long_functions("@staticmethod\n" + _function("f", 80)) == []  # decorators are not counted


def test_the_check_sees_methods_and_nested_functions():
    source = "class C:\n" + _function("short", 3, "    ") + _function("long", 90, "    ")
    source += "def outer():\n" + _function("inner", 85, "    ") + "    return inner\n"
    assert long_functions(source) == [("C.long", 5, 90), ("outer", 95, 87), ("outer.inner", 96, 85)]


def test_the_walk_covers_every_product_folder_and_no_link():
    files = product_files()
    tops = {f.relative_to(ROOT).parts[0] for f in files}
    assert tops == set(PRODUCT_DIRS)
    assert len(files) == len(set(files))
    assert not [f for f in files if any(p.is_symlink() for p in [f, *f.parents] if ROOT in p.parents)]


def test_no_product_function_over_80_lines():
    over = [
        f"{path.relative_to(ROOT)}:{line} {name} ({lines} lines)"
        for path in product_files()
        for name, line, lines in long_functions(path.read_text(encoding="utf-8"))
    ]
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(over)
