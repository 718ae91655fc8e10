"""Test-time label sources of trained LA models: how much of LA's effect rides on its pseudo-labels.

    python -m training.la_probe --weights RUN1/last.safetensors [RUN2/...] --data DIR [--split test]

For every mode, every weights file detects on the split; the table gives COCO AP (%) on the split
and on its challenging subset, mean ± std over the files:

- ``pseudo``: the paper's inference (Sec. IV-D): the arg-max class is the label at every location.
- ``oracle``: the labels of training, ATSS-assigned from the ground-truth boxes (background
  locations carry none): what perfect pseudo-labels would give. Needs ground truth, so it is an
  analysis, never a deployment mode.
- ``off``: the same weights with the reweighting switched off, (a, b, c) = (1, 0, 0) in Eq. 7, so
  the second prediction runs on x itself.

A second table measures the LA weights themselves on the first ``--stat-images`` images (pseudo-labels):
how far w1 and w2 are from 0.5 (where Eq. 7 leaves x unchanged) and the relative change of the
features, |x_new - x| / |x|, per FPN level (LAcls only).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

from xscreen.argtypes import positive_int
from xscreen.errors import XscreenError
from xscreen.tables import markdown_table

MODES = ("pseudo", "oracle", "off")


def load(weights: Path, data: Path, split: str):
    """The LA model (eval mode) and the split's CocoDetection; XscreenError for an ATSS model."""
    from xscreen.model.weights import load_weights
    from xscreen.training.dataset import CocoDetection

    model, _ = load_weights(weights)
    if not model.cfg.uses_la:
        raise XscreenError(f"{weights}: an ATSS model without LA has no label source to probe")
    return model.eval(), CocoDetection(data, split, class_names=model.cfg.class_names)


def probe(model, ds, modes: list[str], limit: int | None) -> dict[str, dict]:
    """{mode: {"test": metrics, "challenging": metrics}} for one LA model on a dataset split."""
    import torch

    from xscreen.model import build_detector
    from xscreen.training.evaluate import coco_results, evaluate_detections
    from xscreen.training.scans import read_converted

    off = build_detector(model.cfg.with_overrides(la_coeffs=(1.0, 0.0, 0.0))).eval()
    off.load_state_dict(model.state_dict())
    indices = range(len(ds) if limit is None else min(limit, len(ds)))
    results: dict[str, list[dict]] = {m: [] for m in modes}
    with torch.inference_mode():
        for i in indices:
            image = torch.from_numpy(read_converted(ds.image_path(i))).permute(2, 0, 1).contiguous()
            for mode in modes:
                if mode == "oracle":
                    boxes, labels = ds.annotations(i)
                    det = model.predict_with_oracle_labels([image], [{"boxes": boxes, "labels": labels}])[0]
                else:
                    det = (model if mode == "pseudo" else off).predict([image])[0]
                results[mode] += coco_results(ds, i, det)
    gt = dict(ds.coco)
    if limit is not None:
        keep = {int(ds.images[i]["id"]) for i in indices}
        gt = {
            **gt,
            "images": [im for im in gt["images"] if int(im["id"]) in keep],
            "annotations": [a for a in gt["annotations"] if int(a["image_id"]) in keep],
        }
    out = {}
    for mode in modes:
        m = evaluate_detections(gt, results[mode])
        out[mode] = {"test": m, "challenging": m.get("challenging", {})}
    return out


def weight_stats(model, ds, images: int) -> list[dict[str, float]]:
    """Per FPN level: mean and max |w - 0.5| of the LA weights and the relative feature change (LAcls)."""
    import torch

    from xscreen.model.label_aware import label_aware_weights, reweight
    from xscreen.model.transform import pad_batch
    from xscreen.training.scans import read_converted

    if not model.cfg.la_cls:
        return []
    acc: list[dict[str, list[float]]] = []
    with torch.inference_mode():
        for i in range(min(images, len(ds))):
            image = torch.from_numpy(read_converted(ds.image_path(i))).permute(2, 0, 1).contiguous()
            batch, _ = pad_batch(model.resize_and_normalize([image]))
            feats = model.backbone(batch)
            w1s, w2s = label_aware_weights(model.head, feats, "cls")
            for level, (x, w1, w2) in enumerate(zip(feats, w1s, w2s, strict=True)):
                x_new = reweight(x, [w1, w2], model.cfg.la_coeffs)
                if len(acc) <= level:
                    acc.append({"w_mean": [], "w_max": [], "change": []})
                dev = torch.cat([(w1 - 0.5).abs().flatten(), (w2 - 0.5).abs().flatten()])
                acc[level]["w_mean"].append(float(dev.mean()))
                acc[level]["w_max"].append(float(dev.max()))
                acc[level]["change"].append(float((x_new - x).norm() / x.norm().clamp(min=1e-12)))
    return [
        {
            "w_mean": statistics.fmean(a["w_mean"]),
            "w_max": max(a["w_max"]),
            "change": statistics.fmean(a["change"]),
        }
        for a in acc
    ]


def _cell(values: list[float | None]) -> str:
    if not values or any(v is None or v < 0 for v in values):
        return "n/a"
    pct = [100 * v for v in values]
    std = statistics.stdev(pct) if len(pct) > 1 else 0.0
    return f"{statistics.fmean(pct):.1f} ± {std:.1f}"


def table(per_file: list[dict[str, dict]], modes: list[str]) -> str:
    parts = (("test", "mAP"), ("test", "AP50"), ("challenging", "mAP"), ("challenging", "AP50"))
    rows = [
        [mode, *(_cell([r[mode][part].get(key) for r in per_file]) for part, key in parts)] for mode in modes
    ]
    header = ("LA labels at test", "test mAP", "test AP50", "challenging mAP", "challenging AP50")
    return markdown_table(header, rows, align="lllll")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.la_probe", description=__doc__.splitlines()[0])
    p.add_argument(
        "--weights", nargs="+", required=True, help="LA model weights (.safetensors), e.g. one per seed"
    )
    p.add_argument("--data", required=True, help="dataset folder (annotations/, images/)")
    p.add_argument("--split", default="test")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N images of the split")
    p.add_argument("--stat-images", type=positive_int, default=20, help="images for the LA-weight statistics")
    p.add_argument("--out", default=None, help="also write the per-file metrics here (JSON)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    per_file, stats = [], []
    try:
        for w in args.weights:
            model, ds = load(Path(w), Path(args.data), args.split)
            per_file.append(probe(model, ds, args.modes, args.limit))
            stats.append(weight_stats(model, ds, args.stat_images))
    except XscreenError as exc:
        print(f"la_probe: error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(
            json.dumps(dict(zip(args.weights, per_file, strict=True)), indent=2, default=str) + "\n"
        )
    print(f"{len(per_file)} weights file(s), split {args.split!r}; COCO AP in %, mean ± std over the files\n")
    print(table(per_file, args.modes))
    if any(stats):
        print(f"\nLA weights on the first {args.stat_images} images (pseudo-labels), worst file per level\n")
        rows = []
        for level in range(max(len(s) for s in stats)):
            per_file_level = [s[level] for s in stats if len(s) > level]
            worst = [max(r[k] for r in per_file_level) for k in ("w_mean", "w_max", "change")]
            rows.append([f"P{level + 3}", *(f"{v:.1e}" for v in worst)])
        header = ("level", "mean abs(w - 0.5)", "max abs(w - 0.5)", "mean norm(x_new - x) / norm(x)")
        print(markdown_table(header, rows, align="llll"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
