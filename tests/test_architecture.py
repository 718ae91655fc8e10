"""The package layout (pyproject.toml package-dir) and the import contracts ([tool.importlinter]) on it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
# folder -> the package it is installed as
FOLDERS = {
    "xscreen": "xscreen",
    "model": "xscreen.model",
    "training": "xscreen.training",
    "service": "xscreen.service",
}
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the venv's own view of the packages


def _lint(repo: Path, tree: Path | None = None) -> subprocess.CompletedProcess:
    """``tools/lint_imports.py`` of ``repo`` (this checkout or a copy of it), as `make test` runs it."""
    where = ["--tree", str(tree)] if tree else []
    script = repo / "tools" / "lint_imports.py"
    cmd = [sys.executable, str(script), *where, "--no-cache"]
    return subprocess.run(cmd, cwd=repo, env=ENV, capture_output=True, text=True)


def _py_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.py") if "__pycache__" not in p.parts]


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """What tools/lint_imports.py reads: pyproject.toml, the script and the four folders' .py files."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "tools", tmp_path / "tools", ignore=shutil.ignore_patterns("__pycache__"))

    def not_code(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n == "__pycache__" or not (n.endswith(".py") or Path(folder, n).is_dir())]

    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=not_code)
    return tmp_path


def test_contracts_hold_on_every_module_of_the_installed_layout(tmp_path):
    proc = _lint(ROOT, tmp_path / "tree")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert f"Contracts: {len(contracts)} kept, 0 broken." in proc.stdout
    # every module of the four folders is in the graph, under xscreen/: none is left out of the lint
    analysed = int(proc.stdout.split("Analyzed ")[1].split(" files")[0])
    assert analysed == sum(len(_py_files(ROOT / folder)) for folder in FOLDERS) > 100
    tree = tmp_path / "tree" / "xscreen"
    assert (tree / "model" / "anchors.py").is_file() and (tree / "service" / "routes" / "detect.py").is_file()


DETECT_CONTRACT = "xscreen detect and render run without the service"
CLIENT_CONTRACT = "xscreen.client loads neither the service nor the model"


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("model/anchors.py", "import xscreen.training.dataset", "One-way layers"),
        ("service/metrics.py", "import xscreen.training.evaluate", "One-way layers"),
        ("training/dataset.py", "import xscreen.service.errors", "One-way layers"),
        ("service/routes/health.py", "import xscreen.commands.serve", "One-way layers"),
        ("xscreen/scans/formats.py", "import xscreen.model.classes", "One-way layers"),
        ("model/backbone.py", "from xscreen.model import weights", "No import cycles"),
        ("xscreen/commands/detect.py", "import xscreen.service.tdr", DETECT_CONTRACT),
        ("xscreen/inference/pipeline.py", "import xscreen.service.errors", DETECT_CONTRACT),
        ("xscreen/commands/render.py", "import xscreen.service.settings", DETECT_CONTRACT),
        ("xscreen/client.py", "import xscreen.inference.pipeline", CLIENT_CONTRACT),
    ],
)
def test_a_backward_import_or_a_cycle_breaks_a_contract(repo_copy, module, line, broken):
    """The import is added to the source folder; the lint run sees it through the package-dir mapping."""
    path = repo_copy / module
    path.write_text(path.read_text() + f"\n{line}  # added by the test\n")
    proc = _lint(repo_copy)
    assert proc.returncode == 1, proc.stdout
    broken_lines = [ln for ln in proc.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith(broken) for ln in broken_lines), proc.stdout


def test_plain_lint_imports_in_the_checkout_does_not_pass():
    """Run on the checkout itself, grimp finds no xscreen.model in xscreen/: it must fail, not pass."""
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.returncode != 0
    assert re.search(r"module xscreen\.(model|training|service) does not exist", proc.stdout + proc.stderr)


def test_every_subcommand_help_leaves_torch_unloaded():
    from xscreen.cli import SUBCOMMANDS

    for name in SUBCOMMANDS:
        code = (
            "import sys; from xscreen.cli import main\n"
            f"try:\n    main([{name!r}, '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0, f"xscreen {name} --help: {proc.stderr[-500:]}"
        assert "usage: xscreen" in proc.stdout


def test_package_dir_maps_the_top_level_folders_and_every_folder_is_a_package():
    assert SETUPTOOLS["package-dir"] == {
        "xscreen.model": "model",
        "xscreen.training": "training",
        "xscreen.service": "service",
    }
    folders = set()
    for folder, package in FOLDERS.items():
        for path in [ROOT / folder, *(ROOT / folder).rglob("*")]:
            assert not path.is_symlink(), path
            if path.is_dir() and path.name != "__pycache__":
                folders.add(".".join([package, *path.relative_to(ROOT / folder).parts]))
    # a folder missing from `packages` would be missing from the wheel and from the lint tree
    assert sorted(SETUPTOOLS["packages"]) == sorted(folders)


def test_the_git_index_holds_no_symlinks():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    index = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert index.stdout.count("\n") > 100
    assert [ln for ln in index.stdout.splitlines() if ln.startswith("120000")] == []


def test_bare_folder_names_refuse_to_import_even_from_the_repository_root():
    """pytest and `python -c` put the root on sys.path; the folders' __init__.py refuse the bare names."""
    probe = (
        "import importlib, xscreen.model.classes, xscreen.training.errors, xscreen.service.errors\n"
        "for name in ('model', 'training', 'service', 'model.classes', 'service.routes'):\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except ImportError as e:\n        print(type(e).__name__, e)\n"
        "    else:\n        raise SystemExit(name + ' imported')\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = [
        f"ImportError import xscreen.{name}, not {name}: {name}/ is the package xscreen.{name}"
        for name in ("model", "training", "service", "model", "service")
    ]
    assert proc.stdout.splitlines() == expected
    with pytest.raises(ImportError, match="import xscreen.model, not model"):
        __import__("model")  # this process: pytest's pythonpath has the root too
