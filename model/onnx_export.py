"""ONNX export of the full ATSS(+LA) inference graph, test-time LA loop included, and its metadata contract.

ONNX has no autograd, so the Label-aware gradients (docs/method.md §3/§4) are computed with the explicit
backward of model/explicit_grad.py; :class:`ExportableDetector` is ``ATSSDetector.forward_raw`` with
that substitution. The graph input is the normalised, zero-padded batch (model.transform), the outputs
are the raw head outputs; resizing, anchors and decoding stay in Python and are shared with the torch
path (``model.postprocess.postprocess_detections``).

Every exported file carries ``metadata_props`` (see :func:`onnx_metadata`) that
``xscreen.inference.onnx_backend.OnnxBackend`` checks before it serves the model.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from xscreen.model.config import ConfigError, DetectorConfig, config_from_json
from xscreen.model.explicit_grad import ExplicitTower, la_cls_grads, la_reg_grad
from xscreen.model.label_aware import reweight
from xscreen.model.onnx_io import DEFAULT_OPSET, INPUT_NAME, MAX_OPSET, OUTPUT_NAMES, OnnxModelError
from xscreen.model.onnx_quantize import network_inputs, quantize_int8
from xscreen.model.weights import load_weights

ONNX_FORMAT = "xscreen-onnx"
ONNX_FORMAT_VERSION = 1
DEBUG_OUTPUT_NAMES = ("la_w1", "la_w2")  # optional LA weights, for verification only
PRECISIONS = ("fp32", "int8")  # metadata "precision"; int8 = model.onnx_quantize (files without it: fp32)
REQUIRED_KEYS = (
    "xscreen_format",
    "xscreen_format_version",
    "model_name",
    "model_version",
    "weights_sha256",
    "class_names",
    "config",
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ExportableDetector(nn.Module):
    """``forward(batch) == detector.forward_raw(batch)`` (pseudo-label LA loop) without autograd.

    batch: normalised padded [N, 3, H, W]. Returns the fields of ``HeadOutputs`` as a plain tuple
    (cls_logits [N, A, C], bbox_reg [N, A, R], centerness [N, A, 1]) and, with ``debug_la``, the LA
    weights of every level flattened and concatenated: la_w1 [N, ch, sum(h*w)] (and la_w2 for LAcls).
    """

    def __init__(self, detector: nn.Module, debug_la: bool = False, skip_zero_terms: bool = True):
        super().__init__()
        self.detector = detector
        self.cfg: DetectorConfig = detector.cfg
        # LAcls with b = 0 (the released (1.5, 0, 1)): no label-gradient pass (docs/method.md §7.5)
        self.skip_label_grad = skip_zero_terms and self.cfg.skip_label_grad
        self.debug_la = debug_la and self.cfg.uses_la
        head = detector.head
        # kernels frozen at construction: export right after building this wrapper
        self._cls_tower = ExplicitTower(head.cls_convs, head.atss_cls, freeze_kernels=True)
        self._reg_tower = ExplicitTower(head.reg_convs, head.atss_reg, freeze_kernels=True)

    def la_weights(self, x: Tensor, level: int) -> list[Tensor | None]:
        """[w1, w2] (LAcls; w1 None when skipped) or [w1] (LAreg) for one level's head input,
        pseudo-labels (Sec. IV-D)."""
        if self.cfg.la_cls:
            g1, g2 = la_cls_grads(x, self._cls_tower, label_grad=not self.skip_label_grad)
            return [None if g1 is None else torch.sigmoid(g1), torch.sigmoid(g2)]
        # LAreg's first prediction is one regression-tower pass, the per-level Scale applied to the
        # bin logits before the softmax (model/label_aware.py _reg_logits, head.reg_outputs); the
        # released head takes a sigmoid per bin instead (docs/method.md §7.6).
        scale = self.detector.head.scales[level].scale
        activation = "sigmoid" if self.cfg.released else "softmax"
        g = la_reg_grad(x, self._reg_tower, self.cfg.reg_max + 1, logit_scale=scale, activation=activation)
        return [torch.sigmoid(g)]

    def forward(self, batch: Tensor):
        head, cfg = self.detector.head, self.cfg
        feats = self.detector.backbone(batch)
        if not cfg.uses_la:
            per_level = head.forward_plain(feats)
            weights: list[list[Tensor]] = []
        else:
            per_level, weights = [], []
            for level, x in enumerate(feats):
                w = self.la_weights(x, level)
                weights.append(w)
                x_new = reweight(x, w, cfg.la_coeffs)  # Eq. 7
                per_level.append(head.level_outputs(x_new, level, repeat=cfg.reg_tower_repeat))
        n = batch.shape[0]
        # the same flattening as ATSSDetector.forward_raw; a plain tuple for the tracer
        outputs = tuple(head.flatten_levels(per_level, n))
        if self.debug_la:
            ch = cfg.fpn_channels
            for k in range(len(weights[0])):
                if weights[0][k] is not None:  # a skipped w1 has no output (output_names)
                    outputs += (torch.cat([w[k].reshape(n, ch, -1) for w in weights], dim=2),)
        return outputs


def output_names(cfg: DetectorConfig, debug_la: bool = False) -> list[str]:
    names = list(OUTPUT_NAMES)
    if debug_la and cfg.uses_la:
        if cfg.la_reg:
            names.append(DEBUG_OUTPUT_NAMES[0])
        else:  # no la_w1 when its pass is skipped (b = 0, docs/method.md §7.5)
            names += list(DEBUG_OUTPUT_NAMES[1:] if cfg.skip_label_grad else DEBUG_OUTPUT_NAMES)
    return names


def onnx_metadata(
    cfg: DetectorConfig,
    *,
    name: str,
    version: str,
    sha256: str,
    opset: int,
    precision: str = "fp32",
    calibration: str | None = None,
    operating_point: dict | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` of an exported file (all values are strings).

    ``operating_point``: the weights' own (model.weights), stored as ``score_threshold`` and the JSON
    ``operating_point``; files without them are served at the legacy default threshold.
    """
    if precision not in PRECISIONS:
        raise OnnxModelError(f"unknown precision {precision!r} (expected one of {', '.join(PRECISIONS)})")
    extra = {"calibration": calibration} if calibration else {}
    if operating_point is not None:
        extra["score_threshold"] = repr(float(operating_point["score_threshold"]))
        extra["operating_point"] = json.dumps(operating_point, sort_keys=True)
    return {
        "xscreen_format": ONNX_FORMAT,
        "xscreen_format_version": str(ONNX_FORMAT_VERSION),
        "model_name": name,
        "model_version": version,
        "weights_sha256": sha256,
        "class_names": json.dumps(list(cfg.class_names)),
        "config": cfg.to_json(),
        "la_mode": cfg.la_mode,
        "opset": str(opset),
        "input": f"{INPUT_NAME}: float32 [N,3,H,W], ImageNet-normalised 0..255 image, H,W multiples of 32",
        "outputs": json.dumps(OUTPUT_NAMES),
        "precision": precision,
        **extra,
    }


