"""Test-time label sources of trained LA models: how much of LA's effect rides on its pseudo-labels.

    xscreen la-probe --weights RUN1/last.safetensors [RUN2/...] --data DIR [--split test]

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
features, |x_new - x| / |x|, per FPN level (LAcls only; w1 is left out where b = 0 skips it).
"""

from __future__ import annotations

import statistics
from pathlib import Path

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
    from xscreen.scans import read_converted
    from xscreen.training.evaluate import coco_results, evaluate_detections

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
    from xscreen.scans import read_converted

    if not model.cfg.la_cls:
        return []
    acc: list[dict[str, list[float]]] = []
    with torch.inference_mode():
        for i in range(min(images, len(ds))):
            image = torch.from_numpy(read_converted(ds.image_path(i))).permute(2, 0, 1).contiguous()
            batch, _ = pad_batch(model.resize_and_normalize([image]))
            feats = model.backbone(batch)
            # as the model runs it: with b = 0 (released (1.5, 0, 1)) w1 is not computed (method.md §7.5)
            w1s, w2s = label_aware_weights(
                model.head, feats, "cls", skip_label_grad=model.cfg.skip_label_grad
            )
            for level, (x, w1, w2) in enumerate(zip(feats, w1s, w2s, strict=True)):
                x_new = reweight(x, [w1, w2], model.cfg.la_coeffs)
                if len(acc) <= level:
                    acc.append({"w_mean": [], "w_max": [], "change": []})
                dev = torch.cat([(w - 0.5).abs().flatten() for w in (w1, w2) if w is not None])
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
