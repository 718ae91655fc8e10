"""Release-parity heads (docs/method.md §7) against the independent reference in
tests/support/release_reference.py.

A state dict is built in mmdetection's key names and shapes (tests/support/mmdet_release.py), mapped
with model.mmdet_keys and loaded into xscreen's release configs (ResNet-18, 64-channel FPN, 2 convs per
tower, 160x224 scans, so that no resizing happens); the reference reads the mmdetection dict directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tests.support.release_reference as ref
from tests.support.mmdet_release import (
    NUM_CLASSES,
    STACKED,
    C,
    H,
    W,
    mmdet_state_dict,
    reference_outputs,
    scan_images,
)
from xscreen.model import build_detector, load_config
from xscreen.model.anchors import feature_sizes, generate_anchors
from xscreen.model.assigner import atss_assign
from xscreen.model.label_aware import label_aware_forward
from xscreen.model.mmdet_keys import mmdet_to_xscreen_state_dict
from xscreen.model.transform import pad_batch

VARIANTS = {  # config -> (mmdet head, reg_conf (inputs, hidden))
    "small_lacls_release": ("lacls", (4, 16)),
    "small_lareg_release": ("lareg", (4, 64)),
    "small_atss": ("atss", None),
}


def _build(name: str, seed: int = 0):
    kind, conf = VARIANTS[name]
    over = {
        "fpn_channels": C,
        "stacked_convs": STACKED,
        "min_size": H,
        "max_size": W,
        "candidate_score_thresh": 0.05,
    }
    if name == "small_atss":
        over["fpn_p7_relu"] = False  # mmdetection's ATSS FPN (docs/method.md §7.7)
    sd = mmdet_state_dict(kind, conf=conf or (4, 16), seed=seed)
    det = build_detector(load_config(name).with_overrides(**over), channels_last=False)
    det.load_state_dict(mmdet_to_xscreen_state_dict(sd), strict=True)
    return det.eval(), sd, kind


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[1])


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("empty", [False, True])
def test_head_outputs_and_detections_match_the_released_code(name, empty):
    det, sd, kind = _build(name)
    images = scan_images()[2:] if empty else scan_images()[:2]
    batch, sizes = pad_batch(det.resize_and_normalize(images))
    assert sizes == [(H, W)] * len(images)  # no resizing: the reference sees the same tensor
    with torch.no_grad():
        feats = det.backbone(batch)
        got = det.forward_raw(batch)
    ref_feats, outs = reference_outputs(sd, kind, batch)
    for a, b in zip(feats, ref_feats, strict=True):
        assert (a - b).abs().max() <= 1e-4
    for k, field in enumerate(("cls_logits", "bbox_reg", "centerness")):
        want = torch.cat([_flat(o[k].detach()) for o in outs], dim=1)
        diff = (getattr(got, field) - want).abs()
        if kind == "lacls":  # LA differentiates a ReLU network: mask flips within float noise
            assert diff.max() <= 5e-3 and torch.quantile(diff.flatten(), 0.99) <= 5e-4, field
        else:
            assert diff.max() <= 1e-4, (field, float(diff.max()))
    with torch.inference_mode():
        dets = det.predict(images)
    for i, d in enumerate(dets):
        if kind == "atss":
            continue  # plain ATSS decodes deltas; its test path is tests/model/test_detector.py
        boxes, scores, labels = ref.get_bboxes_single(
            [o[0][i].detach() for o in outs],
            [o[1][i].detach() for o in outs],
            [o[2][i].detach() for o in outs],
            (H, W),
            (1.0, 1.0),
        )
        if not empty:
            assert len(scores) >= 5, "too few detections to compare"
        assert len(d["scores"]) == len(scores)
        assert torch.equal(d["labels"], labels)
        assert (d["boxes"] - boxes).abs().max() <= 0.05 if len(boxes) else True
        assert (d["scores"] - scores).abs().max() <= 1e-4 if len(scores) else True


def _hand_batch():
    images = scan_images()[:2]
    boxes = [torch.tensor([[20.0, 30, 90, 80], [120, 40, 200, 120]]), torch.tensor([[60.0, 50, 150, 140]])]
    labels = [torch.tensor([0, 7]), torch.tensor([11])]
    return images, boxes, labels


@pytest.mark.parametrize("name", ["small_lacls_release", "small_lareg_release"])
def test_training_loss_equals_the_released_loss(name):
    det, sd, kind = _build(name, seed=1)
    det.train()
    images, boxes, labels = _hand_batch()
    losses = det.compute_losses(
        images, [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels, strict=True)]
    )
    batch, _ = pad_batch(det.resize_and_normalize(images))
    sizes = feature_sizes(batch.shape[-2], batch.shape[-1])
    anchors, per_level = generate_anchors(sizes)
    matched = [atss_assign(anchors, per_level, b) for b in boxes]
    lab = ref.level_labels(matched, labels, NUM_CLASSES)
    targets = ref.encode_targets(anchors, matched, boxes)
    starts = np.cumsum([0, *per_level])
    lab_l = [lab[:, starts[i] : starts[i + 1]].reshape(-1) for i in range(5)]
    bins = [
        ref.training_bins(
            anchors[starts[i] : starts[i + 1]].repeat(2, 1),
            lab_l[i],
            targets[:, starts[i] : starts[i + 1]],
            s,
            NUM_CLASSES,
        )
        for i, s in enumerate(ref.STRIDES)
    ]
    assert any(b is None for b in bins) and any(b is not None for b in bins)  # both LAreg cases occur
    _, outs = reference_outputs(sd, kind, batch, labels=lab_l, bins=bins)
    want = ref.released_loss(outs, lab, targets, NUM_CLASSES)
    assert set(losses) == set(want)
    for k in want:
        torch.testing.assert_close(losses[k].detach(), want[k].detach(), rtol=2e-4, atol=1e-5, msg=k)
    assert float(want["loss_d"]) > 0 and float(want["loss_bbox"]) > 0


def test_the_released_label_gradient_is_exactly_zero():
    """docs/method.md §7.5: writing zeros into `out.detach().data` also overwrites sigmoid's saved output."""
    torch.manual_seed(0)
    x = torch.randn(6, 8, requires_grad=True)
    out = torch.nn.Linear(8, 5)(x).sigmoid()
    onehot = torch.nn.functional.one_hot(out.max(dim=-1)[1], 5).float()
    before = torch.autograd.grad(out, x, onehot, retain_graph=True)[0]
    out_copy = out.detach().data
    out_copy[onehot.bool()] = 0
    after = torch.autograd.grad(out, x, onehot, retain_graph=True)[0]
    assert before.abs().max() > 1e-3 and torch.equal(after, torch.zeros_like(after))


