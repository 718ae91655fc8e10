"""ONNX export of ATSS+LA (model/onnx_export.py, `xscreen export`) and the ONNX Runtime backend vs torch.

The detector is a small LAcls/LAreg model whose head is re-initialised with larger weights (seeded), so
that the LA weights move well away from 0.5 and dozens of boxes of several classes pass the score
threshold: the comparisons below then check real detections, not an empty list.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.support.detectors import sharpen_head
from tests.support.unreadable import make_unreadable
from xscreen.cli import main as xscreen_main
from xscreen.inference.backend import BackendError, TorchBackend
from xscreen.inference.onnx_backend import OnnxBackend, OnnxModelRefused
from xscreen.model import build_detector, load_config, save_weights
from xscreen.model.classes import CLASS_NAMES
from xscreen.model.label_aware import label_aware_weights
from xscreen.model.onnx_export import INPUT_NAME, OUTPUT_NAMES, export_onnx
from xscreen.scans import convert_scan
from xscreen.training.synth.scene import make_scan

pytestmark = pytest.mark.timeout(300)

SIZES = ((256, 320), (320, 224), (288, 288))  # raw scan sizes (h, w): three different padded batches


def _detector(name: str, seed: int = 0, **overrides):
    """A small detector (ResNet-18, 64-channel FPN) with a 'sharpened' random head (std 0.05, bias -2)."""
    base = {"min_size": 256, "max_size": 320, "fpn_channels": 64}
    cfg = load_config(name).with_overrides(**{**base, **overrides})
    torch.manual_seed(seed)
    det = build_detector(cfg).eval()
    sharpen_head(det, std=0.05, scale_step=0.1)  # the per-level Scale enters LAreg's softmax
    return det


def _raw_scans(seed: int = 7) -> list[tuple[np.ndarray, np.ndarray]]:
    """(high, low) uint16 scans from the synthetic scanner, one per size in SIZES."""
    rng = np.random.default_rng(seed)
    return [(s.high, s.low) for s in (make_scan(rng, h, w) for h, w in SIZES)]


def _scans(seed: int = 7) -> list[np.ndarray]:
    return [convert_scan(high, low) for high, low in _raw_scans(seed)]


def _batch(det, image: np.ndarray) -> torch.Tensor:
    from xscreen.model.transform import normalize, pad_batch, resize_to_fit

    t = torch.from_numpy(image.transpose(2, 0, 1).copy())
    t, _ = resize_to_fit(t, None, det.cfg.min_size, det.cfg.max_size)
    return pad_batch([normalize(t)])[0]


@pytest.fixture(scope="module")
def lacls(tmp_path_factory):
    """(detector, weights path, sha256, onnx path): exported through the `xscreen export` command."""
    tmp = tmp_path_factory.mktemp("onnx")
    det = _detector("small_lacls")
    # Score threshold from the model's own scores on the test scans: every scan keeps at least
    # ~40 candidate locations before NMS, so the detections compared below are never trivially few.
    top = []
    for image in _scans():
        with torch.no_grad():
            cls, _, _ = det.forward_raw(_batch(det, image))
        top.append(float(torch.sigmoid(cls[0]).amax(dim=1).topk(40).values[-1]))
    det.cfg = det.cfg.with_overrides(candidate_score_thresh=round(min(top), 4))
    weights = tmp / "lacls.safetensors"
    sha = save_weights(det, weights, metadata={"name": "onnx-test-lacls", "version": "7.1"})
    out = tmp / "lacls.onnx"
    assert xscreen_main(["export", "--weights", str(weights), "--out", str(out), "--debug-la-outputs"]) == 0
    return det, weights, sha, out


def test_export_carries_metadata_dynamic_axes_and_passes_checker(lacls):
    det, _, sha, path = lacls
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == list(CLASS_NAMES)
    assert meta["weights_sha256"] == sha
    assert (meta["model_name"], meta["model_version"]) == ("onnx-test-lacls", "7.1")
    assert json.loads(meta["config"]) == json.loads(det.cfg.to_json())
    assert proto.opset_import[0].version >= 17
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3], f"batch/height/width must be dynamic, got {dims}"
    # the LA loop is in the graph: arg-max pseudo-labels and the backward convolutions
    ops = {n.op_type for n in proto.graph.node}
    assert {"ArgMax", "Equal", "Sigmoid", "Conv"} <= ops


def _flat(maps: list[torch.Tensor]) -> torch.Tensor:
    """Per-level [N, ch, h, w] (or [N, h, w]) -> [N, ch, sum(h*w)] (or [N, sum(h*w)]), levels P3..P7."""
    n = maps[0].shape[0]
    if maps[0].dim() == 3:
        return torch.cat([m.reshape(n, -1) for m in maps], dim=1)
    return torch.cat([m.reshape(n, m.shape[1], -1) for m in maps], dim=2)


AMBIGUITY = 2e-5  # |pre-ReLU| or top-score gap below which fp32 rounding may flip a discrete choice


def _ambiguous(det, feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per level [N, h, w]: locations whose LA gradient depends on a numerically ambiguous discrete choice.

    The LA gradient is piecewise smooth: a ReLU mask (pre-activation ~0) or an arg-max label (two
    top scores ~equal) may come out differently in ONNX Runtime and torch after ~1e-6 rounding
    differences, which changes the gradient in that unit's receptive field of the backward pass
    (radius k for the k-th ReLU, tower depth + 1 for the labels). Everywhere else the two must agree.
    """
    import torch.nn.functional as F

    head, mode = det.head, det.cfg.la_mode
    tower = head.cls_convs if mode == "cls" else head.reg_convs
    out = []
    with torch.no_grad():
        for level, x in enumerate(feats):
            amb = torch.zeros_like(x[:, 0], dtype=torch.bool)
            h, k = x, 0
            for m in tower:
                h = m(h)
                if isinstance(m, torch.nn.GroupNorm):
                    k += 1
                    near = (h.abs() < AMBIGUITY).any(dim=1, keepdim=True).float()
                    amb |= F.max_pool2d(near, 2 * k + 1, 1, k)[:, 0] > 0
            if mode == "cls":
                top = torch.sigmoid(head.atss_cls(h)).topk(3, dim=1).values
                gaps = torch.stack([top[:, 0] - top[:, 1], top[:, 1] - top[:, 2]], 1)  # label, y*
            else:
                z = head.scales[level](head.atss_reg(h))
                n, _, hh, ww = z.shape
                top = torch.softmax(z.reshape(n, 4, -1, hh, ww), dim=2).topk(2, dim=2).values
                gaps = top[:, :, 0] - top[:, :, 1]
            near = (gaps < AMBIGUITY).any(dim=1, keepdim=True).float()
            amb |= F.max_pool2d(near, 2 * k + 3, 1, k + 1)[:, 0] > 0
            out.append(amb)
    return out


