"""The image, built and run with podman on the local stand-in base (docs/deploy.md "The image, tested"):
ready in time, the same detections as ``xscreen detect`` here, keys, the service user, a fresh state
volume it can write, draining on SIGTERM, ``pip check``, the weights once, the size report, and the
message for a model file the service user may not read.

``make image-test`` runs these (XSCREEN_CONTAINER_TESTS=1, tests/conftest.py); the first build downloads
the lock (3.2 GB of wheels), a rebuild after a code change takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from pathlib import Path

import pytest
import requests

from tests.support.service_fixtures import free_port, metric_value, post_scan
from tests.support.tools import CONTAINER_BASE

pytestmark = [pytest.mark.container, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
TAG = os.environ.get("XSCREEN_IMAGE_TAG", "localhost/xscreen:dev")
XSCREEN = str(Path(sys.executable).with_name("xscreen"))
EXAMPLES = REPO / "examples"
KEY, ADMIN_KEY = "image-test-key-0123456789", "image-test-admin-0123456789"
MODEL = "xscreen-small-lacls-0.4.0"  # the compose site's first model (deploy/models/README.md)
READY_LIMIT_S = 60.0


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


# what the Dockerfile's wheel stage copies (less .dockerignore's __pycache__ and *.pyc)
WHEEL_SOURCES = ("pyproject.toml", "README.md", "xscreen", "model", "training", "service")


def source_digest() -> str:
    """sha256 over the paths and bytes of the wheel stage's sources."""
    digest = hashlib.sha256()
    for name in WHEEL_SOURCES:
        top = REPO / name
        for path in sorted([top] if top.is_file() else top.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                digest.update(f"{path.relative_to(REPO)}\0".encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def image() -> str:
    """Build the Dockerfile as it is, only the base swapped by its build argument; XSCREEN_SOURCE_DIGEST
    makes podman 4 rebuild the project's layer after a code change (the Dockerfile says why)."""
    t0 = time.monotonic()
    podman(
        "build", "--format", "docker", "--network", "host", "--build-arg", f"BASE_IMAGE={CONTAINER_BASE}",
        "--build-arg", f"XSCREEN_SOURCE_DIGEST={source_digest()}", "-t", TAG, str(REPO), timeout=3000,
    )  # fmt: skip
    print(f"\nimage: {TAG} built in {time.monotonic() - t0:.0f} s on {CONTAINER_BASE}")
    return TAG


def test_the_image_holds_this_checkouts_code(image):
    """Every Python file of the installed package equals the checkout's (a stale layer would not)."""
    package_dir = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    folders = {"xscreen": "xscreen", **{p.replace(".", "/"): f for p, f in package_dir.items()}}
    here = {
        f"{package}/{path.relative_to(REPO / folder)}": hashlib.sha256(path.read_bytes()).hexdigest()
        for package, folder in folders.items()
        for path in (REPO / folder).rglob("*.py")
    }
    code = (
        "import hashlib, json, pathlib, xscreen; root = pathlib.Path(xscreen.__file__).parent.parent; "
        "print(json.dumps({str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() "
        "for p in (root / 'xscreen').rglob('*.py')}))"
    )
    run = ["run", "--rm", "--no-healthcheck", "--entrypoint", "python", image, "-c", code]
    inside = json.loads(podman(*run).stdout)
    differ = sorted(k for k in here.keys() | inside.keys() if here.get(k) != inside.get(k))
    assert not differ and len(here) > 50, differ[:20]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, str]:
    """A models folder as a site fills it: the bundled model under its versioned name, and a copy as the
    next version to switch to."""
    from xscreen.inference.settings import bundled_weights_path
    from xscreen.model.weights import read_header

    folder = tmp_path_factory.mktemp("models")
    folder.chmod(0o755)
    raw = bundled_weights_path().read_bytes()
    for name in (MODEL, MODEL + "-next"):
        (folder / f"{name}.safetensors").write_bytes(raw)
        (folder / f"{name}.safetensors").chmod(0o444)
    return folder, read_header(folder / f"{MODEL}.safetensors")["sha256"]


class Container:
    """``podman run -d`` of the image on the host network with the compose detector's settings."""

    def __init__(self, image: str, models: Path, sha256: str, volume: str, **env: str):
        self.name = f"xscreen-image-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = {
            "PORT": str(self.port), "DEVICE": "cpu", "API_KEYS": KEY, "ADMIN_KEYS": ADMIN_KEY,
            "MODELS_DIR": "/models", "MODEL_NAME": MODEL, "WEIGHTS_SHA256": sha256,
            "MODEL_SELECTION_FILE": "/var/lib/xscreen/model-selection.json",
            "AUDIT_PATH": "/var/lib/xscreen/audit/audit.jsonl", "GRACEFUL_TIMEOUT_S": "30", **env,
        }  # fmt: skip
        flags = [f"-eXSCREEN_{k}={v}" for k, v in settings.items()]
        t0 = time.monotonic()
        podman(
            "run", "-d", "--name", self.name, "--network", "host", *flags,
            "-v", f"{models}:/models:ro", "-v", f"{volume}:/var/lib/xscreen", image,
        )  # fmt: skip
        self.started = t0

    def wait_ready(self) -> float:
        """Seconds from `podman run` to /readyz 200."""
        while time.monotonic() - self.started < READY_LIMIT_S:
            state = podman("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()
            assert state == "running", self.logs()
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - self.started
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready within {READY_LIMIT_S} s:\n{self.logs()}")

    def exec(self, *cmd: str) -> subprocess.CompletedProcess:
        return podman("exec", self.name, *cmd, check=False)

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)


