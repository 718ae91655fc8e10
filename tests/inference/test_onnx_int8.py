"""Static int8 export (`xscreen export --int8`, model/onnx_quantize.py), `xscreen eval --onnx`, serving.

Uses the bundled trained weights, so the comparison with torch is on real detections: at score 0.1 the
bundled model finds a few hundred boxes on 12 synthetic 256 px scans.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torchvision.ops import box_iou

from xscreen.cli import main as xscreen_main
from xscreen.inference.backend import TorchBackend
from xscreen.inference.onnx_backend import OnnxBackend
from xscreen.inference.settings import bundled_weights_path
from xscreen.model.onnx_export import OnnxModelError, onnx_metadata, parse_onnx_metadata
from xscreen.model.weights import read_header
from xscreen.scans import convert_scan
from xscreen.training.synth.scene import make_scan
from xscreen.training.synth.writer import SynthConfig, write_dataset

# slow: fp32 and int8 exports of the bundled weights
pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

WEIGHTS = bundled_weights_path()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(fp32 path, int8 path), both written by the `xscreen export` command."""
    tmp = tmp_path_factory.mktemp("int8")
    fp32, int8 = tmp / "fp32.onnx", tmp / "int8.onnx"
    assert xscreen_main(["export", "--weights", str(WEIGHTS), "--out", str(fp32), "--no-verify"]) == 0
    args = ["export", "--weights", str(WEIGHTS), "--out", str(int8), "--int8", "--calibration-images", "8"]
    assert xscreen_main(args) == 0
    return fp32, int8


def _scans(n: int = 12, seed: int = 123) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [convert_scan(s.high, s.low) for s in (make_scan(rng, 256, 256) for _ in range(n))]


def test_int8_file_is_a_quantised_graph_with_its_metadata(exports):
    fp32, int8 = exports
    proto = onnx.load(str(int8))
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    convs = ops.count("Conv")
    assert convs == sum(n.op_type == "Conv" for n in onnx.load(str(fp32)).graph.node)  # every conv kept,
    # each between quantise/dequantise pairs (input and output) and with a dequantised int8 weight
    assert ops.count("QuantizeLinear") >= convs and ops.count("DequantizeLinear") >= 2 * convs
    meta = parse_onnx_metadata({p.key: p.value for p in proto.metadata_props}, str(int8))
    side = json.loads(read_header(WEIGHTS)["config"])["min_size"]  # calibration scans at the model's input
    assert meta.precision == "int8" and meta.raw["calibration"] == f"8 synthetic {side}x{side} scans, seed 0"
    assert meta.sha256 == TorchBackend(WEIGHTS, "cpu").info.sha256
    fp32_meta = parse_onnx_metadata({p.key: p.value for p in onnx.load(str(fp32)).metadata_props})
    assert fp32_meta.precision == "fp32" and "calibration" not in fp32_meta.raw
    # int8 weights: the file is well under the fp32 one (25.3 MB fp16 safetensors -> ~50 MB fp32 graph)
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size


def test_int8_detections_agree_with_torch(exports):
    """>= 95 % of torch's detections (score >= 0.1) have an int8 twin of the same class at IoU >= 0.7."""
    _, int8 = exports
    images = _scans()
    ref, _ = TorchBackend(WEIGHTS, "cpu").predict(images)
    got, _ = OnnxBackend(int8, "cpu").predict(images)
    total, matched, diffs = 0, 0, []
    for r, g in zip(ref, got, strict=True):
        keep = r["scores"] >= 0.1
        boxes, scores, labels = r["boxes"][keep], r["scores"][keep], r["labels"][keep]
        if not len(boxes) or not len(g["boxes"]):
            total += len(boxes)
            continue
        iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(g["boxes"])).numpy()
        iou[labels[:, None] != g["labels"][None, :]] = 0.0
        for i in range(len(boxes)):
            total += 1
            j = int(iou[i].argmax())
            if iou[i, j] >= 0.7:
                matched += 1
                diffs.append(abs(float(g["scores"][j]) - float(scores[i])))
    print(
        f"int8 vs torch: {matched} of {total} detections (score >= 0.1) matched; score difference "
        f"median {np.median(diffs):.4f}, max {max(diffs):.3f}"
    )
    assert total >= 100, f"only {total} torch detections: the comparison would be too thin"
    assert matched >= 0.95 * total, f"{matched} of {total} torch detections matched by int8"
    assert float(np.median(diffs)) < 0.01 and max(diffs) < 0.1


def test_int8_served_by_a_real_server_and_reported(exports, tmp_path):
    """`xscreen serve` on the int8 file: detections, and precision in the response and the metric."""
    import cv2
    import requests

    from tests.support.service_fixtures import ServiceProcess, metric_value, post_scan

    _, int8 = exports
    assert TorchBackend(WEIGHTS, "cpu").info.precision == "fp32"
    srv = ServiceProcess(
        tmp_path / "int8.log",
        backend="onnxruntime",
        onnx_path=int8,
        weights=WEIGHTS,
        device="cpu",
        score_threshold=0.1,
    )
    try:
        srv.start()
        srv.wait_ready(timeout=180)
        scan = make_scan(np.random.default_rng(123), 256, 256)
        high, low = (cv2.imencode(".png", im)[1].tobytes() for im in (scan.high, scan.low))
        r = post_scan(srv.url, high, low, key=None)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"]["backend"] == "onnxruntime" and body["model"]["precision"] == "int8"
        assert len(body["detections"]) >= 5
        text = requests.get(srv.url + "/metrics", timeout=10).text
        assert metric_value(text, "xscreen_model_info", precision="int8", backend="onnxruntime") == 1
    finally:
        srv.stop()


