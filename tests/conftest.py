"""Fixtures and hooks that every test folder shares.

Markers (pyproject.toml): ``slow`` marks a test that takes more than ~20 s on a 2-core CPU, so the edit
loop can run ``make test-fast`` (``pytest -m "not slow"``); ``cuda`` marks a test that needs a CUDA GPU and
ONNX Runtime's CUDA provider, and is skipped here when either is missing.
"""

from __future__ import annotations

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda_items:
        return
    reason = _cuda_missing()
    if reason:
        for item in cuda_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def demo(request: pytest.FixtureRequest) -> DemoModel:
    """A small LAcls detector overfitted to known synthetic scans (cached across runs in .pytest_cache)."""
    return demo_model(Path(request.config.cache.mkdir("xscreen-service")))
