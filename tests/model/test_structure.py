"""Model plumbing: DetectorConfig's LA properties, HeadOutputs, padded-size grouping, the stage names."""

import subprocess
import sys

import pytest
import torch

from xscreen.model import DetectorConfig, build_detector, load_config
from xscreen.model.head import ATSSHead, HeadOutputs
from xscreen.model.label_aware import label_aware_forward
from xscreen.model.onnx_export import OUTPUT_NAMES
from xscreen.model.timing import MODEL_STAGES
from xscreen.model.transform import group_by_padded_size, pad_batch, padded_size


@pytest.mark.parametrize(
    ("la_mode", "reg_max", "flags", "reg_channels"),
    [
        ("none", 16, (False, False, False), 4),
        ("cls", 16, (True, True, False), 4),
        ("reg", 16, (True, False, True), 68),  # 4 sides x 17 bins (docs/method.md §4)
        ("reg", 7, (True, False, True), 32),
    ],
)
def test_config_la_properties(la_mode, reg_max, flags, reg_channels):
    coeffs = (0.5, 1.0, 0.0) if la_mode == "reg" else (1.0, 1.0, 1.0)
    cfg = DetectorConfig(name="t", la_mode=la_mode, la_coeffs=coeffs, reg_max=reg_max)
    assert (cfg.uses_la, cfg.la_cls, cfg.la_reg) == flags
    assert cfg.reg_channels == reg_channels


@pytest.mark.parametrize("name", ["small_atss", "small_lacls", "small_lareg"])
def test_head_is_built_with_the_configs_regression_channels(name):
    cfg = load_config(name).with_overrides(depth=18, fpn_channels=64, stacked_convs=1)
    head = build_detector(cfg, channels_last=False).head
    assert head.atss_reg.out_channels == head.reg_channels == cfg.reg_channels
    assert head.atss_cls.out_channels == cfg.num_classes


def test_group_by_padded_size():
    shapes = [(100, 120), (90, 128), (100, 119), (64, 64), (96, 128), (97, 128)]
    # padded: 128x128, 96x128, 128x128, 64x64, 96x128, 128x128 -> first-appearance order
    assert group_by_padded_size(shapes) == [[0, 2, 5], [1, 4], [3]]
    assert group_by_padded_size(shapes, size_divisor=64) == [[0, 1, 2, 4, 5], [3]]  # all 128x128 but 64x64
    assert group_by_padded_size(shapes, size_divisor=1) == [[0], [1], [2], [3], [4], [5]]
    assert group_by_padded_size([]) == []
    # tensor shapes [3, H, W] work, and each group pads to exactly its own size
    images = [torch.zeros(3, h, w) for h, w in shapes]
    groups = group_by_padded_size([im.shape for im in images])
    assert groups == [[0, 2, 5], [1, 4], [3]]
    for idx in groups:
        batch, sizes = pad_batch([images[i] for i in idx])
        assert {padded_size(h, w) for h, w in sizes} == {tuple(batch.shape[-2:])}


def test_padded_size_rounds_up_to_the_divisor():
    assert padded_size(96, 97) == (96, 128)
    assert padded_size(1, 33, size_divisor=16) == (16, 48)


def test_head_outputs_names_match_the_onnx_outputs_and_unpack_as_a_tuple():
    assert HeadOutputs._fields == OUTPUT_NAMES == ("cls_logits", "bbox_reg", "centerness")
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    out = HeadOutputs(a, b, c)
    cls, reg, ctr = out
    assert cls is a and reg is b and ctr is c and out.bbox_reg is b


def test_flatten_levels_concatenates_levels_row_major():
    head = ATSSHead(32, num_classes=3, stacked_convs=1, reg_channels=8, num_levels=2)
    n, sizes = 2, [(3, 4), (2, 2)]
    per_level = [HeadOutputs(*(torch.randn(n, k, h, w) for k in (3, 8, 1))) for h, w in sizes]
    flat = head.flatten_levels(per_level, n)
    assert isinstance(flat, HeadOutputs)
    assert [tuple(t.shape) for t in flat] == [(n, 16, 3), (n, 16, 8), (n, 16, 1)]
    # level 1, cell (y=1, x=0) follows the 12 cells of level 0: index 12 + 1 * 2 + 0
    assert torch.equal(flat.cls_logits[1, 14], per_level[1].cls_logits[1, :, 1, 0])
    assert torch.equal(flat.bbox_reg[0, 7], per_level[0].bbox_reg[0, :, 1, 3])  # level 0: 1 * 4 + 3
    assert torch.equal(flat.centerness[1, 15, 0], per_level[1].centerness[1, 0, 1, 1])


@pytest.mark.parametrize("name", ["small_atss", "small_lacls", "small_lareg"])
def test_forward_raw_returns_named_outputs_with_the_anchor_layout(name):
    cfg = load_config(name).with_overrides(depth=18, fpn_channels=64, stacked_convs=1)
    model = build_detector(cfg).eval()
    batch = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model.forward_raw(batch)
    a = model.anchors_for(batch.shape)[0].shape[0]
    assert isinstance(out, HeadOutputs)
    assert out.cls_logits.shape == (2, a, cfg.num_classes)
    assert out.bbox_reg.shape == (2, a, cfg.reg_channels)
    assert out.centerness.shape == (2, a, 1)


def test_label_aware_forward_reads_the_config_and_refuses_plain_atss():
    torch.manual_seed(0)
    head = ATSSHead(32, 3, stacked_convs=1)
    feats = [torch.randn(1, 32, 4, 4), torch.randn(1, 32, 2, 2)]
    cfg = DetectorConfig(name="t", la_mode="cls", la_coeffs=(1.0, 0.0, 0.0), reg_tower_repeat=1)
    out = label_aware_forward(head, feats, cfg)
    # (a, b, c) = (1, 0, 0) and one regression pass: exactly the plain head
    for got, ref in zip(out, head.forward_plain(feats), strict=True):
        assert isinstance(got, HeadOutputs)
        for g, r in zip(got, ref, strict=True):
            assert torch.equal(g.detach(), r.detach())
    with pytest.raises(ValueError, match="la_mode 'none'"):
        label_aware_forward(head, feats, DetectorConfig(name="plain"))


def test_service_reports_the_models_stage_names_without_importing_torch():
    code = (
        "import sys\n"
        "from xscreen.inference import MODEL_STAGES as S\n"
        "from xscreen.model.timing import MODEL_STAGES\n"
        "assert S is MODEL_STAGES\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print(','.join(S))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ",".join(MODEL_STAGES)
    assert MODEL_STAGES == (
        "preprocess",
        "backbone_fpn",
        "head_first",
        "la_grad",
        "head_second",
        "postprocess",
    )


def test_the_onnx_graph_outputs_are_the_head_outputs_in_order():
    from xscreen.model.onnx_io import OUTPUT_NAMES

    assert HeadOutputs._fields == OUTPUT_NAMES
