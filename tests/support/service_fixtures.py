"""Service test helpers: weights that really detect, synthetic scans, and a real ``xscreen serve`` process.

Weights: a small LAcls detector trained here on two synthetic scans (overfitted to them: enough to prove
the service's decode -> convert -> model -> box scaling path end to end; ~30 s on 2 idle cores), cached in
pytest's cache folder keyed by the recipe and the scans' bytes. See ``demo_model`` for why not the
bundled demo weights.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import requests

REPO = Path(__file__).resolve().parents[2]
XSCREEN = str(Path(sys.executable).with_name("xscreen"))
API_KEY = "test-key-0123456789abcdef"
FALLBACK_SIZE = 192  # scan and model input size of the fallback-trained weights


@dataclass
class Scan:
    """A raw dual-energy scan from the synthetic scanner with its ground truth."""

    high: np.ndarray
    low: np.ndarray
    boxes: np.ndarray  # [K, 4] x1y1x2y2
    names: list[str] = field(default_factory=list)

    def png(self) -> tuple[bytes, bytes]:
        return tuple(cv2.imencode(".png", im)[1].tobytes() for im in (self.high, self.low))  # type: ignore

    def tiff(self) -> tuple[bytes, bytes]:
        import tifffile

        out = []
        for im in (self.high, self.low):
            buf = io.BytesIO()
            tifffile.imwrite(buf, im)
            out.append(buf.getvalue())
        return out[0], out[1]

    def npy(self) -> tuple[bytes, bytes]:
        out = []
        for im in (self.high, self.low):
            buf = io.BytesIO()
            np.save(buf, im)
            out.append(buf.getvalue())
        return out[0], out[1]

    def raw(self) -> tuple[bytes, bytes]:
        return self.high.astype("<u2").tobytes(), self.low.astype("<u2").tobytes()


def synthetic_scans(seeds, size: int, overlap_rate: float = 0.0, similar_rate: float = 0.0) -> list[Scan]:
    """Scans from the synthetic scanner (training.synth); by default objects apart so each one is visible
    (``xscreen synth``'s defaults are overlap_rate 0.3, similar_rate 0.2)."""
    from xscreen.training.synth.scene import make_scan

    scans = []
    for seed in seeds:
        s = make_scan(
            np.random.default_rng(seed), size, size, overlap_rate=overlap_rate, similar_rate=similar_rate
        )
        scans.append(
            Scan(
                s.high,
                s.low,
                np.array([o.box for o in s.objects], np.float32).reshape(-1, 4),
                [o.name for o in s.objects],
            )
        )
    return scans


def bundled_weights() -> Path:
    from xscreen.inference.settings import bundled_weights_path

    return bundled_weights_path()


def _fallback_key(scans: list[Scan]) -> str:
    """Cache key of the fallback weights: the recipe and the exact scans they are trained on (a cached file
    that no longer loads is retrained, see ``demo_model``)."""
    h = hashlib.sha256(f"v4 40 steps small_lacls size={FALLBACK_SIZE} adamw lr=2e-3".encode())
    for scan in scans:
        h.update(
            scan.high.tobytes() + scan.low.tobytes() + scan.boxes.tobytes() + "|".join(scan.names).encode()
        )
    return h.hexdigest()[:16]


def easy_scans(count: int, size: int, start_seed: int = 0, min_side: float = 28) -> list[Scan]:
    """The first synthetic scans (seeds start_seed, start_seed+1, ...) with at most two objects, each at
    least ``min_side`` px a side: what the fallback's minute of training can learn, and what any demo
    model should find."""
    chosen: list[Scan] = []
    seed = start_seed
    while len(chosen) < count and seed < start_seed + 500:
        scan = synthetic_scans([seed], size)[0]
        sides = np.concatenate([scan.boxes[:, 2] - scan.boxes[:, 0], scan.boxes[:, 3] - scan.boxes[:, 1]])
        if 1 <= len(scan.names) <= 2 and sides.min() >= min_side:
            chosen.append(scan)
        seed += 1
    return chosen


def fallback_scans(count: int = 2) -> list[Scan]:
    return easy_scans(count, FALLBACK_SIZE, 0, 28)


def train_fallback_weights(path: Path, scans: list[Scan], steps: int = 40) -> str:
    """Overfit a small LAcls detector (ResNet-18, 64-channel FPN) to ``scans`` for a fixed number of AdamW
    steps (deterministic: the same weights every time; ~30 s on 2 idle cores); save with save_weights."""
    import torch

    from xscreen.model import build_detector, load_config, save_weights
    from xscreen.model.classes import CLASS_NAMES
    from xscreen.scans import convert_scan

    torch.manual_seed(0)
    cfg = load_config("small_lacls").with_overrides(
        name="service_test_lacls",
        min_size=FALLBACK_SIZE,
        max_size=FALLBACK_SIZE,
        fpn_channels=64,
        stacked_convs=1,
    )
    model = build_detector(cfg)
    model.train()
    images = [torch.from_numpy(convert_scan(s.high, s.low).transpose(2, 0, 1).copy()) for s in scans]
    targets = [
        {"boxes": torch.from_numpy(s.boxes), "labels": torch.tensor([CLASS_NAMES.index(n) for n in s.names])}
        for s in scans
    ]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return save_weights(model, path, metadata={"name": "service-test-lacls", "version": "test"})


@dataclass
class DemoModel:
    weights: Path
    scans: list[Scan]  # scans on which the weights are expected to find the objects
    score_threshold: float


_DEMO: DemoModel | None = None


def demo_model(cache_dir: Path) -> DemoModel:
    """Weights that detect the objects of known scans: a small LAcls detector overfitted to them (cached).

    Not the bundled demo weights for these mechanics tests: those (model/weights/MODEL_CARD.md) miss some
    objects and raise some false alarms, and a test of the service's mechanics needs exact answers.
    What the bundled file finds as the service's default is checked in tests/service/test_bundled.py.
    """
    global _DEMO
    if _DEMO is not None:
        return _DEMO
    scans = fallback_scans()
    path = cache_dir / f"service-test-{_fallback_key(scans)}.safetensors"
    # pytest-xdist workers share the cache folder: one trains, the others wait on the lock and load
    with open(cache_dir / "service-test.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            from xscreen.model.weights import WeightsError, load_weights

            try:
                load_weights(path)
            except WeightsError:
                path.unlink()
        if not path.is_file():
            part = path.with_suffix(f".{os.getpid()}.part")
            train_fallback_weights(part, scans)
            part.replace(path)
    _DEMO = DemoModel(path, scans, 0.1)
    return _DEMO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of [N,4] and [M,4] x1y1x2y2 boxes."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def matched(detections: list[dict], scan) -> list[bool]:
    """For each ground-truth object: is there a detection of its class with IoU >= 0.5?"""
    found = []
    for box, name in zip(scan.boxes, scan.names, strict=True):
        same = [d for d in detections if d["class_name"] == name]
        boxes = np.array([[d["box"][k] for k in ("x1", "y1", "x2", "y2")] for d in same]).reshape(-1, 4)
        found.append(bool(len(same)) and float(box_iou(box[None], boxes).max()) >= 0.5)
    return found


class ServiceProcess:
    """``xscreen serve`` in a subprocess on 127.0.0.1:<free port>, configured by XSCREEN_* variables."""

    def __init__(self, log_path: Path, prefix: tuple[str, ...] = (), **settings: object):
        self.port = free_port()
        self.log_path = log_path
        self.prefix = prefix  # a command that execs the server, e.g. setpriv (tests/support/unreadable.py)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("XSCREEN_")}
        self.env.update({"XSCREEN_HOST": "127.0.0.1", "XSCREEN_PORT": str(self.port)})
        self.env.update({f"XSCREEN_{k.upper()}": str(v) for k, v in settings.items()})
        self.env["OMP_NUM_THREADS"] = self.env.get("OMP_NUM_THREADS", "2")
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*self.prefix, XSCREEN, "serve"], env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> ServiceProcess:
        assert self.proc is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"xscreen serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"xscreen serve not ready after {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


def post_scan(
    url: str,
    high: bytes,
    low: bytes,
    *,
    key: str | None = API_KEY,
    path: str = "/detect",
    timeout: float = 60.0,
    headers: dict[str, str] | None = None,
    **fields,
) -> requests.Response:
    headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    files = {
        "high": ("high.bin", high, "application/octet-stream"),
        "low": ("low.bin", low, "application/octet-stream"),
    }
    data = {k: str(v) for k, v in fields.items()}
    return requests.post(url + path, files=files, data=data, headers=headers, timeout=timeout)


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class InThreadServer:
    """The service app on a real uvicorn server in a thread of the test process (no extra torch import)."""

    def __init__(self, **settings: object):
        import uvicorn

        from xscreen.service.app import create_app
        from xscreen.service.settings import load_settings

        self.port = free_port()
        self.settings = load_settings(host="127.0.0.1", port=self.port, **settings)
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(self.settings), host="127.0.0.1", port=self.port, log_config=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InThreadServer:
        self.thread.start()
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            if not self.thread.is_alive():
                break
            time.sleep(0.1)
        raise RuntimeError("in-thread server did not become ready")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)
