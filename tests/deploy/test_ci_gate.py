"""tools/container_tests_needed.sh, which decides whether .ci/run builds and runs the image: on a real git
history, a change to the image's inputs since the last landed commit runs the container tests, any other
change skips them (docs/deploy.md "Where the container tests run")."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GATE = "tools/container_tests_needed.sh"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def gate(repo: Path, **env: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", **env}
    return subprocess.run(["sh", str(repo / GATE)], capture_output=True, text=True, env=env)


def commit(repo: Path, path: str, text: str) -> str:
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text(text)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", f"change {path}")
    return git(repo, "rev-parse", "HEAD").strip()


def test_container_tests_run_when_the_image_inputs_changed_since_the_last_landed_commit(tmp_path):
    repo = tmp_path / "clone"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "tools").mkdir()
    shutil.copy(REPO / GATE, repo / GATE)
    first = commit(repo, "Dockerfile", "FROM x\n")
    assert gate(repo).returncode == 0  # HEAD~1 does not exist: run
    commit(repo, "docs/deploy.md", "words\n")
    proc = gate(repo)
    assert proc.returncode == 1, proc
    assert proc.stdout.startswith("container tests: skipped (no change to Dockerfile docker-compose.yml")
    inputs = ("Dockerfile", "docker-compose.yml", "deploy/x.sh", "requirements/service.txt", "pyproject.toml")
    for path in inputs:
        commit(repo, path, f"{path} changed\n")
        proc = gate(repo)
        assert proc.returncode == 0, proc
        assert proc.stdout == f"container tests: run (changed since HEAD~1: {path})\n"
    commit(repo, "service/app.py", "code\n")
    assert gate(repo).returncode == 1
    # a stop that lands several commits names the main it started from
    proc = gate(repo, CI_SINCE=first)
    assert proc.returncode == 0 and "deploy/x.sh" in proc.stdout and "service/app.py" not in proc.stdout