@pytest.mark.parametrize("training", [False, True])
def test_skipping_the_label_gradient_gives_identical_outputs(training):
    det, _, _ = _build("small_lacls_release")
    assert det.cfg.skip_label_grad and det.cfg.la_coeffs == (1.5, 0.0, 1.0)
    batch, _ = pad_batch(det.resize_and_normalize(scan_images()[:2]))
    with torch.no_grad():
        feats = det.backbone(batch)
    targets = None
    if training:
        g = torch.Generator().manual_seed(2)
        targets = [torch.randint(-1, NUM_CLASSES, (2, *f.shape[-2:]), generator=g) for f in feats]
    a = label_aware_forward(det.head, feats, det.cfg, targets, skip_zero_terms=True)
    b = label_aware_forward(det.head, feats, det.cfg, targets, skip_zero_terms=False)
    for oa, ob in zip(a, b, strict=True):
        for ta, tb in zip(oa, ob, strict=True):
            assert torch.equal(ta, tb)


@pytest.mark.parametrize(
    ("name", "conf"), [("atss_lacls_r50_release", (4, 16)), ("atss_lareg_r50_release", (4, 64))]
)
def test_r50_mmdet_keys_and_shapes_map_onto_the_release_configs(name, conf):
    sd = mmdet_state_dict("lacls", depth=50, channels=256, stacked=4, conf=conf)
    mapped = mmdet_to_xscreen_state_dict(sd)
    own = build_detector(name, channels_last=False).state_dict()
    assert set(mapped) == set(own)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in own.items()}
    assert tuple(own["head.atss_cls.weight"].shape) == (12, 256, 3, 3)
    assert tuple(own["head.atss_reg.weight"].shape) == (68, 256, 3, 3)
    assert tuple(own["head.reg_conf.0.weight"].shape) == (conf[1], 4, 1, 1)


def test_earliest_reg_conf_version_is_selected_by_a_config_field():
    cfg = load_config("small_lacls_release").with_overrides(reg_conf_stats="topk_mean", reg_conf_channels=64)
    head = build_detector(cfg, channels_last=False).head
    assert tuple(head.reg_conf[0].weight.shape) == (64, 20, 1, 1)
    x = [torch.randn(1, 128, 4, 4)]
    out = head.level_outputs(x[0], 0)
    assert out.centerness.shape == (1, 1, 4, 4)


def test_new_fields_default_to_the_previous_behaviour():
    old = {"name": "legacy", "la_mode": "cls"}  # a sealed config written before the fields existed
    from xscreen.model.config import config_from_dict

    cfg = config_from_dict(old)
    assert (cfg.head_style, cfg.fpn_p7_relu, cfg.bn_affine_trainable, cfg.grad_clip) == (
        "atss",
        True,
        False,
        35.0,
    )
    rel = load_config("atss_lacls_r50_release")
    assert (rel.fpn_p7_relu, rel.bn_affine_trainable, rel.grad_clip, rel.la_coeffs) == (
        False,
        True,
        None,
        (1.5, 0.0, 1.0),
    )


def test_bn_affine_training_and_p7_form():
    base = load_config("small_lacls").with_overrides(fpn_channels=C, stacked_convs=1)
    torch.manual_seed(0)
    a = build_detector(base, channels_last=False).eval()
    b = build_detector(
        base.with_overrides(bn_affine_trainable=True, fpn_p7_relu=False), channels_last=False
    ).eval()
    b.load_state_dict(a.state_dict())  # same keys: FrozenBatchNorm2d and the trainable-affine BN
    trainable = {n for n, p in b.backbone.body.named_parameters() if p.requires_grad and p.dim() == 1}
    assert trainable and all(n.split(".")[0] in ("layer2", "layer3", "layer4") for n in trainable)
    assert not any(p.requires_grad for n, p in a.backbone.body.named_parameters() if p.dim() == 1)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        pa, pb = a.backbone(x), b.backbone(x)
        for i in range(4):
            torch.testing.assert_close(pa[i], pb[i])
        p7 = b.backbone.fpn.extra_blocks.p7
        torch.testing.assert_close(pb[4], p7(pb[3]))
        torch.testing.assert_close(pa[4], p7(torch.relu(pa[3])))
