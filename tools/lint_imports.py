"""Run lint-imports on the package as installed: pyproject.toml's packages copied into build/lint-imports.

grimp finds a package's modules by walking its folder, and three of xscreen's packages live outside
xscreen/: package-dir maps xscreen.model, xscreen.training and xscreen.service onto the top-level
folders model/, training/ and service/ (pyproject.toml [tool.setuptools], docs/architecture.md). This
script copies the .py files of every listed package to the place the wheel gives them, then runs
lint-imports there with the repository's contracts. `make lint` and `make test` call it.

    python tools/lint_imports.py [--tree DIR] [lint-imports options, e.g. --verbose]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = ".lint-imports-tree"


def package_folder(package: str, package_dir: dict[str, str]) -> Path:
    """The folder (relative to the repository) that setuptools reads ``package`` from.

    The longest mapped prefix of the dotted name wins, as in setuptools' own lookup.
    """
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in package_dir:
            return Path(package_dir[prefix], *parts[n:])
    return Path(package_dir.get("", "."), *parts)


def build_tree(repo: Path, tree: Path) -> int:
    """Copy each package's modules from ``repo`` into ``tree`` under its dotted name; the module count.

    ``tree`` also gets the repository's pyproject.toml, where lint-imports finds the contracts.
    """
    config = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir = config.get("package-dir", {})
    if tree.exists():
        if any(tree.iterdir()) and not (tree / MARKER).exists():
            raise SystemExit(f"{tree} is not a tree this script built; not replacing it")
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    (tree / MARKER).write_text("built by tools/lint_imports.py; replaced at every run\n")
    count = 0
    for package in config["packages"]:
        modules = sorted((repo / package_folder(package, package_dir)).glob("*.py"))
        out = tree.joinpath(*package.split("."))
        for module in modules:
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy2(module, out / module.name)
        count += len(modules)
    shutil.copy2(repo / "pyproject.toml", tree / "pyproject.toml")  # the contracts, read from the cwd
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--tree", type=Path, default=REPO / "build" / "lint-imports", help="where to build")
    args, lint_args = parser.parse_known_args(argv)
    tree = args.tree.resolve()
    count = build_tree(REPO, tree)
    print(f"{count} modules of pyproject.toml's packages copied to {tree}", flush=True)
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tree)}  # grimp finds xscreen here, not in the checkout
    return subprocess.run([str(lint), *lint_args], cwd=tree, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
