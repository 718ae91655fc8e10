"""mmdetection-format checkpoints and the reference's outputs for the release-parity tests
(tests/model/test_release.py, tests/model/test_import_mmdet.py): random weights in mmdetection's key names
and shapes, the test scans, and what tests/support/release_reference.py computes from them."""

from __future__ import annotations

import torch
import torchvision

import tests.support.release_reference as ref

C, STACKED, NUM_CLASSES = 64, 2, 12
H, W = 160, 224


def mmdet_state_dict(
    head: str, depth: int = 18, channels: int = C, stacked: int = STACKED, conf=(4, 16), seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random weights in mmdetection's names: ResNet, FPN (lateral/fpn convs), ATSS or LA head."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.05, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    net = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth](weights=None)
    sd = {}
    for k, v in net.state_dict().items():
        if k.startswith("fc."):
            continue
        if k.endswith("running_var"):
            v = torch.rand(v.shape, generator=g) * 0.5 + 0.75
        elif k.endswith("running_mean") or (k.endswith("bias") and "bn" in k or "downsample.1.bias" in k):
            v = rnd(*v.shape, std=0.1)
        elif v.dim() == 1 and v.is_floating_point():
            v = rnd(*v.shape, std=0.1, mean=1.0)
        sd["backbone." + k] = v
    c5 = 512 if depth == 18 else 2048
    for i, cin in enumerate((c5 // 4, c5 // 2, c5)):
        sd[f"neck.lateral_convs.{i}.conv.weight"] = rnd(channels, cin, 1, 1, std=(1 / cin) ** 0.5)
        sd[f"neck.lateral_convs.{i}.conv.bias"] = rnd(channels, std=0.1)
    for i in range(5):
        sd[f"neck.fpn_convs.{i}.conv.weight"] = rnd(channels, channels, 3, 3, std=(1 / (9 * channels)) ** 0.5)
        sd[f"neck.fpn_convs.{i}.conv.bias"] = rnd(channels, std=0.1)
    for tower in ("cls_convs", "reg_convs"):
        for i in range(stacked):
            sd[f"bbox_head.{tower}.{i}.conv.weight"] = rnd(channels, channels, 3, 3)
            sd[f"bbox_head.{tower}.{i}.gn.weight"] = rnd(channels, std=0.2, mean=1.0)
            sd[f"bbox_head.{tower}.{i}.gn.bias"] = rnd(channels, std=0.2)
    sd["bbox_head.atss_cls.weight"] = rnd(NUM_CLASSES, channels, 3, 3)
    sd["bbox_head.atss_cls.bias"] = torch.full((NUM_CLASSES,), -2.0)
    reg = 4 if head == "atss" else 68
    sd["bbox_head.atss_reg.weight"] = rnd(reg, channels, 3, 3)
    sd["bbox_head.atss_reg.bias"] = rnd(reg, std=0.5)
    if head == "atss":
        sd["bbox_head.atss_centerness.weight"] = rnd(1, channels, 3, 3)
        sd["bbox_head.atss_centerness.bias"] = torch.zeros(1)
    else:
        cin, hid = conf
        sd["bbox_head.reg_conf.0.weight"] = rnd(hid, cin, 1, 1, std=0.5)
        sd["bbox_head.reg_conf.0.bias"] = rnd(hid, std=0.1)
        sd["bbox_head.reg_conf.2.weight"] = rnd(1, hid, 1, 1, std=0.5)
        sd["bbox_head.reg_conf.2.bias"] = rnd(1, std=0.1)
        sd["bbox_head.integral.project"] = torch.linspace(0, 16, 17)
    for i in range(5):
        sd[f"bbox_head.scales.{i}.scale"] = torch.tensor(1.0 + 0.1 * i)
    return sd


def scan_images() -> list[torch.Tensor]:
    """Two scans with bright and dark rectangles ('objects') and one empty scan, all 160x224."""
    g = torch.Generator().manual_seed(5)
    out = []
    for n_obj in (4, 6):
        im = torch.full((3, H, W), 200.0) + torch.rand(3, H, W, generator=g) * 10
        for _ in range(n_obj):
            x, y = (
                int(torch.randint(0, W - 60, (1,), generator=g)),
                int(torch.randint(0, H - 50, (1,), generator=g)),
            )
            im[:, y : y + 40, x : x + 55] = torch.rand(3, 1, 1, generator=g) * 150
        out.append(im)
    out.append(torch.full((3, H, W), 220.0))
    return out


def reference_outputs(sd, kind, batch, stats="max_mean", labels=None, bins=None):
    feats = ref.backbone_fpn(sd, batch)
    outs = []
    for level, x in enumerate(feats):
        if kind == "atss":
            outs.append(ref.atss_forward_single(x, sd, level, STACKED))
        elif kind == "lacls":
            lab = None if labels is None else labels[level]
            outs.append(ref.lacls_forward_single(x, sd, level, STACKED, NUM_CLASSES, lab, stats))
        else:
            b = None if bins is None else bins[level]
            outs.append(ref.lareg_forward_single(x, sd, level, STACKED, b, stats))
    return feats, outs
