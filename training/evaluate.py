"""COCO evaluation (pycocotools): mAP@[.5:.95], AP50/75, APs/m/l, per-class AP/AP50, challenging subset.

Metrics are fractions in 0..1 in JSON (COCO convention) and percentages in the markdown table
(as the paper's tables). A metric COCO cannot define (no ground truth of that size or class)
is ``None`` / "n/a".
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import numpy as np

from xscreen.errors import XscreenError
from xscreen.tables import markdown_table

SUBSETS = (None, "challenging")
SUMMARY_KEYS = ("mAP", "AP50", "AP75", "APs", "APm", "APl")  # order of COCOeval.stats[0:6]


class EvalError(XscreenError):
    """Bad evaluation input: unknown ids in a results file, empty subset, unreadable file."""


def read_json(source, what: str):
    """A JSON file (path) or an in-memory object (deep-copied); EvalError names ``what`` when it is missing
    or not JSON."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise EvalError(f"{what} not found: {path}")
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EvalError(f"{path}: not valid JSON ({exc})") from None
    return copy.deepcopy(source)


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def check_results(results, gt: dict) -> list[dict]:
    """COCO detection results checked against ``gt`` (known image and category ids, 4-number boxes,
    numeric scores); EvalError says what is wrong."""
    if not isinstance(results, list):
        raise EvalError("detections must be a JSON list of COCO results {image_id, category_id, bbox, score}")
    image_ids = {int(im["id"]) for im in gt["images"]}
    cat_ids = {int(c["id"]) for c in gt["categories"]}
    out = []
    for k, r in enumerate(results):
        try:
            image_id, cat, score = int(r["image_id"]), int(r["category_id"]), float(r["score"])
            x, y, w, h = (float(v) for v in r["bbox"])
        except (KeyError, TypeError, ValueError):
            raise EvalError(
                f"detection {k} is not a COCO result {{image_id, category_id, bbox, score}}: {r!r}"
            ) from None
        if image_id not in image_ids:
            raise EvalError(f"detection {k} refers to image_id {image_id}, which is not in the ground truth")
        if cat not in cat_ids:
            raise EvalError(
                f"detection {k} has category_id {cat}; the ground truth's ids are {sorted(cat_ids)} "
                "(results must use the dataset's own category ids)"
            )
        if not all(math.isfinite(v) for v in (x, y, w, h, score)) or w < 0 or h < 0:
            raise EvalError(f"detection {k} has a non-finite score/box or negative width/height: {r!r}")
        out.append({"image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "score": score})
    return out


def _nan_none(v: float) -> float | None:
    return None if v is None or v < 0 or not math.isfinite(v) else float(v)


def _mean_defined(values: np.ndarray) -> float | None:
    """COCO's convention: average the entries > -1; undefined (None) if there are none."""
    v = values[values > -1]
    return float(v.mean()) if v.size else None


def _evaluate(gt: dict, results: list[dict], img_ids: list[int]) -> tuple[dict, dict]:
    from pycocotools.cocoeval import COCOeval

    for k, a in enumerate(gt["annotations"]):  # COCOeval needs these; real json files may omit them
        a.setdefault("id", k + 1)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
    coco_gt = _coco(gt)
    dt = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
    for k, r in enumerate(results):
        dt["annotations"].append({**r, "id": k + 1, "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0})
    coco_dt = _coco(dt)  # (COCO.loadRes refuses an empty list; building the index directly does not)
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    ev.params.imgIds = sorted(img_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics = {key: _nan_none(ev.stats[i]) for i, key in enumerate(SUMMARY_KEYS)}
    precision = ev.eval["precision"]  # [T=10 IoU, R=101 recall, K classes, A=4 areas, M=3 maxDets]
    iou_thrs = list(ev.params.iouThrs)
    i50, i75 = iou_thrs.index(0.5), int(np.argmin(np.abs(np.array(iou_thrs) - 0.75)))
    per_class, curves = {}, {}
    names = {int(c["id"]): c["name"] for c in gt["categories"]}
    gt_counts = {cid: 0 for cid in names}
    wanted = set(img_ids)
    for a in gt["annotations"]:
        if int(a["image_id"]) in wanted and not a.get("iscrowd", 0):
            gt_counts[int(a["category_id"])] += 1
    for k, cid in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]  # all areas, 100 detections
        per_class[names[cid]] = {
            "category_id": int(cid),
            "num_gt": gt_counts[int(cid)],
            "AP": _mean_defined(p),
            "AP50": _mean_defined(p[i50]),
            "AP75": _mean_defined(p[i75]),
        }
        curves[names[cid]] = {"recall": ev.params.recThrs, "p50": p[i50], "p75": p[i75], "pmean": p.mean(0)}
    ap50s = [c["AP50"] for c in per_class.values() if c["AP50"] is not None]
    metrics["mAP50_per_class_mean"] = float(np.mean(ap50s)) if ap50s else None  # OPIXray-style
    metrics["per_class"] = per_class
    metrics["num_images"] = len(img_ids)
    metrics["num_gt"] = sum(gt_counts.values())
    metrics["num_detections"] = sum(1 for r in results if r["image_id"] in wanted)
    return metrics, curves


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def metrics_markdown(metrics: dict) -> str:
    """Markdown tables (percentages): summary, then per class; the challenging subset if present."""
    lines = []
    blocks = [("all images" if metrics.get("subset") is None else f"{metrics['subset']} subset", metrics)]
    if "challenging" in metrics:
        blocks.append(("challenging subset", metrics["challenging"]))
    for title, m in blocks:
        lines += [
            f"### {title} ({m['num_images']} images, {m['num_gt']} objects, "
            f"{m['num_detections']} detections)",
            "",
            markdown_table(
                ("mAP", "AP50", "AP75", "APs", "APm", "APl", "mean per-class AP50"),
                [[_fmt(m[k]) for k in (*SUMMARY_KEYS, "mAP50_per_class_mean")]],
                align="r" * 7,
            ),
            "",
            markdown_table(
                ("class", "id", "objects", "AP", "AP50", "AP75"),
                [
                    [name, c["category_id"], c["num_gt"], *(_fmt(c[k]) for k in ("AP", "AP50", "AP75"))]
                    for name, c in m["per_class"].items()
                ],
            ),
            "",
        ]
    return "\n".join(lines)


def _plot_pr(curves: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pr_dir = out_dir / "pr_curves"
    pr_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, c in curves.items():
        fig, ax = plt.subplots(figsize=(4, 3.2), dpi=90)
        for key, label in (("p50", "IoU 0.50"), ("p75", "IoU 0.75"), ("pmean", "mean IoU .50:.95")):
            p = np.asarray(c[key], dtype=float)
            if (p > -1).any():
                ax.plot(c["recall"], np.where(p > -1, p, np.nan), label=label)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=name)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="lower left", fontsize=7)
        else:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        path = pr_dir / f"{name.replace(' ', '_')}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(str(path))
    return written


def evaluate_detections(gt_json, results, subset: str | None = None, out_dir=None) -> dict:
    """Evaluate COCO results (a list or a json path) against a COCO ground-truth file or dict.

    ``subset="challenging"`` restricts the evaluation to images flagged ``"challenging": true``.
    Without a subset, the challenging-subset metrics are added under ``"challenging"`` when the
    ground truth flags any image. ``out_dir`` receives metrics.json, metrics.md, detections.json
    (COCO results format) and pr_curves/<class>.png.
    """
    if subset not in SUBSETS:
        raise EvalError(f"unknown subset {subset!r}; choose 'challenging' or none")
    gt = read_json(gt_json, "ground-truth annotation file")
    if not isinstance(gt, dict) or not all(
        isinstance(gt.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise EvalError("ground truth must be a COCO object with images, annotations and categories")
    results = check_results(read_json(results, "detections file"), gt)
    all_ids = [int(im["id"]) for im in gt["images"]]
    hard_ids = [int(im["id"]) for im in gt["images"] if im.get("challenging")]
    if subset == "challenging" and not hard_ids:
        raise EvalError('--subset challenging: no image in the ground truth is flagged "challenging": true')
    metrics, curves = _evaluate(gt, results, hard_ids if subset else all_ids)
    metrics["subset"] = subset
    if subset is None and hard_ids:
        metrics["challenging"], _ = _evaluate(gt, results, hard_ids)
        metrics["challenging"]["subset"] = "challenging"
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (out / "metrics.md").write_text(metrics_markdown(metrics))
        (out / "detections.json").write_text(json.dumps(results))
        metrics["pr_curves"] = _plot_pr(curves, out)
    return metrics


def detect_dataset(
    model, ds, image_ids: set[int] | None = None, *, batch_size: int = 2, device="cpu", progress: bool = False
) -> list[dict]:
    """Run ``model.predict`` over a CocoDetection's images at their original size -> COCO results.

    The model resizes internally and returns boxes in the input (= original) image's pixels.
    Labels (0-based into the model's classes) become the dataset's own category ids.
    """
    import torch
    from tqdm import tqdm

    from xscreen.scans import read_converted

    indices = [i for i, im in enumerate(ds.images) if image_ids is None or int(im["id"]) in image_ids]
    results = []
    model.eval()
    with torch.inference_mode():
        for start in tqdm(
            range(0, len(indices), batch_size), desc="eval", unit="batch", disable=not progress
        ):
            chunk = indices[start : start + batch_size]
            images = [
                torch.from_numpy(read_converted(ds.image_path(i))).permute(2, 0, 1).contiguous().to(device)
                for i in chunk
            ]
            for i, det in zip(chunk, model.predict(images), strict=True):
                results += coco_results(ds, i, det)
    return results


def coco_results(ds, index: int, det: dict) -> list[dict]:
    """One image's detections (model.predict output) -> COCO results with the dataset's category ids."""
    image_id = int(ds.images[index]["id"])
    out = []
    for box, score, label in zip(
        det["boxes"].cpu().tolist(), det["scores"].cpu().tolist(), det["labels"].cpu().tolist(), strict=True
    ):
        x1, y1, x2, y2 = box
        out.append(
            {
                "image_id": image_id,
                "category_id": int(ds.label_to_cat[int(label)]),
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": round(float(score), 5),
            }
        )
    return out


class OnnxDetector:
    """An ``xscreen export`` file in ONNX Runtime (xscreen.inference) with the ``predict`` of a detector.

    ``predict`` takes [3, H, W] float tensors (0..255) and returns boxes/scores/labels tensors, like
    ATSSDetector.predict, so :func:`detect_dataset` evaluates it exactly as torch weights.
    """

    def __init__(self, onnx_path: str | Path, device: str = "cpu"):
        from xscreen.inference.onnx_backend import OnnxBackend

        self.backend = OnnxBackend(onnx_path, device)
        self.cfg = self.backend.cfg

    def eval(self) -> OnnxDetector:
        return self

    def predict(self, images: list) -> list[dict]:
        import torch

        arrays = [im.detach().cpu().permute(1, 2, 0).numpy() for im in images]
        outputs, _ = self.backend.predict(arrays)
        return [{k: torch.from_numpy(v) for k, v in out.items()} for out in outputs]


def evaluate_model(
    model,
    data_dir,
    split: str,
    *,
    subset: str | None = None,
    batch_size: int = 2,
    device="cpu",
    out_dir=None,
    ann_file=None,
    img_dir=None,
    progress: bool = False,
) -> dict:
    """Detect on ``data_dir``'s ``split`` (or ``ann_file``/``img_dir``) and compute the COCO metrics."""
    from xscreen.training.dataset import CocoDetection

    if subset not in SUBSETS:
        raise EvalError(f"unknown subset {subset!r}; choose 'challenging' or none")
    ds = CocoDetection(data_dir, split, class_names=model.cfg.class_names, ann_file=ann_file, img_dir=img_dir)
    ids = {int(im["id"]) for im in ds.images if im.get("challenging")} if subset else None
    if subset and not ids:
        raise EvalError(f'{ds.ann_file}: no image is flagged "challenging": true')
    results = detect_dataset(model, ds, ids, batch_size=batch_size, device=device, progress=progress)
    return evaluate_detections(ds.coco, results, subset=subset, out_dir=out_dir)