def _check_raw_and_la(det, path: str, images: list[np.ndarray], rel_tol: float = 1e-4) -> None:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    for image in images:
        batch = _batch(det, image)
        got = dict(zip(names, sess.run(names, {INPUT_NAME: batch.numpy()}), strict=True))
        with torch.no_grad():
            ref = det.forward_raw(batch)
            feats = det.backbone(batch)
        cfg = det.cfg
        ref_w = label_aware_weights(  # autograd; the released heads' rules and the skip as in the model
            det.head,
            feats,
            cfg.la_mode,
            reg_max=cfg.reg_max,
            released=cfg.released,
            skip_label_grad=cfg.skip_label_grad,
        )
        ambiguous = _flat(_ambiguous(det, feats)).numpy()  # [N, A]
        assert ambiguous.mean() < 0.15, f"{ambiguous.mean():.1%} of locations ambiguous: test too weak"
        for k, w in enumerate(ref_w):
            if w[0] is None:  # w1 skipped (b = 0): not an output of the graph either
                assert f"la_w{k + 1}" not in got
                continue
            ref_k = _flat(w).numpy()
            # the weights are not trivially 0.5 everywhere: LA really reweights these features
            assert np.abs(ref_k - 0.5).max() > 0.01
            err = np.abs(got[f"la_w{k + 1}"] - ref_k).max(axis=1)  # [N, A]
            assert err[~ambiguous].max() < 1e-4, f"LA w{k + 1}: max |ORT - autograd| = {err.max():.2e}"
            assert err.max() < 0.05  # even where a flip happened, the weight stays close
        for name, r in zip(OUTPUT_NAMES, ref, strict=True):
            # [N, A, ...]: per location. On the machine this test was written on ORT matched torch to
            # rel_tol everywhere. On an AMD EPYC, LAreg's outputs differed at 8.15% of locations (bbox_reg),
            # by at most 1.3e-3 x scale. Traced (session 9): one ReLU of the first pass at level P4, whose
            # pre-activation is 9.2e-7 in float64, comes out on the other side in torch fp32; there, ORT
            # matched torch float64 to 8.4e-6 at every location, and torch fp32 differed from float64
            # exactly as from ORT. The flip's LA weight reaches the neighbours through the second pass's
            # convs and the whole level through GroupNorm, so the difference is not confined to a radius.
            # A bounded difference is allowed; a broken graph errs broadly and by far more.
            assert r.shape[:2] == ambiguous.shape, (name, tuple(r.shape))
            scale = max(1.0, float(r.abs().max()))
            err = np.abs(got[name] - r.numpy()).reshape(*ambiguous.shape, -1).max(axis=2)
            off = float((err > rel_tol * scale).mean())
            assert off < 0.15, f"{name}: {off:.2%} of locations off, max |ORT - torch| = {err.max():.2e}"
            assert err.max() < 2e-3 * scale, f"{name}: {err.max():.2e} where a choice flipped"