def apply_metadata(proto, meta: dict[str, str]) -> None:
    """Replace an ONNX ModelProto's ``metadata_props`` with ``meta``."""
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


@dataclass(frozen=True)
class OnnxModelMeta:
    """The validated metadata of an exported file."""

    config: DetectorConfig
    name: str
    version: str
    sha256: str
    class_names: tuple[str, ...]
    raw: dict[str, str]
    precision: str = "fp32"
    score_threshold: float | None = None  # None: the export records none (made before thresholds)


def parse_onnx_metadata(meta: dict[str, str], source: str = "onnx model") -> OnnxModelMeta:
    """Validate ``metadata_props`` of an exported file; OnnxModelError with the reason otherwise."""
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise OnnxModelError(
            f"{source}: not an xscreen detector export, metadata key(s) {', '.join(missing)} missing "
            "(create the file with `xscreen export`)"
        )
    if meta["xscreen_format"] != ONNX_FORMAT or meta["xscreen_format_version"] != str(ONNX_FORMAT_VERSION):
        raise OnnxModelError(
            f"{source}: unsupported export format {meta['xscreen_format']!r} version "
            f"{meta['xscreen_format_version']!r} (expected {ONNX_FORMAT!r} version {ONNX_FORMAT_VERSION})"
        )
    try:
        cfg = config_from_json(meta["config"], source=f"{source} (config metadata)")
    except ConfigError as exc:
        raise OnnxModelError(str(exc)) from None
    try:
        names = json.loads(meta["class_names"])
    except json.JSONDecodeError:
        names = None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise OnnxModelError(f"{source}: metadata class_names is not a JSON list of class names")
    if tuple(names) != tuple(cfg.class_names):
        raise OnnxModelError(
            f"{source}: class list mismatch: metadata class_names has {len(names)} classes {names} "
            f"but the stored config has {len(cfg.class_names)} {list(cfg.class_names)}"
        )
    sha = meta["weights_sha256"].lower()
    if not _SHA256.match(sha):
        raise OnnxModelError(f"{source}: metadata weights_sha256 is not a sha256 hex digest")
    precision = meta.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise OnnxModelError(
            f"{source}: metadata precision {precision!r} is not one of {', '.join(PRECISIONS)}"
        )
    threshold = None
    if "score_threshold" in meta:
        try:
            threshold = float(meta["score_threshold"])
        except ValueError:
            threshold = -1.0
        if not 0.0 <= threshold <= 1.0:
            raise OnnxModelError(
                f"{source}: metadata score_threshold {meta['score_threshold']!r} is not a number in [0, 1]"
            )
    return OnnxModelMeta(
        config=cfg,
        name=meta["model_name"],
        version=meta["model_version"],
        sha256=sha,
        class_names=tuple(names),
        raw=dict(meta),
        precision=precision,
        score_threshold=threshold,
    )