@pytest.fixture
def volume():
    """A fresh named volume for /var/lib/xscreen, as compose's detector-state is on a new site."""
    name = f"xscreen-image-test-state-{uuid.uuid4().hex[:8]}"
    podman("volume", "create", name)
    yield name
    podman("volume", "rm", "-f", name, check=False)


def scan_pair() -> tuple[bytes, bytes]:
    return (EXAMPLES / "bag_high.png").read_bytes(), (EXAMPLES / "bag_low.png").read_bytes()


def venv_detections() -> list[dict]:
    """`xscreen detect --json` on the example bag in this checkout's environment."""
    proc = subprocess.run(
        [XSCREEN, "detect", "--json", "--device", "cpu", "--high", str(EXAMPLES / "bag_high.png"),
         "--low", str(EXAMPLES / "bag_low.png")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(proc.stdout)["detections"]


def assert_same_detections(got: list[dict], want: list[dict]) -> None:
    assert [d["class_name"] for d in got] == [d["class_name"] for d in want] and want
    for g, w in zip(got, want, strict=True):
        assert abs(g["score"] - w["score"]) < 1e-4, (g, w)
        assert all(abs(g["box"][k] - w["box"][k]) < 0.05 for k in w["box"]), (g, w)


def test_the_image_serves_like_the_venv_writes_its_volume_and_drains(image, models, volume):
    folder, sha256 = models
    box = Container(image, folder, sha256, volume)
    try:
        ready_s = box.wait_ready()
        print(f"image: ready {ready_s:.1f} s after podman run")
        assert podman("healthcheck", "run", box.name, check=False).returncode == 0  # the Dockerfile's check
        # PID 1 is the server, and it runs as the image's service user
        status = box.exec("cat", "/proc/1/status").stdout
        assert "\nUid:\t10001\t10001\t10001\t10001\n" in status, status
        assert "xscreen" in box.exec("cat", "/proc/1/cmdline").stdout
        high, low = scan_pair()
        assert post_scan(box.url, high, low, key=None).status_code == 401
        answer = post_scan(box.url, high, low, key=KEY)
        assert answer.status_code == 200, answer.text
        assert_same_detections(answer.json()["detections"], venv_detections())
        # a model switch persists the selection on the volume; every answered scan has an audit line
        switch = requests.post(
            box.url + "/admin/model", json={"name": MODEL + "-next", "sha256": sha256},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120,
        )  # fmt: skip
        assert switch.status_code == 200 and switch.json()["persisted"] is True, switch.text
        second = post_scan(box.url, high, low, key=KEY)
        assert second.status_code == 200, second.text
        state = Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip())
        assert json.loads((state / "model-selection.json").read_text())["name"] == MODEL + "-next"
        audit = [json.loads(line) for line in (state / "audit" / "audit.jsonl").read_text().splitlines()]
        assert [r["scan_id"] for r in audit] == [answer.json()["scan_id"], second.json()["scan_id"]]
        assert {r["model"]["sha256"] for r in audit} == {sha256}
        written = (state / "model-selection.json", state / "audit" / "audit.jsonl")
        assert {p.stat().st_uid for p in written} == {10001}
        assert_drains_on_sigterm(box)
    finally:
        box.remove()
    # the next container on the same volume serves the selected model
    again = Container(image, folder, sha256, volume)
    try:
        again.wait_ready()
        served = requests.get(again.url + "/model", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        assert served.json()["model_name"] == MODEL + "-next", served.text
    finally:
        again.remove()


def big_scan_pair() -> tuple[bytes, bytes]:
    """The example bag enlarged 6x (1536 x 1536): slow enough on a CPU that six scans are inside at once."""
    import cv2

    def big(path: Path) -> bytes:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        return cv2.imencode(".png", cv2.resize(img, None, fx=6, fy=6, interpolation=cv2.INTER_NEAREST))[
            1
        ].tobytes()

    return big(EXAMPLES / "bag_high.png"), big(EXAMPLES / "bag_low.png")


def assert_drains_on_sigterm(box: Container, clients: int = 6) -> None:
    """SIGTERM while ``clients`` scans are inside the service: every one is answered, exit status 0."""
    high, low = big_scan_pair()
    codes: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: codes.append(post_scan(box.url, high, low, key=KEY, timeout=120).status_code)
        )
        for _ in range(clients)
    ]
    for t in threads:
        t.start()
    end = time.monotonic() + 30
    in_flight = 0.0
    while time.monotonic() < end and in_flight < clients:
        text = requests.get(box.url + "/metrics", timeout=5).text
        in_flight = metric_value(text, "xscreen_in_flight_requests") - 1  # the gauge counts this request too
        time.sleep(0.05)
    assert in_flight == clients, f"only {in_flight} of {clients} scans got in before the stop"
    podman("kill", "--signal", "TERM", box.name)
    t0 = time.monotonic()
    for t in threads:
        t.join(120)
    exit_code = podman("wait", box.name, timeout=120).stdout.strip()
    took = time.monotonic() - t0
    print(f"image: SIGTERM with {clients} scans in flight: {codes}, exit {exit_code} {took:.1f} s later")
    assert codes == [200] * clients, (codes, box.logs()[-3000:])
    assert exit_code == "0", box.logs()[-3000:]
    assert "stopped by SIGTERM after finishing in-flight requests" in box.logs()