def test_lacls_la_weights_and_raw_outputs_match_autograd(lacls):
    det, _, _, path = lacls
    _check_raw_and_la(det, path, _scans()[:1])


def test_lareg_la_weights_and_raw_outputs_match_autograd(tmp_path):
    det = _detector("small_lareg", seed=1, min_size=224, max_size=288)
    path = export_onnx(
        det, tmp_path / "lareg.onnx", name="lareg", version="1", sha256="a" * 64, debug_la=True
    )
    _check_raw_and_la(det, path, _scans()[:1])


@pytest.mark.parametrize("name", ["small_lacls_release", "small_lareg_release"])
def test_released_heads_export_with_their_la_loop(name, tmp_path):
    """The released heads (docs/method.md §7): reg_conf quality branch, sigmoid-per-bin LAreg, and for LAcls
    (1.5, 0, 1) a graph without the label-gradient pass; ORT equals torch autograd."""
    det = _detector(name, seed=2, min_size=224, max_size=288)
    path = export_onnx(det, tmp_path / "rel.onnx", name="rel", version="1", sha256="b" * 64, debug_la=True)
    names = [o.name for o in onnx.load(str(path)).graph.output]
    assert names[3:] == (["la_w2"] if det.cfg.la_cls else ["la_w1"])
    # The LA weights keep the 1e-4 bound. The raw outputs get 1e-3: ORT's own convolution / GroupNorm
    # rounding (~3e-4 here, measured: the same graph run by torch is within 5e-6 of autograd) grows
    # through the twice-repeated regression tower of these sharpened random heads.
    _check_raw_and_la(det, path, _scans()[:1], rel_tol=1e-3)


def test_skipping_the_label_gradient_exports_a_smaller_graph_with_the_same_outputs(tmp_path):
    """(1.5, 0, 1): the graph without the g1 pass gives the outputs of the graph that computes it."""
    from xscreen.model.onnx_export import ExportableDetector

    det = _detector("small_lacls_release", seed=3, min_size=128, max_size=160)
    batch = _batch(det, _scans()[0])
    with torch.no_grad():
        skipped = ExportableDetector(det, skip_zero_terms=True)(batch)
        full = ExportableDetector(det, skip_zero_terms=False)(batch)
        ref = det.forward_raw(batch)
    for a, b, r in zip(skipped, full, ref, strict=True):
        # not bitwise: the full graph runs the backward convolutions on two stacked cotangents
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)
    path = export_onnx(det, tmp_path / "s.onnx", name="s", version="1", sha256="c" * 64)
    det_full = _detector("small_lacls_release", seed=3, min_size=128, max_size=160)
    det_full.cfg = det.cfg.with_overrides(la_coeffs=(1.5, 1e-30, 1.0))  # b != 0: g1 is computed
    path_full = export_onnx(det_full, tmp_path / "f.onnx", name="f", version="1", sha256="c" * 64)
    runs = []
    for p in (path, path_full):
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        runs.append(sess.run(list(OUTPUT_NAMES), {INPUT_NAME: batch.numpy()}))
    for a, b in zip(*runs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_released_lacls_int8_export_runs_and_tracks_fp32(tmp_path):
    from xscreen.model.onnx_quantize import network_inputs

    det = _detector("small_lacls_release", seed=4, min_size=128, max_size=160)
    images = _scans()
    path = export_onnx(
        det,
        tmp_path / "q.onnx",
        name="q",
        version="1",
        sha256="d" * 64,
        calibration=network_inputs(images, det.cfg),
        calibration_source="3 synthetic scans",
    )
    proto = onnx.load(str(path))
    assert {p.key: p.value for p in proto.metadata_props}["precision"] == "int8"
    assert "QuantizeLinear" in {n.op_type for n in proto.graph.node}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = _batch(det, images[0])
    got = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: batch.numpy()})
    with torch.no_grad():
        ref = det.forward_raw(batch)
    scores = [torch.sigmoid(torch.as_tensor(t)) for t in (got[0], ref.cls_logits)]
    err = (scores[0] - scores[1]).abs()
    assert float(err.mean()) < 0.02 and float(err.max()) < 0.25, (float(err.mean()), float(err.max()))


