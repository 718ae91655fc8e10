"""The import contracts (pyproject.toml [tool.importlinter]) hold, and a broken one is caught."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the xscreen package with the symlinked folders copied as real folders."""
    shutil.copytree(ROOT / "xscreen", tmp_path / "xscreen", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_contracts_hold_on_the_repository():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 2 kept, 0 broken." in proc.stdout


def test_copy_is_analysed_like_the_repository(tree):
    proc = _lint(tree)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = int(proc.stdout.split("Analyzed ")[1].split(" files")[0])
    assert files > 60  # model/, training/ and service/ are in the graph, not just xscreen/*.py


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("model/anchors.py", "import xscreen.training.dataset", "One-way layers"),
        ("service/metrics.py", "import xscreen.training.evaluate", "One-way layers"),
        ("training/dataset.py", "import xscreen.service.errors", "One-way layers"),
        ("scans/formats.py", "import xscreen.model.classes", "One-way layers"),
        ("model/backbone.py", "from xscreen.model import weights", "No import cycles"),
    ],
)
def test_a_backward_import_or_a_cycle_breaks_a_contract(tree, module, line, broken):
    path = tree / "xscreen" / module
    path.write_text(path.read_text() + f"\n{line}  # added by the test\n")
    proc = _lint(tree)
    assert proc.returncode == 1, proc.stdout
    assert "BROKEN" in proc.stdout
    broken_lines = [ln for ln in proc.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith(broken) for ln in broken_lines), proc.stdout


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


def test_no_generic_top_level_package_is_installed():
    import tomllib

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["xscreen*"]
    for name in ("model", "training", "service"):
        link = ROOT / "xscreen" / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve()


def test_a_fresh_install_has_xscreen_and_no_generic_names(tmp_path):
    """`pip install .` in a fresh venv outside the repo: xscreen.model imports, model does not."""
    wheels = tmp_path / "wheels"
    had_build_dir = (ROOT / "build").exists()
    try:
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(wheels)],
            capture_output=True,
            text=True,
        )
    finally:
        if not had_build_dir:  # setuptools builds in the source tree; leave the checkout as it was
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("xscreen-*.whl")
    import zipfile

    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"xscreen", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # pip's own install of the wheel, without its dependencies: the namespace is what is checked here
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    probe = (
        "import importlib, sys\n"
        "import xscreen.cli, xscreen.model, xscreen.model.classes\n"
        "assert 'torch' not in sys.modules\n"
        "for name in ('model', 'training', 'service'):\n"
        "    try:\n        importlib.import_module(name)\n    except ModuleNotFoundError:\n        continue\n"
        "    raise SystemExit(f'{name} is importable')\n"
        "print(xscreen.model.__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the venv's own site-packages
    proc = subprocess.run([str(py), "-c", probe], cwd=outside, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(site)