def test_eval_through_onnx_matches_torch_for_fp32(exports, tmp_path, capsys):
    """`xscreen eval --onnx` (fp32) prints exactly the metrics of `--weights`; int8 prints its own table."""
    fp32, int8 = exports
    data = tmp_path / "data"
    cfg = SynthConfig(images=10, seed=4, width=256, height=256, splits=(0.0, 0.0, 1.0))
    write_dataset(cfg, data, workers=1, progress=False)
    tables = {}
    for flag, model in (("--weights", WEIGHTS), ("--onnx", fp32), ("--onnx", int8)):
        assert xscreen_main(["eval", flag, str(model), "--data", str(data), "--split", "test"]) == 0
        tables[str(model)] = capsys.readouterr().out
    assert "| mAP |" in tables[str(WEIGHTS)]
    assert tables[str(fp32)] == tables[str(WEIGHTS)]
    assert "| mAP |" in tables[str(int8)]


def test_bad_int8_and_eval_inputs_are_one_line_errors(exports, tmp_path, capsys):
    fp32, _ = exports
    out = str(tmp_path / "m.onnx")
    base = ["export", "--weights", str(WEIGHTS), "--out", out]
    assert xscreen_main([*base, "--int8", "--calibration-images", "0"]) == 2
    assert xscreen_main([*base, "--int8", "--calibration-seed", "-1"]) == 2
    assert xscreen_main([*base, "--int8", "--calibration-data", str(tmp_path / "none")]) == 2
    assert xscreen_main([*base, "--calibration-data", str(tmp_path)]) == 2
    (tmp_path / "empty").mkdir()
    assert xscreen_main([*base, "--int8", "--calibration-data", str(tmp_path / "empty")]) == 2
    data = ["--data", str(tmp_path)]
    assert xscreen_main(["eval", "--weights", str(WEIGHTS), "--onnx", str(fp32), *data]) == 2
    assert xscreen_main(["eval", "--onnx", str(tmp_path / "missing.onnx"), *data]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[:4] == [
        "xscreen export: error: --calibration-images must be at least 1, got 0",
        "xscreen export: error: --calibration-seed must be >= 0, got -1",
        f"xscreen export: error: --calibration-data: {tmp_path / 'none'} is not a directory",
        "xscreen export: error: --calibration-data only applies with --int8",
    ]
    assert (
        err[4]
        == f"xscreen export: error: calibration data: image folder not found: {tmp_path}/empty/images/train"
    )
    assert err[5:] == [
        "xscreen eval: error: give one of --weights, --onnx or --detections, not --weights and --onnx",
        f"xscreen eval: error: ONNX model file not found: {tmp_path / 'missing.onnx'}",
    ]
    assert not (tmp_path / "m.onnx").exists()


def test_unknown_precision_in_metadata_is_refused(exports):
    fp32, _ = exports
    meta = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    with pytest.raises(OnnxModelError, match="metadata precision 'int4' is not one of fp32, int8"):
        parse_onnx_metadata({**meta, "precision": "int4"}, "m.onnx")
    cfg = parse_onnx_metadata(meta).config
    with pytest.raises(OnnxModelError, match="unknown precision 'fp8'"):
        onnx_metadata(cfg, name="x", version="1", sha256="0" * 64, opset=17, precision="fp8")


@pytest.mark.parametrize("variant", ["small_lareg", "small_atss"])
def test_int8_export_of_lareg_and_plain_atss(variant, tmp_path):
    """The int8 path is not LAcls-specific: LAreg (softmax over bins) and no-LA graphs quantise and run."""
    import onnxruntime as ort

    from xscreen.model import build_detector, load_config
    from xscreen.model.onnx_export import INPUT_NAME, OUTPUT_NAMES, export_onnx
    from xscreen.model.onnx_quantize import network_inputs
    from xscreen.training.calibration import synthetic_calibration_images

    cfg = load_config(variant).with_overrides(min_size=128, max_size=128, fpn_channels=64)
    torch.manual_seed(0)
    det = build_detector(cfg).eval()
    calib = network_inputs(synthetic_calibration_images(cfg, 2), cfg)
    path = export_onnx(
        det, tmp_path / "m.onnx", name=variant, version="t", sha256="0" * 64, calibration=calib
    )
    proto = onnx.load(str(path))
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    assert parse_onnx_metadata({p.key: p.value for p in proto.metadata_props}).precision == "int8"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: calib[0]})
    with torch.no_grad():
        ref = det.forward_raw(torch.from_numpy(calib[0]))
    for g, r in zip(got, ref, strict=True):
        assert g.shape == tuple(r.shape)
        # on inputs like the calibration scans, quantisation moves raw outputs by a few hundredths
        assert 0 < float(np.abs(g - r.numpy()).max()) < 0.3


def test_detect_cli_on_the_int8_export_names_it(exports, tmp_path, capsys):
    _, int8 = exports
    scan = make_scan(np.random.default_rng(123), 256, 256)
    np.save(tmp_path / "h.npy", scan.high)
    np.save(tmp_path / "l.npy", scan.low)
    common = [
        "detect",
        "--high",
        str(tmp_path / "h.npy"),
        "--low",
        str(tmp_path / "l.npy"),
        "--score-threshold",
        "0.1",
    ]
    assert (
        xscreen_main([*common, "--backend", "onnxruntime", "--onnx-path", str(int8), "--device", "cpu"]) == 0
    )
    first = capsys.readouterr().out.splitlines()[0]
    count, rest = first.split(" ", 1)
    name = read_header(WEIGHTS)["name"]
    assert rest.startswith(f"detection(s) in 256x256 scan ({name}, onnxruntime int8, cpu, ")
    assert int(count) >= 5
