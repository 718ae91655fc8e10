"""ONNX Runtime inference backend: an exported ATSS(+LA) graph (`xscreen export`) as an InferenceBackend.

Pre-processing (keep-ratio resize, normalise, pad to 32, sub-batches of equal padded size) and
post-processing (``model.postprocess.postprocess_detections``) are the torch path's own functions, so
both backends answer the same; only the network (backbone, FPN, head and the LA loop) runs in ORT.
The CUDA execution provider is used only when both torch and onnxruntime see a GPU.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch

from xscreen.errors import permission_denied
from xscreen.inference.base import BackendError, ModelInfo, groups_for, resolve_device
from xscreen.model.anchors import feature_sizes, generate_anchors
from xscreen.model.config import LEGACY_SCORE_THRESHOLD
from xscreen.model.head import HeadOutputs
from xscreen.model.onnx_export import INPUT_NAME, OUTPUT_NAMES, OnnxModelError, parse_onnx_metadata
from xscreen.model.postprocess import postprocess_detections
from xscreen.model.transform import group_by_padded_size, network_image, pad_batch

log = logging.getLogger(__name__)

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


class OnnxModelRefused(OnnxModelError, BackendError):
    """An ONNX file the service will not serve (not ONNX, not an xscreen export, inconsistent)."""


def _graph_level(name: str):
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if name not in levels:
        raise BackendError(f"unknown ONNX Runtime graph optimisation {name!r} (expected {', '.join(levels)})")
    return levels[name]


def session_options(
    graph_optimization: str = "all",
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    allow_spinning: bool = True,
):
    """ORT SessionOptions; 0 threads = ORT's default (one per physical core).

    ``allow_spinning=False``: ORT's intra-op threads sleep as soon as a run ends instead of spinning
    for the next one (ORT's default), leaving the cores to the work between two runs.
    """
    import onnxruntime as ort

    if intra_op_threads < 0 or inter_op_threads < 0:
        raise BackendError("ONNX Runtime thread counts must be >= 0 (0 = default)")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = _graph_level(graph_optimization)
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = inter_op_threads
    opts.log_severity_level = 3  # errors only: shape-inference notes on the dynamic graph are noise
    if not allow_spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def choose_providers(device: str) -> tuple[str, list]:
    """('cuda' | 'cpu', providers list) for a requested device 'auto' | 'cuda' | 'cpu'."""
    import onnxruntime as ort

    resolved = resolve_device(device)  # torch's view: 'cuda' only with a usable GPU
    has_cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    if resolved == "cuda" and has_cuda_ep:
        return "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise BackendError("device 'cuda' requested but this onnxruntime has no CUDAExecutionProvider")
    return "cpu", ["CPUExecutionProvider"]


class OnnxBackend:
    """The exported detector in an ``onnxruntime.InferenceSession``.

    ``onnx_path``: a file written by ``xscreen export``; its metadata (class names, config, sha256)
    is validated before serving. ``expected_sha256`` / ``expected_class_names`` optionally pin it.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        device: str = "auto",
        *,
        graph_optimization: str = "all",
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        expected_sha256: str | None = None,
        expected_class_names: tuple[str, ...] | None = None,
    ):
        import onnxruntime as ort

        path = Path(onnx_path)
        if denied := permission_denied(path):
            raise OnnxModelRefused(denied)
        if not path.is_file():
            raise OnnxModelRefused(f"ONNX model file not found: {path}")
        self.device, providers = choose_providers(device)
        if self.device == "cuda" and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN libraries of the pip wheels, before the CUDA session
        # No spinning: in the service the next scans are decoded and converted on the same cores right
        # after a run, and spinning ORT threads slowed that decoding 2x (7.3 -> 13.9 ms per PNG pair;
        # throughput at 4 clients 19.7 -> 25.2 scans/s without spinning, benchmarks/service_load.py
        # --onnx-path, docs/onnx.md).
        opts = session_options(graph_optimization, intra_op_threads, inter_op_threads, allow_spinning=False)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # ORT raises InvalidProtobuf / Fail / InvalidGraph on a bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OnnxModelRefused(f"{path}: not a loadable ONNX model ({first[:300]})") from None
        if self.device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise BackendError(f"{path}: ONNX Runtime could not start the CUDA execution provider")
        try:
            meta = parse_onnx_metadata(dict(self.session.get_modelmeta().custom_metadata_map), str(path))
        except OnnxModelError as exc:
            raise OnnxModelRefused(str(exc)) from None
        self._check_graph(meta, path)
        if expected_sha256 is not None and meta.sha256 != expected_sha256.lower():
            raise OnnxModelRefused(
                f"{path}: weights sha256 mismatch: the export has {meta.sha256}, expected {expected_sha256}"
            )
        if expected_class_names is not None and tuple(expected_class_names) != meta.class_names:
            raise OnnxModelRefused(
                f"{path}: class list mismatch: the export has {list(meta.class_names)}, "
                f"expected {list(expected_class_names)}"
            )
        if self.device == "cuda" and meta.precision == "int8":
            log.warning(
                "%s is an int8 export, made for ONNX Runtime's CPU provider; on CUDA serve the fp32 export",
                path,
            )
        self.cfg = meta.config
        self.meta = meta
        threshold = meta.score_threshold
        if threshold is None:
            threshold = LEGACY_SCORE_THRESHOLD
            log.info(
                "%s records no operating threshold (exported before weights carried one): using the old "
                "default score threshold %g",
                path,
                threshold,
            )
        self.info = ModelInfo(
            name=meta.name,
            version=meta.version,
            sha256=meta.sha256,
            class_names=meta.class_names,
            groups=groups_for(meta.class_names),
            precision=meta.precision,
            score_threshold=threshold,
        )
        self._lock = threading.Lock()
        log.info(
            "ONNX model %s (%s, %s) on %s",
            path,
            meta.config.name,
            meta.precision,
            self.session.get_providers()[0],
        )

    def _check_graph(self, meta, path: Path) -> None:
        """The graph's inputs/outputs must be what the metadata promises (catches mixed-up files)."""
        inputs = self.session.get_inputs()
        outputs = {o.name: o for o in self.session.get_outputs()}
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise OnnxModelRefused(
                f"{path}: graph input is {[i.name for i in inputs]}, expected a single {INPUT_NAME!r}"
            )
        missing = [n for n in OUTPUT_NAMES if n not in outputs]
        if missing:
            raise OnnxModelRefused(f"{path}: graph lacks output(s) {missing}")
        cfg = meta.config
        expected = {
            "cls_logits": cfg.num_classes,
            "bbox_reg": cfg.reg_channels,
            "centerness": 1,
        }
        for name, channels in expected.items():
            last = outputs[name].shape[-1]
            if last != channels:
                raise OnnxModelRefused(
                    f"{path}: output {name} has {last} channels but the metadata "
                    f"({cfg.name}, {cfg.num_classes} classes, la_mode={cfg.la_mode}) implies {channels}"
                )

    def preprocess(self, images: list[np.ndarray]):
        """Converted [H, W, 3] images -> [(indices, normalised padded batch, sizes in batch)], originals.

        Same steps as ``ATSSDetector.predict``: resize_to_fit, normalize, sub-batches of equal padded
        size (a scan's result must not depend on its batch neighbours), pad_batch.
        """
        originals, resized = [], []
        for i, im in enumerate(images):
            if not isinstance(im, np.ndarray) or im.ndim != 3 or im.shape[2] != 3:
                shape = getattr(im, "shape", type(im).__name__)
                raise BackendError(f"image {i}: expected a converted [H, W, 3] array, got {shape}")
            originals.append((int(im.shape[0]), int(im.shape[1])))
            resized.append(network_image(im, self.cfg.min_size, self.cfg.max_size))
        batches = []
        for idx in group_by_padded_size([t.shape for t in resized]):
            batch, sizes = pad_batch([resized[i] for i in idx])
            batches.append((idx, batch, sizes))
        return batches, originals

    def run_network(self, batch: np.ndarray) -> list[np.ndarray]:
        """The ORT graph on a normalised padded batch -> [cls_logits, bbox_reg, centerness]."""
        return self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(batch, np.float32)})

    def predict(self, images: list[np.ndarray]) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]:
        timings = {"preprocess": 0.0, "network": 0.0, "postprocess": 0.0}
        t0 = time.perf_counter()
        batches, originals = self.preprocess(images)
        timings["preprocess"] = time.perf_counter() - t0
        results: list[dict | None] = [None] * len(images)
        with self._lock:
            for idx, batch, sizes in batches:
                t0 = time.perf_counter()
                cls, reg, ctr = self.run_network(batch.numpy())
                t1 = time.perf_counter()
                timings["network"] += t1 - t0
                anchors, per_level = generate_anchors(feature_sizes(*batch.shape[-2:]))
                with torch.no_grad():
                    dets = postprocess_detections(
                        HeadOutputs(torch.from_numpy(cls), torch.from_numpy(reg), torch.from_numpy(ctr)),
                        anchors,
                        per_level,
                        sizes,
                        [originals[i] for i in idx],
                        self.cfg,
                    )
                for i, d in zip(idx, dets, strict=True):
                    results[i] = {
                        "boxes": d["boxes"].numpy().reshape(-1, 4).astype(np.float32),
                        "scores": d["scores"].numpy().reshape(-1).astype(np.float32),
                        "labels": d["labels"].numpy().astype(np.int64).reshape(-1),
                    }
                timings["postprocess"] += time.perf_counter() - t1
        return results, timings  # type: ignore[return-value]
