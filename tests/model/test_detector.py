"""Detector contract: configs, forward in train/eval, postprocessing, batch independence, input errors."""

import json

import pytest
import torch

from xscreen.model import ConfigError, build_detector, load_config
from xscreen.model.config import available_configs
from xscreen.model.detector import DetectorInputError
from xscreen.model.head import HeadOutputs
from xscreen.model.postprocess import postprocess_detections
from xscreen.model.timing import MODEL_STAGES


def _tiny(name="small_lacls", **kw):
    base = {"depth": 18, "fpn_channels": 64, "stacked_convs": 1, "min_size": 96, "max_size": 160}
    return load_config(name).with_overrides(**{**base, **kw})


def _spread_head(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_bundled_configs_load_with_paper_numbers():
    assert set(available_configs()) >= {
        "atss_r50",
        "atss_lacls_r50",
        "atss_lareg_r50",
        "small_atss",
        "small_lacls",
        "small_lareg",
    }
    r50 = load_config("atss_lacls_r50")
    assert (r50.depth, r50.fpn_channels, r50.stacked_convs, r50.la_mode) == (50, 256, 4, "cls")
    assert (
        r50.min_size,
        r50.max_size,
        r50.candidate_score_thresh,
        r50.nms_pre,
        r50.nms_iou,
        r50.max_dets,
    ) == (
        800,
        1333,
        0.05,
        1000,
        0.6,
        100,
    )
    assert (r50.lr, r50.momentum, r50.weight_decay, r50.epochs, r50.lr_steps) == (
        0.01,
        0.9,
        1e-4,
        12,
        (8, 11),
    )
    assert r50.la_coeffs == (1.0, 1.0, 1.0) and r50.reg_tower_repeat == 2 and r50.num_classes == 12
    assert load_config("atss_lareg_r50").la_coeffs == (0.5, 1.0, 0.0)
    assert load_config("small_lacls").depth == 18


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "depht": 50}))
    with pytest.raises(ConfigError, match="depht: unknown key"):
        load_config(bad)
    bad.write_text(json.dumps({"name": "x", "depth": 19}))
    with pytest.raises(ConfigError, match="depth"):
        load_config(bad)
    bad.write_text(json.dumps({"name": "x", "la_mode": "both"}))
    with pytest.raises(ConfigError, match="la_mode"):
        load_config(bad)
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)
    with pytest.raises(ConfigError, match="fpn_channels=100 must be a multiple of 32"):
        load_config("small_atss").with_overrides(fpn_channels=100)
    with pytest.raises(ConfigError, match="no detector config 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="c must be 0"):
        load_config("small_lareg").with_overrides(la_coeffs=(1.0, 1.0, 1.0))


def test_postprocess_maps_boxes_to_input_pixels_and_applies_thresholds():
    cfg = _tiny("small_atss", candidate_score_thresh=0.05, nms_iou=0.6, max_dets=100)
    model = build_detector(cfg)
    anchors, per_level = model.anchors_for((64, 96))
    a = anchors.shape[0]
    cls = torch.full((1, a, cfg.num_classes), -10.0)
    reg = torch.zeros(1, a, 4)
    ctr = torch.full((1, a, 1), 10.0)
    k = 2 * 12 + 5  # P3 cell (5, 2): anchor centred at (40, 16), side 64
    cls[0, k, 3] = 2.0  # sigmoid 0.881
    cls[0, k + 1, 3] = 1.0  # neighbour: same class, IoU 0.78 > 0.6 -> suppressed
    cls[0, k + 1, 7] = 0.5  # other class at the same place survives class-wise NMS
    cls[0, k + 2, 1] = -3.0  # sigmoid 0.047 < 0.05 -> dropped
    # resized image 60x90 inside the padded 64x96 batch; the input scan was 120x180
    outputs = HeadOutputs(cls, reg, ctr)
    (det,) = postprocess_detections(outputs, anchors, per_level, [(60, 90)], [(120, 180)], cfg)
    assert det["labels"].tolist() == [3, 7]
    c = torch.sigmoid(torch.tensor(10.0))
    torch.testing.assert_close(det["scores"], torch.sigmoid(torch.tensor([2.0, 0.5])) * c)
    # anchor [8, -16, 72, 48] clipped to the 90x60 image -> [8, 0, 72, 48], then x2 to input pixels
    torch.testing.assert_close(det["boxes"][0], torch.tensor([16.0, 0.0, 144.0, 96.0]))
    assert det["labels"].dtype == torch.int64


def test_train_forward_returns_finite_scalar_losses_and_backpropagates():
    for name in ("small_atss", "small_lacls", "small_lareg"):
        torch.manual_seed(0)
        model = build_detector(_tiny(name)).train()
        images = [torch.rand(3, 80, 120) * 255, torch.rand(3, 100, 90) * 255]
        targets = [
            {
                "boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0], [70.0, 20.0, 110.0, 70.0]]),
                "labels": torch.tensor([0, 5]),
            },
            {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.long)},  # no object
        ]
        losses = model(images, targets)
        expected = {"loss_cls", "loss_bbox", "loss_centerness"} | (
            {"loss_dfl"} if name == "small_lareg" else set()
        )
        assert set(losses) == expected
        assert all(v.dim() == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
        sum(losses.values()).backward()
        assert model.head.atss_cls.weight.grad.abs().sum() > 0
        assert model.backbone.body.layer2[0].conv1.weight.grad is not None
        assert model.backbone.body.conv1.weight.grad is None  # stage 1 frozen (docs/method.md §2)
        # an all-background batch: regression losses are exactly zero but still part of the graph
        empty = model(images[:1], targets[1:])
        assert empty["loss_bbox"].item() == 0.0 and empty["loss_cls"].item() > 0


def test_eval_contract_timings_and_inference_mode():
    torch.manual_seed(0)
    model = _spread_head(build_detector(_tiny("small_lacls", candidate_score_thresh=0.02))).eval()
    images = [torch.rand(3, 150, 200) * 255]
    timings = {}
    with torch.inference_mode():
        (det,) = model.predict(images, timings)
    assert set(timings) == set(MODEL_STAGES) and all(v >= 0 for v in timings.values())
    assert timings["la_grad"] > 0 and timings["head_second"] > 0
    assert det["boxes"].shape[1] == 4 and len(det["boxes"]) == len(det["scores"]) == len(det["labels"]) > 0
    assert det["boxes"][:, 2].max() <= 200 and det["boxes"][:, 3].max() <= 150  # input pixels
    assert bool((det["scores"][:-1] >= det["scores"][1:]).all())
    with torch.no_grad():
        (again,) = model(images)  # eval forward == predict, under no_grad as well
    assert torch.equal(det["boxes"], again["boxes"]) and torch.equal(det["scores"], again["scores"])


def test_detections_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    model = _spread_head(build_detector(_tiny("small_lacls", candidate_score_thresh=0.02)), seed=1).eval()
    g = torch.Generator().manual_seed(2)
    # (100, 160) and (110, 176) both resize to 100x160 -> one padded sub-batch; (90, 100) -> its own
    scans = [torch.rand(3, *s, generator=g) * 255 for s in [(100, 160), (90, 100), (110, 176)]]
    with torch.inference_mode():
        alone = [model.predict([s])[0] for s in scans]
        together = model.predict(scans)
    for a, b in zip(alone, together, strict=True):
        assert len(a["boxes"]) > 0 and len(a["boxes"]) == len(b["boxes"])
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-5)
        assert torch.equal(a["labels"], b["labels"])
    # the raw outputs of two scans sharing a padded batch equal their single-image outputs
    from xscreen.model.transform import normalize, pad_batch, resize_to_fit

    imgs = [normalize(resize_to_fit(s, None, 96, 160)[0]) for s in (scans[0], scans[2])]
    batch, _ = pad_batch(imgs)
    with torch.inference_mode():
        both = model.forward_raw(batch)
        first = model.forward_raw(batch[:1])
    for x, y in zip(both, first, strict=True):
        torch.testing.assert_close(x[:1], y, rtol=1e-4, atol=1e-4)


