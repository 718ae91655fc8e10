"""tools/container_tests_needed.sh, which decides whether .ci/run builds and runs the image: on a real git
repository, the container tests run unless the image's inputs hash to the value recorded in
.ci/container-inputs.sha256, and `--record` writes that value (docs/deploy.md "Where the container tests
run")."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GATE = "tools/container_tests_needed.sh"
RECORD = ".ci/container-inputs.sha256"
HASH = "[0-9a-f]{64}"
INPUTS = ("Dockerfile", "deploy/x.sh", "docker-compose.yml", "pyproject.toml", "requirements/service.txt")
SAY = "container tests: "


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def gate(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(repo / GATE), *args], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    )


def commit(repo: Path, path: str, text: str) -> None:
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text(text)
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", f"change {path}")


def skipped(proc: subprocess.CompletedProcess, verified: str) -> bool:
    return proc.returncode == 1 and proc.stdout == f"{SAY}skipped (inputs as verified at {verified})\n"


@pytest.fixture
def repo(tmp_path) -> Path:
    """A repository with the gate, the image's inputs and some other files, all committed."""
    repo = tmp_path / "clone"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "tools").mkdir()
    shutil.copy(REPO / GATE, repo / GATE)
    files = {
        "Dockerfile": "FROM x\n",
        "docker-compose.yml": "services: {}\n",
        "deploy/x.sh": "echo x\n",
        "requirements/service.txt": "fastapi==1\n",
        "pyproject.toml": "[project]\n",
        "README.md": "words\n",
        "tests/test_a.py": "def test_a(): pass\n",
    }
    for path, text in files.items():
        commit(repo, path, text)
    return repo


def record(repo: Path) -> str:
    proc = gate(repo, "--record")
    assert proc.returncode == 0, proc
    recorded = (repo / RECORD).read_text()
    assert re.fullmatch(f"{HASH}\n", recorded)
    assert proc.stdout == f"{SAY}recorded inputs hash {recorded.strip()} in {RECORD} (commit it)\n"
    git(repo, "add", RECORD)
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "record")
    return recorded.strip()


def test_without_a_record_the_container_tests_run(repo):
    proc = gate(repo)
    assert proc.returncode == 0, proc
    assert re.fullmatch(f"{SAY}run \\(no record in {re.escape(RECORD)}; inputs hash {HASH}\\)\n", proc.stdout)


def test_the_hash_is_sha256_over_each_input_files_content_hash_and_path(repo):
    # INPUTS is in byte order of the paths
    lines = "".join(f"{hashlib.sha256((repo / path).read_bytes()).hexdigest()} {path}\n" for path in INPUTS)
    assert record(repo) == hashlib.sha256(lines.encode()).hexdigest()


def test_recorded_inputs_skip_and_a_change_to_any_input_runs(repo):
    verified = record(repo)
    assert skipped(gate(repo), verified)
    for path in INPUTS:
        before = (repo / path).read_text()
        commit(repo, path, before + "# changed\n")
        proc = gate(repo)
        assert proc.returncode == 0, (path, proc)
        changed = re.fullmatch(
            f"{SAY}run \\(inputs hash ({HASH}) differs from {verified} recorded in {re.escape(RECORD)}\\)\n",
            proc.stdout,
        )
        assert changed and changed[1] != verified, (path, proc.stdout)
        # the change undone: the inputs are again as verified
        commit(repo, path, before)
        assert skipped(gate(repo), verified), path


def test_a_new_or_deleted_input_file_runs(repo):
    verified = record(repo)
    commit(repo, "deploy/new.conf", "x\n")
    assert gate(repo).returncode == 0
    git(repo, "rm", "-q", "deploy/new.conf", "deploy/x.sh")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "delete")
    assert gate(repo).returncode == 0
    commit(repo, "deploy/x.sh", "echo x\n")
    assert skipped(gate(repo), verified)


def test_a_change_elsewhere_skips(repo):
    verified = record(repo)
    commit(repo, "README.md", "other words\n")
    commit(repo, "tests/test_b.py", "def test_b(): pass\n")
    commit(repo, "service/app.py", "code\n")
    assert skipped(gate(repo), verified)


def test_several_commits_since_the_record_run_when_any_changed_an_input(repo):
    """A stop that lands several commits, the last not touching the inputs, still runs them."""
    verified = record(repo)
    commit(repo, "Dockerfile", "FROM y\n")
    commit(repo, "README.md", "other words\n")
    assert gate(repo).returncode == 0
    assert record(repo) != verified
    assert skipped(gate(repo), (repo / RECORD).read_text().strip())


def test_a_stale_or_garbled_record_runs(repo):
    record(repo)
    (repo / RECORD).write_text("not a hash\n")
    proc = gate(repo)
    assert proc.returncode == 0 and "differs from not a hash recorded" in proc.stdout, proc


def test_a_record_written_before_git_add_matches_the_commit(repo):
    """A developer records after the container tests pass, with the changed inputs not yet committed."""
    (repo / "deploy/new.conf").write_text("x\n")
    (repo / "Dockerfile").write_text("FROM z\n")
    proc = gate(repo, "--record")
    assert proc.returncode == 0, proc
    verified = (repo / RECORD).read_text().strip()
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "inputs and record")
    assert skipped(gate(repo), verified)
    # what git ignores is not an input (build outputs under deploy/)
    commit(repo, ".gitignore", "deploy/*.tmp\n")
    (repo / "deploy/build.tmp").write_text("y\n")
    assert skipped(gate(repo), verified)


def test_outside_a_git_checkout_they_run_and_bad_arguments_are_refused(tmp_path, repo):
    bare = tmp_path / "export"
    (bare / "tools").mkdir(parents=True)
    shutil.copy(REPO / GATE, bare / GATE)
    proc = gate(bare)
    assert proc.returncode == 0 and proc.stdout.startswith(f"{SAY}run (the inputs cannot be hashed"), proc
    proc = gate(repo, "--recrod")
    assert proc.returncode == 2 and proc.stderr.endswith("usage: " + str(repo / GATE) + " [--record]\n"), proc
    assert not (repo / RECORD).exists()


def test_the_record_lies_outside_the_inputs_and_ci_runs_the_gate():
    assert not RECORD.startswith(
        ("Dockerfile", "docker-compose.yml", "deploy/", "requirements/", "pyproject")
    )
    ci = (REPO / ".ci/run").read_text()
    assert "tools/container_tests_needed.sh\n" in ci and "make container-record" in ci
    make = (REPO / "Makefile").read_text()
    assert "\ncontainer-record:\n\ttools/container_tests_needed.sh --record\n" in make
