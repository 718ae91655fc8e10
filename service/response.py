"""Backend output -> response detections: score threshold, class ids/names/groups, sorting (shared by
the HTTP routes and ``xscreen detect`` so both answer identically for every backend)."""

from __future__ import annotations

import numpy as np

from xscreen.inference.backend import ModelInfo
from xscreen.scans.picture import render_png
from xscreen.service.scan_input import PreparedScan
from xscreen.service.schemas import Box, Detection, DetectResponse, ModelSummary


def class_ids_for(class_names: tuple[str, ...]) -> tuple[int, ...]:
    """The dataset's category id per class (CLCXray ids by normalised name; position+1 otherwise)."""
    from xscreen.model.classes import CLCXRAY_CLASSES, normalise_name

    by_name = {normalise_name(c.name): c.category_id for c in CLCXRAY_CLASSES}
    return tuple(by_name.get(normalise_name(n), i + 1) for i, n in enumerate(class_names))


def effective_threshold(requested: float | None, setting: float | None, info: ModelInfo) -> float:
    """The request's threshold, else the XSCREEN_SCORE_THRESHOLD override, else the model's own."""
    if requested is not None:
        return requested
    return info.score_threshold if setting is None else setting


def detections_from_output(
    output: dict[str, np.ndarray], info: ModelInfo, class_ids: tuple[int, ...], threshold: float
) -> list[Detection]:
    """Detections with score >= threshold, highest score first, boxes in the scan's pixels."""
    scores = np.asarray(output["scores"], dtype=np.float64).reshape(-1)
    labels = np.asarray(output["labels"]).reshape(-1).astype(np.int64)
    boxes = np.asarray(output["boxes"], dtype=np.float64).reshape(-1, 4)
    detections = []
    for i in np.argsort(-scores, kind="stable"):
        score, label = float(scores[i]), int(labels[i])
        if score < threshold or not 0 <= label < len(info.class_names):
            continue
        x1, y1, x2, y2 = (round(float(v), 2) for v in boxes[i])
        detections.append(
            Detection(
                class_id=class_ids[label],
                class_name=info.class_names[label],
                group=info.groups[label],
                score=round(min(max(score, 0.0), 1.0), 6),
                box=Box(x1=x1, y1=y1, x2=x2, y2=y2),
            )
        )
    return detections


def model_summary(info: ModelInfo, backend: str, device: str) -> ModelSummary:
    """The response's ``model`` block (HTTP routes and ``xscreen detect``)."""
    return ModelSummary(
        name=info.name,
        version=info.version,
        sha256=info.sha256,
        backend=backend,
        device=device,
        precision=info.precision,
    )


def render_response_png(prepared: PreparedScan, response: DetectResponse) -> bytes:
    """The scan's pseudo-colour picture with the response's detections on it, as PNG bytes."""
    names = sorted({d.class_name for d in response.detections})
    boxes = np.array([[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in response.detections], np.float32)
    labels = np.array([names.index(d.class_name) for d in response.detections], np.int64)
    scores = np.array([d.score for d in response.detections], np.float32)
    return render_png(prepared.high, prepared.low, boxes.reshape(-1, 4), labels, scores, names)