def _example_batch(cfg: DetectorConfig) -> Tensor:
    # Two images of a non-square size so that no axis is specialised by the tracer.
    h = max(64, (min(cfg.min_size, 256) // 32) * 32)
    return torch.randn(2, 3, h, h + 32) * 0.5


def export_onnx(
    detector: nn.Module,
    out_path: str | Path,
    *,
    name: str,
    version: str,
    sha256: str,
    opset: int = DEFAULT_OPSET,
    debug_la: bool = False,
    calibration: list | None = None,
    calibration_source: str | None = None,
    operating_point: dict | None = None,
) -> Path:
    """Export ``detector`` (an ATSSDetector) to ``out_path`` with dynamic batch/height/width.

    Uses the TorchScript-based exporter (``dynamo=False``); adds the metadata; runs onnx.checker.
    ``calibration``: network-input batches (model.onnx_quantize.network_inputs); when given, the file
    written is the static int8 version of the graph (model.onnx_quantize), metadata precision "int8"
    and ``calibration`` = ``calibration_source``.
    """
    path, _ = _export(
        detector,
        out_path,
        name=name,
        version=version,
        sha256=sha256,
        opset=opset,
        debug_la=debug_la,
        calibration=calibration,
        calibration_source=calibration_source,
        operating_point=operating_point,
    )
    return path


def _export(
    detector: nn.Module,
    out_path: str | Path,
    *,
    name: str,
    version: str,
    sha256: str,
    opset: int,
    debug_la: bool,
    calibration: list | None,
    calibration_source: str | None,
    operating_point: dict | None = None,
) -> tuple[Path, dict[str, str]]:
    """``export_onnx``, also returning the metadata written into the file."""
    import onnx

    out_path = _checked_out_path(out_path, opset)
    cfg: DetectorConfig = detector.cfg
    param = next(detector.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        detector = copy.deepcopy(detector).float().cpu()  # export in fp32 on CPU; leave the caller's model
    tmp = out_path.with_name(out_path.name + ".partial")
    tmp_int8 = out_path.with_name(out_path.name + ".int8.partial")
    try:
        _trace(detector, tmp, opset=opset, debug_la=debug_la)
        proto = onnx.load(str(tmp))
        _state_channel_dims(proto, detector)
        precision = "fp32"
        if calibration is not None:
            onnx.save(proto, str(tmp))
            proto = onnx.load(str(quantize_int8(tmp, tmp_int8, calibration)))
            precision = "int8"
        meta = onnx_metadata(
            cfg,
            name=name,
            version=version,
            sha256=sha256,
            opset=opset,
            precision=precision,
            calibration=calibration_source if calibration is not None else None,
            operating_point=operating_point,
        )
        apply_metadata(proto, meta)
        proto.doc_string = (
            f"xscreen {cfg.name} ({cfg.la_mode=}) exported with the explicit LA backward, {precision}"
        )
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(out_path))
    finally:
        tmp.unlink(missing_ok=True)
        tmp_int8.unlink(missing_ok=True)
    return out_path, meta


def _checked_out_path(out_path: str | Path, opset: int) -> Path:
    """``out_path`` as a Path, after checking the opset and that the file can be written there."""
    if not DEFAULT_OPSET <= opset <= MAX_OPSET:
        raise OnnxModelError(f"opset {opset} not supported: choose {DEFAULT_OPSET}..{MAX_OPSET}")
    out_path = Path(out_path)
    if not out_path.parent.is_dir():
        raise OnnxModelError(f"output directory {out_path.parent} does not exist")
    if out_path.is_dir():
        raise OnnxModelError(f"output path {out_path} is a directory; give a file name such as model.onnx")
    return out_path


def _trace(detector: nn.Module, path: Path, *, opset: int, debug_la: bool) -> None:
    """Write the traced graph of ``detector`` (fp32, CPU) to ``path``, batch/height/width dynamic."""
    cfg: DetectorConfig = detector.cfg
    wrapper = ExportableDetector(detector.eval(), debug_la=debug_la).eval()
    outputs = output_names(cfg, debug_la)
    dynamic = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    for o in outputs:
        dynamic[o] = {0: "batch", 1 if o in OUTPUT_NAMES else 2: "anchors"}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about Python ints taken from shapes (channel counts, fixed by the
        # architecture) and the legacy exporter about its deprecation; neither concerns this graph,
        # whose dynamic axes are checked by tests/inference/test_onnx_export.py on several input sizes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings(
            "ignore", message=".*legacy TorchScript-based ONNX", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            wrapper,
            (_example_batch(cfg),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _state_channel_dims(proto, detector: nn.Module) -> None:
    """Write the fixed channel sizes into the graph outputs' shapes.

    Channel axes are fixed by the architecture; the tracer leaves them symbolic after the reshape, so
    state them (the ONNX backend checks them against the class list).
    """
    cfg: DetectorConfig = detector.cfg
    channels = {
        "cls_logits": cfg.num_classes,
        "bbox_reg": detector.head.atss_reg.out_channels,
        "centerness": 1,
    }
    for out in proto.graph.output:
        dims = out.type.tensor_type.shape.dim
        if out.name in channels:
            dims[2].dim_value = channels[out.name]
        elif out.name in DEBUG_OUTPUT_NAMES:
            dims[1].dim_value = cfg.fpn_channels


def export_weights(
    weights: str | Path,
    out_path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    debug_la: bool = False,
    calibration=None,
) -> tuple[Path, OnnxModelMeta, nn.Module]:
    """Load a safetensors weights file (model.weights) and export it -> (path, its metadata, the detector).

    ``calibration``: for an int8 export, a function config -> (converted [H, W, 3] images, a line
    saying where they came from), e.g. xscreen.training.calibration.synthetic_calibration_images.
    """
    detector, info = load_weights(weights, device="cpu")
    batches, source = None, None
    if calibration is not None:
        images, source = calibration(info.config)
        batches = network_inputs(images, info.config)
    path, meta = _export(
        detector,
        out_path,
        name=str(info.name),
        version=str(info.version),
        sha256=str(info.sha256),
        opset=opset,
        debug_la=debug_la,
        calibration=batches,
        calibration_source=source,
        operating_point=info.operating_point,
    )
    return path, parse_onnx_metadata(meta, str(path)), detector
