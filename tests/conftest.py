"""Hooks that every test folder shares (the folders' own conftest.py files hold their fixtures).

Markers (pyproject.toml): ``slow`` marks a test that takes more than ~20 s on a 2-core CPU (or a module
whose tests share such a fixture), so the edit loop can run ``make test-fast`` (``pytest -m "not slow"``);
``cuda`` marks a test that needs a CUDA GPU and ONNX Runtime's CUDA provider, and is skipped here when
either is missing; ``container`` marks a test that builds and runs the image with podman, skipped unless
``XSCREEN_CONTAINER_TESTS=1`` (``make image-test``).

``make test`` runs the suite on two pytest-xdist workers (``-n 2 --dist loadfile``): each test module runs
on one worker, so a module's fixtures (servers, exports) start once. Each worker gets its share of the
cores for torch's threads, and modules with slow tests are handed out first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.service_fixtures import DemoModel, demo_model
from tests.support.tools import CONTAINER_BASE


def _cuda_missing() -> str | None:
    """Why the ``cuda`` tests cannot run on this machine, or None when they can."""
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU (torch.cuda.is_available() is False)"
    try:
        import onnxruntime
    except ImportError:
        return "needs onnxruntime-gpu"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "needs ONNX Runtime's CUDAExecutionProvider"
    return None


def _container_missing() -> str | None:
    """Why the ``container`` tests do not run: not asked for (they build a 7 GB image), or, when asked
    for, no podman or no base image (a UsageError then: an opt-in that runs nothing must not pass)."""
    if os.environ.get("XSCREEN_CONTAINER_TESTS") != "1":
        return "builds and runs the image: XSCREEN_CONTAINER_TESTS=1 (make image-test) runs it"
    setup = "run `bash ../shared/tools/podman-here.sh` first (docs/deploy.md)"
    if shutil.which("podman") is None:
        raise pytest.UsageError(f"XSCREEN_CONTAINER_TESTS=1 but podman is not installed: {setup}")
    if subprocess.run(["podman", "image", "exists", CONTAINER_BASE], check=False).returncode != 0:
        raise pytest.UsageError(
            f"XSCREEN_CONTAINER_TESTS=1 but the base {CONTAINER_BASE} is missing: {setup}"
        )
    return None


def _skip_marked(items: list[pytest.Item], marker: str, why) -> None:
    marked = [item for item in items if item.get_closest_marker(marker)]
    reason = why() if marked else None
    for item in marked if reason else ():
        item.add_marker(pytest.mark.skip(reason=reason))


def pytest_configure(config: pytest.Config) -> None:
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        # A worker gets its share of the cores, for its own torch and (unless set) the processes it
        # starts: OpenMP threads that outnumber the cores spin-wait on each other, which made one
        # training loop here ~10x slower on a busy 2-core machine.
        threads = max(1, (os.cpu_count() or 1) // int(workers))
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        import torch

        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # modules with slow tests first, so that the workers end together instead of one finishing a
        # minute-long module alone (a stable sort: the same order on every worker)
        slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
        items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow)
    _skip_marked(items, "cuda", _cuda_missing)
    _skip_marked(items, "container", _container_missing)


@pytest.fixture(scope="session")
def demo(request: pytest.FixtureRequest) -> DemoModel:
    """A small LAcls detector overfitted to known synthetic scans (cached across runs in .pytest_cache);
    the service and store tests share it."""
    return demo_model(Path(request.config.cache.mkdir("xscreen-service")))
