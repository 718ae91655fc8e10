"""`xscreen import-mmdet`: the authors' released checkpoint -> xscreen weights, served and exported.

Checkpoints are built in mmdetection's key names and shapes (tests/support/mmdet_release.py's
``mmdet_state_dict``: random weights, ResNet-18, 128-channel FPN, 2 convs per tower, i.e. the geometry of
the bundled ``small_*_release`` configs) with meta CLASSES in the fork's order (docs/method.md §7.9).
The R-50 release configs are checked by building the detector without a forward pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import tests.support.release_reference as ref
from tests.support.mmdet_release import H, W, mmdet_state_dict, reference_outputs, scan_images
from xscreen.cli import main
from xscreen.commands.import_mmdet import ImportCheckError, build_imported
from xscreen.model import load_config
from xscreen.model.classes import CLASS_NAMES
from xscreen.model.config import LEGACY_SCORE_THRESHOLD
from xscreen.model.mmdet_checkpoint import MmdetCheckpoint, class_permutation
from xscreen.model.mmdet_keys import mmdet_to_xscreen_state_dict
from xscreen.model.transform import pad_batch
from xscreen.model.weights import load_weights

C = 128  # the small_*_release configs' FPN width
# The fork's CLASSES tuple (docs/method.md §7.9), as mmdetection writes it into meta.
FORK_CLASSES = (
    "blade", "scissors", "knife", "dagger", "SwissArmyKnife", "PlasticBottle",
    "Cans", "VacuumCup", "GlassBottle", "CartonDrinks", "Tin", "SprayCans",
)  # fmt: skip
HEADS = {"lacls": ("small_lacls_release", (4, 16)), "lareg": ("small_lareg_release", (4, 64))}
ERR = "xscreen import-mmdet: error: "


def save_ckpt(path: Path, sd: dict, classes=FORK_CLASSES) -> Path:
    meta = {"mmdet_version": "2.12.0", "epoch": 12, "CLASSES": classes} if classes else {"epoch": 12}
    torch.save({"meta": meta, "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


@pytest.fixture(scope="module")
def small_sd():
    return {head: mmdet_state_dict(head, channels=C, conf=conf) for head, (_, conf) in HEADS.items()}


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory, small_sd):
    d = tmp_path_factory.mktemp("ckpt")
    for head, sd in small_sd.items():
        save_ckpt(d / f"{head}.pth", sd)
    return d


def parity_config(tmp: Path, name: str) -> Path:
    """The bundled small release config at the reference tests' scan size (no resizing)."""
    cfg = load_config(name).with_overrides(
        name=f"{name}_parity", min_size=H, max_size=W, candidate_score_thresh=0.05
    )
    path = tmp / f"{name}_parity.json"
    path.write_text(cfg.to_json())
    return path


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main(["import-mmdet", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# ----------------------------------------------------------------------------- the happy path


@pytest.mark.parametrize("head", list(HEADS))
def test_import_maps_permutes_and_reproduces_the_released_detections(
    head, small_sd, ckpt_dir, tmp_path, capsys
):
    config, _ = HEADS[head]
    sd, src = small_sd[head], ckpt_dir / f"{head}.pth"
    out = tmp_path / "imported.safetensors"
    rc, stdout, err = cli(capsys, src, "--config", parity_config(tmp_path, config), "--out", out)
    assert rc == 0, err
    model, info = load_weights(out)

    # (a) every tensor equals the source after mapping (classifier rows permuted by name)
    perm = class_permutation(FORK_CLASSES, "fork")
    mapped = mmdet_to_xscreen_state_dict(sd)
    own = model.state_dict()
    assert set(own) == set(mapped)
    for k, v in own.items():
        want = mapped[k][perm] if k.startswith("head.atss_cls.") else mapped[k]
        assert torch.equal(v, want), k
    # (b) the fork's 'scissors' row (1) is xscreen's 'scissors' class (3); 'Tin' (10) is 'tin' (4)
    for fork_row, name in ((1, "scissors"), (10, "tin"), (4, "swiss army knife"), (0, "blade")):
        k = CLASS_NAMES.index(name)
        assert torch.equal(own["head.atss_cls.weight"][k], sd["bbox_head.atss_cls.weight"][fork_row])
        assert torch.equal(own["head.atss_cls.bias"][k], sd["bbox_head.atss_cls.bias"][fork_row])

    # what the file records
    meta = info.metadata
    assert meta["source"]["file"] == f"{head}.pth"
    assert meta["source"]["file_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert meta["source"]["mmdet_version"] == "2.12.0"
    assert meta["head_version"] == head and info.name == head
    assert "meta CLASSES" in meta["class_order"]["assumed"]
    assert meta["class_order"]["checkpoint_rows"] == list(FORK_CLASSES)
    assert meta["class_order"]["row_of_each_class"]["scissors"] == 1
    assert info.operating_point["score_threshold"] == LEGACY_SCORE_THRESHOLD == 0.3
    assert info.operating_point["rule"] == "import-default"
    assert "xscreen threshold" in info.operating_point["note"]
    assert info.config.name == f"{config}_parity" and info.config.released
    # the summary: head, class order, sha256, threshold, next steps
    assert (
        f"sha256 {info.sha256}" in stdout and "class order assumed: the checkpoint's meta CLASSES" in stdout
    )
    assert "scissors <- 1 'scissors'" in stdout and "tin <- 10 'Tin'" in stdout
    assert "operating threshold 0.3 (import-default)" in stdout
    for step in ("xscreen threshold", "xscreen eval", "xscreen serve", "xscreen export"):
        assert step in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imported.safetensors", f"{config}_parity.json"]

    # (c) detections equal the reference forward of the released code on the same checkpoint
    images = scan_images()[:2]
    batch, sizes = pad_batch(model.resize_and_normalize(images))
    assert sizes == [(H, W)] * 2
    _, outs = reference_outputs(sd, head, batch)
    with torch.inference_mode():
        dets = model.predict(images)
    inverse = torch.tensor([perm.index(r) for r in range(12)])  # fork row -> xscreen class
    for i, d in enumerate(dets):
        boxes, scores, labels = ref.get_bboxes_single(
            [o[0][i].detach() for o in outs],
            [o[1][i].detach() for o in outs],
            [o[2][i].detach() for o in outs],
            (H, W),
            (1.0, 1.0),
        )
        assert len(scores) >= 5 and len(d["scores"]) == len(scores)
        # Pair each detection with a reference one of the same class and box: detections whose scores
        # nearly tie may come out in another order between the two forwards (seen once in a loaded CI
        # run, not when run alone), so the order is not compared, the pairing is.
        ref_labels = inverse[labels]
        box_gap = (d["boxes"][:, None, :] - boxes[None, :, :]).abs().amax(dim=2)
        cost = box_gap + 1e3 * (d["labels"][:, None] != ref_labels[None, :])
        pair = cost.argmin(dim=1)
        assert len(set(pair.tolist())) == len(pair), "two detections paired with one reference detection"
        assert torch.equal(d["labels"], ref_labels[pair])
        assert box_gap[torch.arange(len(pair)), pair].max() <= 0.05
        assert (d["scores"] - scores[pair]).abs().max() <= 5e-4  # 1.0e-4 seen under CI load


def test_classes_json_order_and_score_threshold_and_force(ckpt_dir, tmp_path, capsys):
    """--classes-json decides the rows (not meta CLASSES); --score-threshold is recorded; --force replaces."""
    src = ckpt_dir / "lacls.pth"
    cats = [{"id": 1 + i, "name": n} for i, n in enumerate(reversed(CLASS_NAMES))]
    ann = tmp_path / "instances_test.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"old")
    args = [src, "--config", "small_lacls_release", "--classes-json", ann, "--out", out]
    rc, _, err = cli(capsys, *args, "--score-threshold", "0.42", "--force", "--name", "released-lacls")
    assert rc == 0, err
    model, info = load_weights(out)
    sd = torch.load(src, weights_only=True)["state_dict"]
    # the json lists the classes in reverse: xscreen class k is checkpoint row 11 - k
    assert torch.equal(model.state_dict()["head.atss_cls.weight"], sd["bbox_head.atss_cls.weight"].flip(0))
    assert "categories order of" in info.metadata["class_order"]["assumed"]
    assert info.operating_point["score_threshold"] == 0.42 and info.operating_point["rule"] == "manual"
    assert info.name == "released-lacls"


@pytest.mark.parametrize(
    ("name", "head", "conf"),
    [("atss_lacls_r50_release", "lacls", (4, 16)), ("atss_lareg_r50_release", "lareg", (4, 64))],
)
def test_r50_checkpoint_fits_the_r50_release_configs_without_a_forward(name, head, conf):
    sd = mmdet_state_dict(head, depth=50, channels=256, stacked=4, conf=conf)
    ckpt = MmdetCheckpoint(Path("epoch_12_311.pth"), sd, head, 12, FORK_CLASSES, "2.12.0")
    perm = class_permutation(FORK_CLASSES, "fork")
    model = build_imported(ckpt, load_config(name), perm)
    own = model.state_dict()
    assert torch.equal(own["head.atss_cls.weight"], sd["bbox_head.atss_cls.weight"][perm])
    assert torch.equal(own["backbone.fpn.extra_blocks.p7.weight"], sd["neck.fpn_convs.4.conv.weight"])
    assert torch.equal(own["head.reg_conf.0.weight"], sd["bbox_head.reg_conf.0.weight"])
    # a classifier over a 128-channel tower in the R-50 config: named, with both shapes
    sd["bbox_head.atss_cls.weight"] = torch.zeros(12, 128, 3, 3)
    with pytest.raises(ImportCheckError) as exc:
        build_imported(
            MmdetCheckpoint(Path("x.pth"), sd, head, 12, FORK_CLASSES, None), load_config(name), perm
        )
    assert str(exc.value) == (
        f"the checkpoint's tensors do not fit --config {name}: 1 with another shape (checkpoint vs config) "
        "['head.atss_cls.weight [12, 128, 3, 3] vs [12, 256, 3, 3]']"
    )
    # the R-50 checkpoint against the other head's / the small config: the right R-50 config is named
    other = {"lacls": "atss_lareg_r50_release", "lareg": "atss_lacls_r50_release"}[head]
    for wrong in (other, "small_lacls_release"):
        with pytest.raises(ImportCheckError, match=f"use --config {name}$"):
            build_imported(ckpt, load_config(wrong), perm)


def test_the_earliest_lacls_needs_a_written_config():
    sd = mmdet_state_dict("lacls", depth=50, channels=256, stacked=4, conf=(20, 64))
    ckpt = MmdetCheckpoint(Path("early.pth"), sd, "lacls_7f32fc6a", 12, FORK_CLASSES, None)
    with pytest.raises(ImportCheckError) as exc:
        build_imported(ckpt, load_config("atss_lacls_r50_release"), list(range(12)))
    msg = str(exc.value)
    assert "holds the LAcls head, earliest version (7f32fc6a; reg_conf 20 -> 64 -> 1)" in msg
    assert msg.endswith(
        "use a JSON copy of atss_lacls_r50_release with \"reg_conf_stats\": 'topk_mean', "
        '"reg_conf_channels": 64, "quality_target": \'iou\' (docs/model.md)'
    )
    cfg = load_config("atss_lacls_r50_release").with_overrides(
        reg_conf_stats="topk_mean", reg_conf_channels=64
    )
    build_imported(ckpt, cfg, list(range(12)))  # that config fits


# ----------------------------------------------------------------------------- bad input


def _variant(sd: dict, **changes) -> dict:
    out = dict(sd)
    for k, v in changes.items():
        key = "bbox_head." + k.replace("__", ".")
        if v is None:
            out.pop(key)
        else:
            out[key] = v
    return out


def _retina(sd):
    out = {k: v for k, v in sd.items() if not k.startswith("bbox_head.")}
    out["bbox_head.retina_cls.weight"] = torch.zeros(9 * 80, C, 3, 3)
    out["bbox_head.retina_reg.weight"] = torch.zeros(36, C, 3, 3)
    return out


def _gfl(sd):
    out = {k: v for k, v in sd.items() if not k.startswith("bbox_head.atss_") and "reg_conf" not in k}
    out["bbox_head.gfl_cls.weight"] = torch.zeros(80, C, 3, 3)
    out["bbox_head.gfl_reg.weight"] = torch.zeros(68, C, 3, 3)
    return out


BAD = {
    "plain ATSS": (lambda sd: mmdet_state_dict("atss", channels=C), None, "holds a plain ATSS head"),
    "RetinaNet": (_retina, None, "holds a RetinaNet head"),
    "GFL": (_gfl, None, "holds a GFL head"),
    "80 classes": (
        lambda sd: _variant(sd, atss_cls__weight=torch.zeros(80, C, 3, 3), atss_cls__bias=torch.zeros(80)),
        None,
        "the classifier has 80 classes; the CLCXray model has 12",
    ),
    "reg_conf of no version": (
        lambda sd: _variant(
            sd, reg_conf__0__weight=torch.zeros(32, 4, 1, 1), reg_conf__2__weight=torch.zeros(1, 32, 1, 1)
        ),
        None,
        "bbox_head.reg_conf has shapes ((32, 4, 1, 1), (1, 32, 1, 1)), which fit no released version",
    ),
    "wrong shape": (
        lambda sd: _variant(sd, atss_cls__weight=torch.zeros(12, 64, 3, 3)),
        None,
        "the checkpoint's tensors do not fit --config small_lacls_release: 1 with another shape "
        "(checkpoint vs config) ['head.atss_cls.weight [12, 64, 3, 3] vs [12, 128, 3, 3]']",
    ),
    "unknown key": (
        lambda sd: {**sd, "roi_head.bbox_head.fc_cls.weight": torch.zeros(13, 8)},
        None,
        "'roi_head.bbox_head.fc_cls.weight' is not part of an mmdetection ATSS detector",
    ),
    "no meta CLASSES": (lambda sd: sd, (), "no meta CLASSES; give the dataset's annotation json"),
    "CLASSES lacking one": (
        lambda sd: sd,
        FORK_CLASSES[:-1] + ("wrench",),
        "meta CLASSES: lacks the CLCXray class(es) ['spray cans']",
    ),
}


def _assert_refused(capsys, tmp_path: Path, args: list, message: str, keep: set[str]) -> None:
    rc, out, err = cli(capsys, *args)
    assert rc == 2, (out, err)
    err = err.strip()
    assert err.startswith(ERR) and "\n" not in err and "Traceback" not in err, err
    assert message in err, err
    assert {p.name for p in tmp_path.iterdir()} == keep  # nothing written, no temp file left


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoints_are_one_line_errors_and_write_nothing(case, small_sd, tmp_path, capsys):
    build, classes, message = BAD[case]
    src = save_ckpt(
        tmp_path / "in.pth", build(small_sd["lacls"]), FORK_CLASSES if classes is None else classes
    )
    args = [src, "--config", "small_lacls_release", "--out", tmp_path / "w.safetensors"]
    _assert_refused(capsys, tmp_path, args, message, {"in.pth"})


def test_code_in_the_pickle_is_refused_and_never_run(small_sd, tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    legacy = tmp_path / "evil.pth"
    legacy.write_bytes(pickle.dumps({"state_dict": Payload()}, protocol=2))
    zipped = tmp_path / "evil_zip.pth"
    torch.save({"meta": {"CLASSES": Payload()}, "state_dict": small_sd["lacls"]}, zipped)
    for src in (legacy, zipped):
        args = [src, "--config", "small_lacls_release", "--out", tmp_path / "w.safetensors"]
        _assert_refused(capsys, tmp_path, args, "nothing in it was run", {"evil.pth", "evil_zip.pth"})
    assert not marker.exists()


def test_truncated_file_bad_json_config_and_existing_out(ckpt_dir, tmp_path, capsys):
    good = ckpt_dir / "lacls.pth"
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    out = tmp_path / "w.safetensors"
    keep = {"cut.pth"}
    _assert_refused(
        capsys, tmp_path, [cut, "--config", "small_lacls_release", "--out", out], "truncated or not", keep
    )
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"categories": [{"id": i, "name": n} for i, n in enumerate(CLASS_NAMES[1:])]}))
    keep.add("ann.json")
    args = [good, "--config", "small_lacls_release", "--classes-json", ann, "--out", out]
    _assert_refused(capsys, tmp_path, args, "lacks the CLCXray class(es) ['blade']", keep)
    args = [good, "--config", "no_such_config", "--out", out]
    _assert_refused(capsys, tmp_path, args, "no detector config 'no_such_config'", keep)
    args = [good, "--config", "atss_lacls_r50_release", "--out", out]
    _assert_refused(capsys, tmp_path, args, "ResNet-18, 128-channel FPN, 2 convs per tower", keep)
    args = [ckpt_dir / "lareg.pth", "--config", "small_lacls_release", "--out", out]
    _assert_refused(
        capsys,
        tmp_path,
        args,
        "--config small_lacls_release does not fit this checkpoint: it holds the LAreg head "
        "(reg_conf 4 -> 64 -> 1) on a ResNet-18, 128-channel FPN, 2 convs per tower; the config has "
        "la_mode 'cls' (needs 'reg'); reg_conf_channels 16 (needs 64); la_coeffs [1.5, 0.0, 1.0] "
        "(needs [0.5, 1.0, 0.0]). use --config small_lareg_release",
        keep,
    )
    args = [good, "--config", "small_lacls", "--out", out]  # the paper-text head: no reg_conf
    _assert_refused(capsys, tmp_path, args, "head_style 'atss' (needs 'released')", keep)
    out.write_bytes(b"keep me")
    keep.add(out.name)
    args = [good, "--config", "small_lacls_release", "--out", out]
    _assert_refused(capsys, tmp_path, args, f"--out {out} exists; give --force to replace it", keep)
    assert out.read_bytes() == b"keep me"


# ----------------------------------------------------------------------------- serve and export


@pytest.mark.slow  # ~35 s on 2 cores: a real `xscreen serve` start and an ONNX export
def test_imported_weights_are_served_and_exported(ckpt_dir, tmp_path, capsys):
    import cv2
    import requests

    from tests.support.service_fixtures import ServiceProcess, box_iou, post_scan, synthetic_scans
    from xscreen.scans import convert_scan

    out = tmp_path / "released.safetensors"
    rc, _, err = cli(
        capsys,
        ckpt_dir / "lacls.pth",
        "--config",
        parity_config(tmp_path, "small_lacls_release"),
        "--out",
        out,
    )
    assert rc == 0, err
    model, info = load_weights(out)
    scan = synthetic_scans([3], 160)[0]
    image = torch.from_numpy(convert_scan(scan.high, scan.low).transpose(2, 0, 1).copy())
    with torch.inference_mode():
        want = model.predict([image])[0]
    assert len(want["scores"]) >= 3

    srv = ServiceProcess(tmp_path / "serve.log", weights=out, device="cpu", max_batch_size=1).start()
    try:
        srv.wait_ready(timeout=180)
        about = requests.get(srv.url + "/model", timeout=10).json()
        assert (about["sha256"], about["name"]) == (info.sha256, "lacls")
        assert about["score_threshold"] == 0.3  # the imported default, not picked on data
        high, low = (cv2.imencode(".png", im)[1].tobytes() for im in (scan.high, scan.low))
        r = post_scan(srv.url, high, low, key=None, score_threshold=0.05)
        assert r.status_code == 200, r.text
        got = r.json()["detections"]
    finally:
        srv.stop()
    assert len(got) == len(want["scores"])
    for det, box, score, label in zip(got, want["boxes"], want["scores"], want["labels"], strict=True):
        assert det["class_name"] == CLASS_NAMES[int(label)]
        assert abs(det["score"] - float(score)) < 1e-3
        served = np.array([[det["box"][k] for k in ("x1", "y1", "x2", "y2")]])
        assert box_iou(served, box.numpy()[None])[0, 0] > 0.99

    onnx = tmp_path / "released.onnx"
    assert main(["export", "--weights", str(out), "--out", str(onnx)]) == 0
    printed = capsys.readouterr().out
    assert f"weights_sha256={info.sha256}" in printed and "precision=fp32" in printed
    assert "ONNX Runtime vs torch, max abs diff" in printed