def _match(ref: dict, got: dict) -> None:
    """Same detections: one-to-one by label and IoU > 0.99, scores within 1e-3."""
    from torchvision.ops import box_iou

    assert len(got["scores"]) == len(ref["scores"])
    iou = box_iou(torch.from_numpy(ref["boxes"]), torch.from_numpy(got["boxes"])).numpy()
    iou[ref["labels"][:, None] != got["labels"][None, :]] = 0
    used = set()
    for i in range(len(ref["scores"])):
        j = int(iou[i].argmax())
        assert iou[i, j] > 0.99 and j not in used, f"torch detection {i} has no ONNX counterpart"
        used.add(j)
        assert abs(float(ref["scores"][i]) - float(got["scores"][j])) < 1e-3


def test_onnx_backend_gives_the_torch_detections(lacls):
    _, weights, sha, path = lacls
    images = _scans()
    torch_backend = TorchBackend(weights, "cpu")
    onnx_backend = OnnxBackend(path, "cpu", expected_sha256=sha, expected_class_names=CLASS_NAMES)
    assert onnx_backend.device == "cpu" and onnx_backend.info == torch_backend.info
    ref, _ = torch_backend.predict(images)
    got, stages = onnx_backend.predict(images)  # one call: three padded sizes -> three sub-batches
    assert set(stages) == {"preprocess", "network", "postprocess"}
    counts = [len(r["scores"]) for r in ref]
    assert all(c >= 5 for c in counts), f"too few detections to compare: {counts}"
    assert len({int(lab) for r in ref for lab in r["labels"]}) >= 3
    for r, g, image in zip(ref, got, images, strict=True):
        _match(r, g)
        h, w = image.shape[:2]  # boxes are in the scan's own pixels
        assert g["boxes"][:, 2].max() <= w + 1e-3 and g["boxes"][:, 3].max() <= h + 1e-3
    # a scan's answer does not depend on its batch neighbours
    alone, _ = onnx_backend.predict(images[1:2])
    _match(got[1], alone[0])


# ----------------------------------------------------------------------------- refusals


def _rewrite_metadata(src, dst, **changes) -> None:
    proto = onnx.load(str(src))
    meta = {p.key: p.value for p in proto.metadata_props}
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    del proto.metadata_props[:]
    for k, v in meta.items():
        e = proto.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(proto, str(dst))


def test_corrupt_and_foreign_files_are_refused(lacls, tmp_path):
    _, _, _, path = lacls
    with pytest.raises(OnnxModelRefused, match="not found"):
        OnnxBackend(tmp_path / "missing.onnx", "cpu")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"PK\x03\x04 this is a zip, not a protobuf" * 50)
    with pytest.raises(OnnxModelRefused, match="not a loadable ONNX model"):
        OnnxBackend(junk, "cpu")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(OnnxModelRefused, match="not a loadable ONNX model"):
        OnnxBackend(truncated, "cpu")
    # a valid ONNX model that is not an xscreen export (no metadata)
    x = onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["n", 3, "h", "w"])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3, "h", "w"])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", [INPUT_NAME], ["y"])], "g", [x], [y])
    foreign = tmp_path / "foreign.onnx"
    opset = [onnx.helper.make_opsetid("", 17)]
    onnx.save(onnx.helper.make_model(graph, opset_imports=opset, ir_version=8), foreign)
    with pytest.raises(OnnxModelRefused, match="not an xscreen detector export.*class_names"):
        OnnxBackend(foreign, "cpu")