def test_bad_inputs_raise_clear_errors():
    model = build_detector(_tiny("small_atss"))
    model.eval()
    with pytest.raises(DetectorInputError, match="non-empty list"):
        model([])
    with pytest.raises(
        DetectorInputError, match=r"image 0: expected a \[3, H, W\] tensor, got \(1, 32, 32\)"
    ):
        model([torch.zeros(1, 32, 32)])
    with pytest.raises(DetectorInputError, match="float tensor"):
        model([torch.zeros(3, 32, 32, dtype=torch.uint8)])
    model.train()
    img = [torch.rand(3, 64, 64) * 255]
    with pytest.raises(DetectorInputError, match="needs targets"):
        model(img)
    with pytest.raises(DetectorInputError, match="labels outside 0..11"):
        model(img, [{"boxes": torch.tensor([[1.0, 1, 10, 10]]), "labels": torch.tensor([12])}])
    with pytest.raises(DetectorInputError, match="x2 > x1"):
        model(img, [{"boxes": torch.tensor([[10.0, 1, 10, 10]]), "labels": torch.tensor([0])}])


def test_channels_last_default_matches_nchw_and_saves_contiguous():
    torch.manual_seed(0)
    model = _spread_head(build_detector(_tiny("small_lacls"))).eval()
    assert model.channels_last and model.head.cls_convs[0].weight.is_contiguous(
        memory_format=torch.channels_last
    )
    batch = torch.randn(2, 3, 96, 128)
    with torch.inference_mode():
        nhwc = model.forward_raw(batch)
        nchw = model.use_channels_last(False).forward_raw(batch)
    for a, b in zip(nhwc, nchw, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert model.head.cls_convs[0].weight.is_contiguous()
