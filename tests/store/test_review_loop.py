"""The site's reviews back into training, at toy size: scans answered by a real service, kept in the store,
judged, exported, the served weights fine-tuned, old and new evaluated, the new released and switched to.

The commands are docs/training.md's recipe, word for word, with toy-size flags appended (argparse takes
the last value of a flag). The store fills from real requests (each bag one POST /detect, its views
repeated parts; the service keeps it under its request id), and a signed-in reviewer posts the verdicts
through the console's own endpoints (with its CSRF token).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
import torch

from tests.support.console import REVIEWER_KEY, csrf_of, post_bag, sign_in, wait_stored
from tests.support.review_recipe import review_recipe
from tests.support.service_fixtures import API_KEY, InThreadServer, box_iou, bundled_weights, synthetic_scans
from xscreen.cli import main
from xscreen.model.classes import CLCXRAY_CLASSES
from xscreen.service.auth import key_id
from xscreen.store import ScanStore, StoreConfig

ADMIN_KEY = "admin-key-0123456789abcdef"
SIZE = 320  # the bundled weights' input size
# request id -> synthetic scans (seeds) of its views; judged fully but for lane1-0006 (one detection left)
# and lane1-0007 (never looked at)
BAGS = {
    "lane1-0001": [0], "lane1-0002": [1], "lane1-0003": [2, 3], "lane1-0004": [4], "lane1-0005": [5],
    "lane1-0006": [6], "lane1-0007": [7],
}  # fmt: skip
# --seed 7 with --holdout 0.2 --val 0.2 puts one bag in test, one in val and four images in train
# (pinned: the split is a fixed function of seed and request id)
SPLITS = {"lane1-0001": "test", "lane1-0005": "val", "lane1-0002": "train", "lane1-0003": "train",
          "lane1-0004": "train"}  # fmt: skip
TOY = {
    "export-reviews": ["--holdout", "0.2", "--val", "0.2", "--seed", "7"],
    "train": [
        "--epochs",
        "1",
        "--max-iters",
        "2",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--warmup-iters",
        "1",
        "--no-progress",
    ],  # fmt: skip
    "eval": ["--batch-size", "2"],
    "release": [],
}
CATEGORY = {c.name: c.category_id for c in CLCXRAY_CLASSES}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tests/training/test_cli.py: OpenMP spin-waiting on a shared 2-core machine
    yield
    torch.set_num_threads(before)


def _detect(url: str, request_id: str, scans: list) -> list[dict]:
    """The bag's views in one POST /detect; each view's answer (one view's answer is the whole body)."""
    r = post_bag(url, scans, request_id=request_id)
    assert r.headers["x-request-id"] == request_id
    body = r.json()
    return body.get("views", [body])


class Reviewer:
    """A reviewer signed in to the console, posting verdicts through its endpoints."""

    def __init__(self, url: str):
        self.url, self.session = url, sign_in(url, REVIEWER_KEY)
        self.headers = {"X-CSRF-Token": csrf_of(self.session, url), "Accept": "application/json"}

    def post(self, request_id: str, what: str, **form) -> None:
        r = self.session.post(
            f"{self.url}/console/bags/{request_id}/{what}", data=form, headers=self.headers, timeout=30
        )
        assert r.status_code == 200, r.text[:300]


def _review(rev: Reviewer, request_id: str, scans: list, answers: list[dict], leave: int = 0) -> dict:
    """A reviewer's eye: a detection matching an object of its class (IoU >= 0.5) is confirmed, any other
    a false alarm; objects no detection found are drawn. ``leave``: detections left unjudged (the last).
    Returns {"truth": [...], "false_alarms": [...]} as (image file, category id, x1, y1, x2, y2)."""
    out: dict[str, list] = {"truth": [], "false_alarms": []}
    for v, (scan, answer) in enumerate(zip(scans, answers, strict=True)):
        image = f"{request_id}_v{v}.png"
        claimed: set[int] = set()
        detections = answer["detections"][: len(answer["detections"]) - leave]
        for i, d in enumerate(detections):
            box = np.array([[d["box"][k] for k in ("x1", "y1", "x2", "y2")]])
            ious = box_iou(box, scan.boxes)[0] if len(scan.boxes) else np.zeros(0)
            match = [j for j in np.argsort(-ious) if ious[j] >= 0.5 and scan.names[j] == d["class_name"]]
            match = [j for j in match if j not in claimed][:1]
            claimed.update(match)
            rev.post(
                request_id, "verdicts", view=v, detection=i, verdict="confirm" if match else "false_alarm"
            )
            key = "truth" if match else "false_alarms"
            out[key].append((image, CATEGORY[d["class_name"]], *box[0].tolist()))
        for j, (box, name) in enumerate(zip(scan.boxes, scan.names, strict=True)):
            if j not in claimed:
                x1, y1, x2, y2 = box.tolist()
                rev.post(request_id, "missed", view=v, x1=x1, y1=y1, x2=x2, y2=y2, class_name=name)
                out["truth"].append((image, CATEGORY[name], *box.tolist()))
    return out


def _exported(data: Path, name: str) -> list[tuple]:
    coco = json.loads((data / "annotations" / f"{name}.json").read_text())
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    out = []
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        out.append(_rounded((files[a["image_id"]], a["category_id"], x, y, x + w, y + h)))
    return out


def _rounded(box: tuple) -> tuple:
    return (*box[:2], *(round(c, 3) for c in box[2:]))


def _run(command: str, capsys) -> str:
    argv = [os.path.expandvars(a) for a in shlex.split(command)][1:]
    assert main([*argv, *TOY[argv[0]]]) == 0, capsys.readouterr().err[-3000:]
    return capsys.readouterr().out


def _check_eval(out: str, data: Path, folder: Path) -> dict:
    """eval printed pycocotools' own numbers: COCOeval run here on its detections gives the same mAP."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    metrics = json.loads((folder / "metrics.json").read_text())
    assert re.search(r"\| +mAP \| +AP50 \|", out) and f"| {100 * metrics['mAP']:.1f} |" in out.replace(
        "  ", " "
    )
    gt = COCO(str(data / "annotations" / "test.json"))
    detections = json.loads((folder / "detections.json").read_text())
    ev = COCOeval(gt, gt.loadRes(detections), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert metrics["mAP"] == pytest.approx(ev.stats[0]) and metrics["AP50"] == pytest.approx(ev.stats[1])
    assert metrics["num_gt"] == len(gt.getAnnIds()) > 0
    return metrics


@pytest.mark.slow  # a service, 8 scans, two training iterations, two evaluations, a model switch
@pytest.mark.timeout(300)
def test_reviews_train_evaluate_release_and_switch(tmp_path, monkeypatch, capsys):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(bundled_weights(), models / "lacls-2026-11.safetensors")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XSCREEN_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("XSCREEN_MODELS_DIR", str(models))
    monkeypatch.delenv("XSCREEN_STORE_DATABASE_URL", raising=False)
    scans = synthetic_scans(range(8), SIZE)
    expected: dict[str, list] = {"truth": [], "false_alarms": []}
    with InThreadServer(
        models_dir=models,
        model_name="lacls-2026-11",
        api_keys=API_KEY,
        admin_keys=ADMIN_KEY,
        reviewer_keys=REVIEWER_KEY,
        store_dir=tmp_path / "store",
        device="cpu",
    ) as srv:
        rev = Reviewer(srv.url)
        old_sha = requests.get(srv.url + "/model", headers={"Authorization": f"Bearer {API_KEY}"}).json()[
            "sha256"
        ]
        for request_id, seeds in BAGS.items():
            views = [scans[s] for s in seeds]
            answers = _detect(srv.url, request_id, views)
            wait_stored(rev.session, srv.url, request_id)
            if request_id == "lane1-0007":
                continue
            judged = _review(rev, request_id, views, answers, leave=int(request_id == "lane1-0006"))
            if request_id != "lane1-0006":
                for key in expected:
                    expected[key] += judged[key]
        store = ScanStore(StoreConfig(tmp_path / "store"))
        assert len(store.get_bag("lane1-0006").detections) > 1  # one judged, one left
        reviewers = {d.verdict.reviewer for d in store.get_bag("lane1-0001").detections if d.verdict}
        assert reviewers == {key_id(REVIEWER_KEY)}  # recorded by the console, as the signed-in reviewer
        store.close()
        commands = review_recipe()
        assert [c.split()[1] if c.startswith("xscreen") else c.split()[0] for c in commands] == [
            "export-reviews", "train", "eval", "eval", "release", "curl",
        ]  # fmt: skip

        # 1. export: ground truth = confirmed + drawn, false alarms apart, the views pixel for pixel
        printed = _run(commands[0], capsys)
        assert "exported 5 reviewed bags (6 images)" in printed and "left out 1 bags" in printed
        data = tmp_path / "site-reviews"
        got = {s: _exported(data, s) for s in ("train", "val", "test")}
        fas = {s: _exported(data, f"{s}_false_alarms") for s in ("train", "val", "test")}
        split_of = {
            im: SPLITS[im.rsplit("_v", 1)[0]] for im, *_ in expected["truth"] + expected["false_alarms"]
        }
        for key, found in (("truth", got), ("false_alarms", fas)):
            want = {s: sorted(_rounded(b) for b in expected[key] if split_of[b[0]] == s) for s in found}
            assert {s: sorted(found[s]) for s in found} == want, key
        counts = {k: len(expected[k]) for k in expected}
        assert (
            counts["truth"] >= 5 and counts["false_alarms"] >= 3
        )  # real answers: hits, misses, false alarms
        manifest = json.loads((data / "export.json").read_text())
        assert manifest["left_out"]["not_fully_reviewed"] == ["lane1-0006"]
        assert {k: sum(c[k] for c in manifest["counts"].values()) for k in ("confirmed", "missed")}[
            "missed"
        ] >= 1
        for request_id, seeds in BAGS.items():
            if request_id in SPLITS:
                for v, s in enumerate(seeds):
                    stem = data / "raw" / SPLITS[request_id] / f"{request_id}_v{v}"
                    for part, pixels in (("high", scans[s].high), ("low", scans[s].low)):
                        image = cv2.imread(f"{stem}_{part}.png", cv2.IMREAD_UNCHANGED)
                        assert image.dtype == np.uint16 and np.array_equal(image, pixels)

        # 2. fine-tune the served weights; 3. old and new on the held-out reviews
        printed = _run(commands[1], capsys)
        assert "trained 2 iterations (1 epochs)" in printed
        run_meta = json.loads((tmp_path / "runs" / "site-2026-12" / "run.json").read_text())
        assert run_meta["init_weights"]["sha256"] == old_sha
        old = _check_eval(_run(commands[2], capsys), data, tmp_path / "eval" / "old")
        new = _check_eval(_run(commands[3], capsys), data, tmp_path / "eval" / "new")
        assert old["num_images"] == new["num_images"] == 1 and old["num_gt"] == new["num_gt"]

        # 4. release into the models folder and switch the running service to it
        printed = _run(commands[4], capsys)
        new_sha = re.search(r"sha256 of the tensors: ([0-9a-f]{64})", printed).group(1)
        curl = commands[5]
        assert (
            "-X POST" in curl
            and "Authorization: Bearer $XSCREEN_ADMIN_KEY" in curl
            and "/admin/model" in curl
        )
        body = json.loads(
            shlex.split(curl)[shlex.split(curl).index("-d") + 1].replace("SHA256_RELEASE_PRINTED", new_sha)
        )
        r = requests.post(
            srv.url + "/admin/model", json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120
        )
        assert r.status_code == 200 and r.json()["result"] == "switched", r.text
        (answer,) = _detect(srv.url, "lane1-0008", [scans[0]])
        assert answer["model"]["sha256"] == new_sha != old_sha and answer["model"]["name"] == "lacls-2026-12"
