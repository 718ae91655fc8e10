"""Bags for the scan store tests: deterministic uint16 views, answers with detections, disk usage."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from xscreen.store import ModelIdentity, NewBag, View

REPO = Path(__file__).resolve().parents[2]
MODEL = ModelIdentity("xscreen-small-lacls", "0.4.0", "c3" * 32)
T0 = datetime.datetime(2030, 1, 1, 8, 0, tzinfo=datetime.UTC)


def views(seed: int, shapes=((40, 56),)) -> list[View]:
    """Views of random uint16 pixels over the whole range (0 and 65535 included)."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in shapes:
        high = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        low = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        high[0, 0], low[0, 0], high[-1, -1], low[-1, -1] = 0, 65535, 65535, 0
        out.append(View(high=high, low=low))
    return out


def answer(detections=(("knife", 0.91), ("tin", 0.42)), threshold: float = 0.5) -> dict:
    """A detect answer (one view) with these (class, score) detections, boxes inside 40 x 56 pixels."""
    return {
        "scan_id": "s",
        "score_threshold": threshold,
        "detections": [
            {"class_name": name, "score": score, "box": {"x1": 2 + i, "y1": 3, "x2": 20 + i, "y2": 30}}
            for i, (name, score) in enumerate(detections)
        ],
    }


def bag(
    request_id: str,
    *,
    minutes: float = 0,
    seed: int = 0,
    shapes=((40, 56),),
    detections=(("knife", 0.91), ("tin", 0.42)),
    source: str = "/detect key site-a",
) -> NewBag:
    """A bag at T0 + ``minutes``; alarm and classes as the answer's threshold (0.5) makes them."""
    alarming = [(n, s) for n, s in detections if s >= 0.5]
    return NewBag(
        request_id=request_id,
        views=views(seed, shapes),
        answer=answer(detections),
        model=MODEL,
        source=source,
        alarm=bool(alarming),
        classes=sorted({n for n, _ in alarming}),
        top_score=max((s for _, s in detections), default=None),
        time=T0 + datetime.timedelta(minutes=minutes),
    )


def disk_bytes(folder: Path) -> int:
    """Bytes the tree under ``folder`` takes on disk (allocated blocks, as du counts), folders included."""
    total = 0
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def bag_folders(store_dir: Path) -> list[str]:
    """Names in STORE/bags (bag folders and any temporary ones)."""
    return sorted(os.listdir(store_dir / "bags"))


def run_child(spec: dict, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """tests/support/store_child.py in a new process (``prefix``: e.g. unshare or setpriv before it)."""
    cmd = [*prefix, sys.executable, "-m", "tests.support.store_child", json.dumps(spec)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def child_results(proc: subprocess.Popen, timeout: float = 120) -> list[dict]:
    """The child's JSON lines, once it has ended with status 0."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]