def test_pip_check_and_the_weights_once(image):
    check = podman("run", "--rm", "--no-healthcheck", "--entrypoint", "pip", image, "check", check=False)
    assert check.returncode == 0 and "No broken requirements found." in check.stdout, (
        check.stdout + check.stderr
    )
    found = podman(
        "run", "--rm", "--no-healthcheck", "--user", "0", "--entrypoint", "find", image,
        "/", "-xdev", "-name", "*.safetensors",
    ).stdout.split()  # fmt: skip
    assert len(found) == 1 and found[0].endswith(
        "/site-packages/xscreen/model/weights/xscreen-small-lacls.safetensors"
    )


def test_an_unreadable_model_file_names_the_service_uid(image, models, volume, tmp_path):
    """The site's mistake: a model copied in by root with mode 0600. The detector stops and says why."""
    folder, sha256 = models
    locked = tmp_path / "locked-models"
    locked.mkdir(mode=0o755)
    (locked / f"{MODEL}.safetensors").write_bytes((folder / f"{MODEL}.safetensors").read_bytes())
    (locked / f"{MODEL}.safetensors").chmod(0o600)
    box = Container(image, locked, sha256, volume)
    try:
        code = podman("wait", box.name, timeout=120).stdout.strip()
        said = (
            f"/models/{MODEL}.safetensors: permission denied: uid 10001 needs read access to it "
            f"(the file has owner uid {os.geteuid()}, mode 0600)"
        )
        assert code == "2" and said in box.logs(), box.logs()
    finally:
        box.remove()


def test_the_size_report_lists_the_layers_and_where_the_size_goes(image):
    out = subprocess.run(
        ["bash", str(REPO / "deploy" / "image-report.sh"), image], capture_output=True, text=True, check=True
    ).stdout
    print("\n" + out)
    total = float(out.split(": ", 1)[1].split(" GB")[0])
    assert 3 < total < 12, out  # torch with its CUDA wheels: several GB, not tens
    layers, inside = out.split("inside the image, MB (du -sm):")
    rows = {
        line.split()[-1]: int(line.split()[0]) for line in inside.splitlines() if line[:8].strip().isdigit()
    }
    assert rows["nvidia"] > 1000 and rows["torch"] > 500 and rows["triton"] > 100, out
    assert rows["/opt/venv"] > rows["nvidia"] + rows["torch"] + rows["triton"], out
    # the dependency layer (the lock) is the big one; the project's own layer is small
    sizes = dict((what[:40], size) for size, what in re.findall(r"^ +([\d.]+ [kMG]?B)  (.*)$", layers, re.M))
    lock = next(size for what, size in sizes.items() if what.startswith("--mount=type=cache"))
    project = next(size for what, size in sizes.items() if what.startswith("--mount=type=bind,from=wheel"))
    assert lock.endswith(" GB") and project.endswith(" MB") and sizes["USER 10001"] == "0 B", layers
