"""Operating threshold: the score a served model filters its detections with, picked on validation scans.

The detections of all classes are pooled and matched to the ground truth at IoU 0.5 by pycocotools
(``COCOeval.evaluateImg``: the same greedy matching, crowd handling and 100 detections per image and
class as the AP50 that ``training.evaluate`` reports). Sorted by score, each distinct score ``s`` is a
candidate threshold: keeping the detections with score >= ``s`` gives one precision/recall point.

Three rules choose among the candidates (``RULES``):

- ``best-f1`` (the default): the candidate with the highest F1 = 2PR / (P + R); among equal F1 the
  lowest threshold (more recall). It always exists once one detection is right, and it balances missed
  threats against false alarms without a number to tune, so it suits any model, weak or strong.
- ``best-f2``: the same with F2 = 5PR / (4P + R), which weighs recall four times as much as precision
  (the F-beta score with beta = 2): for screening, where a missed threat costs more than a false alarm
  that an operator clears. It sits at a lower threshold than best-f1: more threats found, more alarms.
- ``precision``: the lowest threshold whose precision reaches ``min_precision`` (default 0.9): the
  most recall at that false-alarm budget. A weak model may never reach it; then the rule falls back
  to ``best-f1`` and the operating point says so.

A model with no correct detection on the split keeps the old default (``LEGACY_SCORE_THRESHOLD``), with
the reason in the operating point. The chosen threshold is rounded down to the fewest decimals (3 to
6) that keep exactly the same detections.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xscreen.errors import XscreenError
from xscreen.model.config import LEGACY_SCORE_THRESHOLD
from xscreen.training.threshold_rules import DEFAULT_MIN_PRECISION, DEFAULT_RULE, RULES

IOU = 0.5
MAX_DETS = 100  # per image and class, as COCO's AP


class ThresholdError(XscreenError):
    """A rule or a minimum precision that cannot be used."""


@dataclass(frozen=True)
class PRPoints:
    """Precision/recall of the pooled detections at each distinct score, highest score first."""

    thresholds: np.ndarray  # [K] candidate thresholds (distinct scores), descending
    precision: np.ndarray  # [K]
    recall: np.ndarray  # [K]
    num_gt: int
    num_detections: int

    @property
    def f1(self) -> np.ndarray:
        return self.fbeta(1.0)

    def fbeta(self, beta: float) -> np.ndarray:
        """F-beta = (1 + b^2) PR / (b^2 P + R) at each candidate (0 where P = R = 0)."""
        p, r, b2 = self.precision, self.recall, beta * beta
        return np.divide((1 + b2) * p * r, b2 * p + r, out=np.zeros_like(p), where=(b2 * p + r) > 0)


def check_rule(rule: str, min_precision: float = DEFAULT_MIN_PRECISION) -> None:
    if rule not in RULES:
        raise ThresholdError(f"unknown threshold rule {rule!r}; choose {' or '.join(RULES)}")
    if not (math.isfinite(min_precision) and 0 < min_precision <= 1):
        raise ThresholdError(f"minimum precision must be in (0, 1], got {min_precision}")


def matched_detections(gt: dict, results: list[dict], img_ids=None) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores [D], true positive [D] bool, number of ground-truth objects) at IoU 0.5, classes pooled.

    ``gt``: a COCO ground-truth dict; ``results``: COCO results (image_id, category_id, bbox, score)
    with the ground truth's category ids; ``img_ids``: the images to count (default all).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}
    for k, a in enumerate(gt["annotations"]):  # COCOeval needs these; real json files may omit them
        a.setdefault("id", k + 1)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
    dt = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
    for k, r in enumerate(results):
        w, h = float(r["bbox"][2]), float(r["bbox"][3])
        dt["annotations"].append({**r, "id": k + 1, "area": w * h, "iscrowd": 0})
    cocos = []
    for data in (gt, dt):
        c = COCO()
        c.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            c.createIndex()
        cocos.append(c)
    ev = COCOeval(cocos[0], cocos[1], "bbox")
    ev.params.imgIds = sorted(int(i) for i in (img_ids if img_ids is not None else cocos[0].getImgIds()))
    ev.params.iouThrs = np.array([IOU])
    ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]
    ev.params.maxDets = [MAX_DETS]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
    scores, tps, num_gt = [], [], 0
    for e in ev.evalImgs:
        if e is None:
            continue
        num_gt += int(np.count_nonzero(~np.asarray(e["gtIgnore"], bool)))
        keep = ~np.asarray(e["dtIgnore"], bool).reshape(1, -1)[0]
        scores.append(np.asarray(e["dtScores"], float)[keep])
        tps.append(np.asarray(e["dtMatches"]).reshape(1, -1)[0][keep] > 0)
    if not scores:
        return np.zeros(0), np.zeros(0, bool), num_gt
    return np.concatenate(scores), np.concatenate(tps), num_gt


def pr_points(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> PRPoints:
    """Precision and recall when keeping the detections with score >= each distinct score."""
    scores, tp = np.asarray(scores, float), np.asarray(tp, bool)
    order = np.argsort(-scores, kind="mergesort")
    scores, tp = scores[order], tp[order]
    ctp = np.cumsum(tp)
    last_of_tie = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True]) if scores.size else np.zeros(0, int)
    kept_tp, kept = ctp[last_of_tie].astype(float), (last_of_tie + 1).astype(float)
    return PRPoints(
        thresholds=scores[last_of_tie],
        precision=kept_tp / np.maximum(kept, 1),
        recall=kept_tp / num_gt if num_gt else np.zeros_like(kept_tp),
        num_gt=int(num_gt),
        num_detections=int(scores.size),
    )


def _readable(cutoff: float, below: float) -> float:
    """The shortest decimal t with below < t <= cutoff (keeps exactly the detections scoring >= cutoff)."""
    for digits in range(3, 7):
        t = math.floor(cutoff * 10**digits + 1e-9) / 10**digits
        if below < t <= cutoff:
            return t
    return float(cutoff)


def select_threshold(
    points: PRPoints, rule: str = DEFAULT_RULE, min_precision: float = DEFAULT_MIN_PRECISION
) -> dict:
    """The operating point chosen by ``rule`` (module docstring) as a JSON-ready dict:
    score_threshold, rule, iou, precision, recall, f1, num_gt, num_detections (and ``note`` on a fallback)."""
    check_rule(rule, min_precision)
    base = {"iou": IOU, "num_gt": points.num_gt, "num_detections": points.num_detections}
    rule_name = rule if rule != "precision" else f"precision>={min_precision:g}"
    f1 = points.f1
    if not points.thresholds.size or f1.max() <= 0:
        return {
            **base,
            "score_threshold": LEGACY_SCORE_THRESHOLD,
            "rule": rule_name,
            "precision": None,
            "recall": None,
            "f1": None,
            "note": f"no correct detection on the split: kept the default {LEGACY_SCORE_THRESHOLD}",
        }
    note = None
    if rule == "precision":
        ok = np.flatnonzero(points.precision >= min_precision)
        if ok.size:
            k = int(ok[-1])
        else:
            note = f"precision {min_precision:g} never reached (best {points.precision.max():.3f}): best F1"
            rule = "best-f1"
    if rule in ("best-f1", "best-f2"):
        score = f1 if rule == "best-f1" else points.fbeta(2.0)
        k = int(np.flatnonzero(score == score.max())[-1])
    below = float(points.thresholds[k + 1]) if k + 1 < points.thresholds.size else 0.0
    op = {
        **base,
        "score_threshold": _readable(float(points.thresholds[k]), below),
        "rule": rule_name,
        "precision": round(float(points.precision[k]), 4),
        "recall": round(float(points.recall[k]), 4),
        "f1": round(float(f1[k]), 4),
    }
    if rule == "best-f2":
        op["f2"] = round(float(points.fbeta(2.0)[k]), 4)
    if note:
        op["note"] = note
    return op


def pick_threshold(
    gt: dict,
    results: list[dict],
    rule: str = DEFAULT_RULE,
    min_precision: float = DEFAULT_MIN_PRECISION,
    img_ids=None,
    *,
    plot: str | Path | None = None,
    title: str = "",
) -> dict:
    """Match ``results`` to ``gt`` (COCO dicts) and choose the operating point; ``plot``: its PR curve PNG."""
    check_rule(rule, min_precision)
    scores, tp, num_gt = matched_detections(gt, results, img_ids)
    points = pr_points(scores, tp, num_gt)
    op = select_threshold(points, rule, min_precision)
    op["num_images"] = len(img_ids) if img_ids is not None else len(gt["images"])
    if plot is not None:
        plot_operating_point(points, op, plot, title=title)
    return op


def plot_operating_point(points: PRPoints, op: dict, path: str | Path, title: str = "") -> Path:
    """A PNG: the pooled PR curve at IoU 0.5 with the chosen point, and P/R/F1 against the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
    t = op["score_threshold"]
    if points.thresholds.size:
        ax1.plot(points.recall, points.precision, color="C0", lw=1.5, label="all classes pooled")
        ax2.plot(points.thresholds, points.precision, label="precision")
        ax2.plot(points.thresholds, points.recall, label="recall")
        ax2.plot(points.thresholds, points.f1, label="F1")
    if op.get("precision") is not None:
        ax1.plot([op["recall"]], [op["precision"]], "o", color="C3", ms=8, label=f"threshold {t:g}")
    ax2.axvline(t, color="C3", ls="--", lw=1, label=f"chosen {t:g} ({op['rule']})")
    ax1.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    ax1.set_title(title or f"PR at IoU {op['iou']:g}, {op['num_gt']} objects", fontsize=9)
    ax2.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold", ylabel="value")
    ax2.set_title("precision / recall / F1 vs threshold", fontsize=9)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no curve and no point: nothing to label
            ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def describe(op: dict | None) -> str:
    """One line for logs and the CLI."""
    if not op:
        return f"no operating point recorded (default {LEGACY_SCORE_THRESHOLD})"
    if op.get("precision") is None:
        # a rule of RULES found no correct detection; any other rule (manual, import-default) saw no data
        stats = (
            "no correct detection"
            if str(op.get("rule", "")).split(">=")[0] in RULES
            else "not picked on data"
        )
    else:
        stats = f"precision {op['precision']:.3f}, recall {op['recall']:.3f}, F1 {op['f1']:.3f}"
    where = f" on {op['split']}" if op.get("split") else ""
    note = f"; {op['note']}" if op.get("note") else ""
    return f"score_threshold {op['score_threshold']:g} (rule {op['rule']}{where}: {stats}{note})"
