"""Fixtures the service tests share, at session scope."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.service_fixtures import DemoModel, demo_model


@pytest.fixture(scope="session")
def demo(request: pytest.FixtureRequest) -> DemoModel:
    """A small LAcls detector overfitted to known synthetic scans (cached across runs in .pytest_cache)."""
    return demo_model(Path(request.config.cache.mkdir("xscreen-service")))