def test_an_unreadable_onnx_file_says_permission_denied(lacls, tmp_path):
    """The exported model of a site that this process may not read: "permission denied" and its uid, in a
    child process that gets a real EACCES (tests/support/unreadable.py), not ORT's "no such file"."""
    locked = tmp_path / "locked.onnx"
    locked.write_bytes(lacls[3].read_bytes())
    prefix, whose = make_unreadable(locked)
    code = f"from xscreen.inference.onnx_backend import OnnxBackend; OnnxBackend({str(locked)!r}, 'cpu')"
    proc = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True)
    said = f"{locked}: permission denied: uid {os.geteuid()} needs read access to it (the file has {whose})"
    assert proc.returncode == 1 and f"OnnxModelRefused: {said}" in proc.stderr, proc.stderr[-2000:]


def test_mismatched_metadata_is_refused(lacls, tmp_path):
    det, _, sha, path = lacls
    bad = tmp_path / "bad.onnx"
    _rewrite_metadata(path, bad, weights_sha256=None)
    with pytest.raises(OnnxModelRefused, match="weights_sha256 missing"):
        OnnxBackend(bad, "cpu")
    _rewrite_metadata(path, bad, class_names=json.dumps(list(CLASS_NAMES[:-1])))
    with pytest.raises(OnnxModelRefused, match="class list mismatch"):
        OnnxBackend(bad, "cpu")
    # metadata consistent with itself but not with the graph: 11 classes vs a 12-channel classifier
    cfg11 = det.cfg.with_overrides(class_names=CLASS_NAMES[:-1])
    _rewrite_metadata(path, bad, class_names=json.dumps(list(CLASS_NAMES[:-1])), config=cfg11.to_json())
    with pytest.raises(OnnxModelRefused, match="cls_logits has 12 channels"):
        OnnxBackend(bad, "cpu")
    _rewrite_metadata(path, bad, config='{"name": "x", "depth": 7}')
    with pytest.raises(OnnxModelRefused, match="config metadata"):
        OnnxBackend(bad, "cpu")
    _rewrite_metadata(path, bad, xscreen_format_version="99")
    with pytest.raises(OnnxModelRefused, match="unsupported export format"):
        OnnxBackend(bad, "cpu")
    with pytest.raises(OnnxModelRefused, match="sha256 mismatch"):
        OnnxBackend(path, "cpu", expected_sha256="0" * 64)
    with pytest.raises(OnnxModelRefused, match="class list mismatch"):
        OnnxBackend(path, "cpu", expected_class_names=tuple(reversed(CLASS_NAMES)))


