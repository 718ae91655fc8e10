"""Fixtures and hooks that every test folder shares.

Markers (pyproject.toml): ``slow`` marks a test that takes more than ~20 s on a 2-core CPU, so the edit
loop can run ``make test-fast`` (``pytest -m "not slow"``); ``cuda`` marks a test that needs a CUDA GPU and
ONNX Runtime's CUDA provider, and is skipped here when either is missing; ``container`` marks a test that
builds and runs the image with podman, skipped unless ``XSCREEN_CONTAINER_TESTS=1`` (``make image-test``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.service_fixtures import DemoModel, demo_model


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


# The local stand-in for the Dockerfile's base (../shared/tools/podman-here.sh builds it; docs/deploy.md).
CONTAINER_BASE = os.environ.get("XSCREEN_BASE_IMAGE", "localhost/python:3.11-slim-bookworm")


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _skip_marked(items, "cuda", _cuda_missing)
    _skip_marked(items, "container", _container_missing)


@pytest.fixture(scope="session")
def demo(request: pytest.FixtureRequest) -> DemoModel:
    """A small LAcls detector overfitted to known synthetic scans (cached across runs in .pytest_cache)."""
    return demo_model(Path(request.config.cache.mkdir("xscreen-service")))
