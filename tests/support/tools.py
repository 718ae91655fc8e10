"""External command-line tools the deployment tests run (promtool, amtool, caddy, hadolint...)."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The local stand-in for the Dockerfile's base (../shared/tools/podman-here.sh builds it; docs/deploy.md).
CONTAINER_BASE = os.environ.get("XSCREEN_BASE_IMAGE", "localhost/python:3.11-slim-bookworm")


def tool(name: str, package: str) -> str:
    """The tool's path; under CI a missing tool fails the test (.ci/run installs it), elsewhere it skips."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found (Debian package {package}; .ci/run installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path