def test_export_and_detect_cli_errors_are_one_line(lacls, tmp_path, capsys):
    _, weights, _, path = lacls
    assert xscreen_main(["export", "--weights", str(tmp_path / "nope.safetensors"), "--out", "m.onnx"]) == 2
    assert xscreen_main(["export", "--weights", str(weights), "--out", str(tmp_path / "no" / "m.onnx")]) == 2
    assert xscreen_main(["export", "--weights", str(weights), "--out", str(tmp_path), "--opset", "17"]) == 2
    out = str(tmp_path / "m.onnx")
    assert xscreen_main(["export", "--weights", str(weights), "--out", out, "--opset", "11"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"xscreen export: error: {tmp_path / 'nope.safetensors'}: weights file not found",
        f"xscreen export: error: output directory {tmp_path / 'no'} does not exist",
        f"xscreen export: error: output path {tmp_path} is a directory; give a file name such as model.onnx",
        "xscreen export: error: opset 11 not supported: choose 17..20",
    ]
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00" * 64)
    scan = make_scan(np.random.default_rng(3), 64, 64)
    for name, im in (("high", scan.high), ("low", scan.low)):
        np.save(tmp_path / f"{name}.npy", im)
    args = ["detect", "--high", str(tmp_path / "high.npy"), "--low", str(tmp_path / "low.npy")]
    assert xscreen_main([*args, "--backend", "onnxruntime", "--onnx-path", str(junk), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"xscreen detect: error: {junk}: not a loadable ONNX model") and "\n" not in err


# ----------------------------------------------------------------------------- the service


@pytest.mark.slow  # two real servers
def test_service_answers_the_same_through_both_backends(lacls, tmp_path):
    """Two real `xscreen serve` processes (uvicorn on loopback): backend torch and backend onnxruntime."""
    import cv2

    from tests.support.service_fixtures import ServiceProcess, box_iou, post_scan

    _, weights, sha, path = lacls
    common = {"weights": weights, "device": "cpu", "score_threshold": 0.05, "max_batch_size": 2}
    servers = [
        ServiceProcess(tmp_path / "torch.log", backend="torch", **common),
        ServiceProcess(
            tmp_path / "ort.log",
            backend="onnxruntime",
            onnx_path=path,
            weights_sha256=sha,  # pins the export's weights too
            ort_graph_optimization="extended",
            ort_intra_op_threads=1,
            **common,
        ),
    ]
    try:
        for srv in servers:
            srv.start()
        for srv in servers:
            srv.wait_ready(timeout=180)
        for (h, w), scan in zip(SIZES[:2], _raw_scans()[:2], strict=True):
            high, low = (cv2.imencode(".png", im)[1].tobytes() for im in scan)
            answers = []
            for srv in servers:
                r = post_scan(srv.url, high, low, key=None, scan_id="same-scan")
                assert r.status_code == 200, r.text
                answers.append(r.json())
            a, b = answers
            assert (a["model"]["backend"], b["model"]["backend"]) == ("torch", "onnxruntime")
            for key in ("name", "version", "sha256"):
                assert a["model"][key] == b["model"][key]
            assert b["model"]["sha256"] == sha
            assert a["image"] == b["image"] == {"width": w, "height": h}
            assert a["scan_id"] == b["scan_id"] == "same-scan"
            assert len(a["detections"]) == len(b["detections"]) >= 3
            for da, db in zip(a["detections"], b["detections"], strict=True):
                assert (da["class_id"], da["class_name"], da["group"]) == (
                    db["class_id"],
                    db["class_name"],
                    db["group"],
                )
                assert abs(da["score"] - db["score"]) < 1e-3
                ba = np.array([[da["box"][k] for k in ("x1", "y1", "x2", "y2")]])
                bb = np.array([[db["box"][k] for k in ("x1", "y1", "x2", "y2")]])
                assert box_iou(ba, bb)[0, 0] > 0.99
            assert {"network", "postprocess"} <= set(b["timings"])
    finally:
        for srv in servers:
            srv.stop()


def test_make_backend_passes_the_onnx_settings(lacls):
    from xscreen.inference.backend import make_backend
    from xscreen.service.settings import load_settings

    _, _, sha, path = lacls
    settings = load_settings(
        backend="onnxruntime",
        onnx_path=path,
        device="cpu",
        ort_graph_optimization="basic",
        ort_intra_op_threads=1,
    )
    backend = make_backend(settings)
    assert isinstance(backend, OnnxBackend) and backend.info.sha256 == sha
    opts = backend.session.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"  # leaves cores to decoding
    assert backend.session.get_providers() == ["CPUExecutionProvider"]
    pinned = load_settings(backend="onnxruntime", onnx_path=path, device="cpu", weights_sha256="f" * 64)
    with pytest.raises(OnnxModelRefused, match="weights sha256 mismatch"):
        make_backend(pinned)


@pytest.mark.cuda  # skipped without a GPU by tests/conftest.py
def test_cuda_execution_provider_gives_the_cpu_detections(lacls):
    _, weights, _, path = lacls
    images = _scans()[:2]
    gpu = OnnxBackend(path, "cuda")
    assert gpu.device == "cuda" and gpu.session.get_providers()[0] == "CUDAExecutionProvider"
    ref, _ = TorchBackend(weights, "cpu").predict(images)
    got, _ = gpu.predict(images)
    for r, g in zip(ref, got, strict=True):
        _match(r, g)


def test_cuda_request_without_a_gpu_is_refused(lacls):
    _, _, _, path = lacls
    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendError, match="cuda"):
        OnnxBackend(path, "cuda")
    assert OnnxBackend(path, "auto").device == "cpu"
