"""Label-aware mechanism: weights = sigmoid(autograd gradients), Eq. 7, inference_mode, (1,0,0) = ATSS."""

import pytest
import torch

from xscreen.model import DetectorConfig, build_detector, load_config
from xscreen.model.head import ATSSHead
from xscreen.model.label_aware import label_aware_forward, label_aware_weights


def _la_cfg(coeffs=(1.0, 1.0, 1.0), reg_tower_repeat: int = 2) -> DetectorConfig:
    return DetectorConfig(name="la_test", la_mode="cls", la_coeffs=coeffs, reg_tower_repeat=reg_tower_repeat)


def _head(num_classes: int, reg_channels: int = 4) -> ATSSHead:
    torch.manual_seed(0)
    head = ATSSHead(32, num_classes, stacked_convs=1, reg_channels=reg_channels)
    with torch.no_grad():  # spread weights so that gradients and scores are far from trivial
        for name, p in head.named_parameters():
            if "weight" in name and p.dim() == 4:
                p.normal_(0.0, 0.1)
    return head


def _feats():
    torch.manual_seed(1)
    return [torch.randn(2, 32, 5, 6), torch.randn(2, 32, 3, 3)]


def _expected_cls_weights(head, feats, targets):
    """Independent reference: per level, explicit one-hot loops and two separate autograd.grad calls."""
    w1s, w2s = [], []
    for level, f in enumerate(feats):
        x = f.clone().requires_grad_(True)
        y = torch.sigmoid(head.atss_cls(head.cls_convs(x)))
        yd = y.detach()
        m1, m2 = torch.zeros_like(y), torch.zeros_like(y)
        n_img, n_cls, h, w = y.shape
        for n in range(n_img):
            for i in range(h):
                for j in range(w):
                    s = yd[n, :, i, j].tolist()
                    order = sorted(range(n_cls), key=lambda c, s=s: -s[c])
                    label = order[0] if targets is None else int(targets[level][n, i, j])
                    if label >= 0:
                        m1[n, label, i, j] = 1.0
                    mislead = next(c for c in order if c != label)
                    m2[n, mislead, i, j] = 1.0
        g1 = torch.autograd.grad((y * m1).sum(), x, retain_graph=True)[0]
        g2 = torch.autograd.grad((y * m2).sum(), x)[0]
        w1s.append(torch.sigmoid(g1))
        w2s.append(torch.sigmoid(g2))
    return w1s, w2s


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("training_labels", [False, True])
def test_lacls_weights_are_sigmoid_of_gradients(batched, training_labels):
    head, feats = _head(5), _feats()
    targets = None
    if training_labels:
        g = torch.Generator().manual_seed(3)
        targets = [torch.randint(-1, 5, f.shape[:1] + f.shape[2:], generator=g) for f in feats]
        assert (targets[0] == -1).any() and (targets[0] >= 0).any()  # background and positives present
    w1_ref, w2_ref = _expected_cls_weights(head, feats, targets)
    w1, w2 = label_aware_weights(head, feats, "cls", targets, batched=batched)
    for a, b, c, d in zip(w1, w1_ref, w2, w2_ref, strict=True):
        assert a.shape == b.shape and not a.requires_grad  # constants for the optimiser
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c, d, rtol=1e-5, atol=1e-6)
    assert max((w - 0.5).abs().max().item() for w in w1) > 1e-3  # the test is not about w = 0.5


def test_lareg_weights_are_sigmoid_of_gradients():
    reg_max = 16
    head, feats = _head(3, 4 * (reg_max + 1)), _feats()
    g = torch.Generator().manual_seed(5)
    bins = [torch.randint(-1, reg_max, (f.shape[0], 4, *f.shape[2:]), generator=g) for f in feats]
    for targets in (None, bins):
        (w,) = label_aware_weights(head, feats, "reg", targets, reg_max=reg_max)
        for level, f in enumerate(feats):
            x = f.clone().requires_grad_(True)
            logits = head.scales[level](head.atss_reg(head.reg_convs(x)))
            n, _, h, wd = logits.shape
            y = torch.softmax(logits.reshape(n, 4, reg_max + 1, h, wd), dim=2)
            label = y.argmax(2) if targets is None else targets[level]
            mask = torch.zeros_like(y)
            for idx in torch.nonzero(label >= 0).tolist():
                b, side, i, j = idx
                mask[b, side, int(label[b, side, i, j]), i, j] = 1.0
            ref = torch.sigmoid(torch.autograd.grad((y * mask).sum(), x)[0])
            torch.testing.assert_close(w[level], ref, rtol=1e-5, atol=1e-6)


def test_second_prediction_follows_eq7_and_repeats_the_regression_tower():
    head, feats = _head(4), _feats()
    coeffs = (1.0, 1.0, 1.0)
    w1, w2 = label_aware_weights(head, feats, "cls")
    out = label_aware_forward(head, feats, _la_cfg(coeffs, reg_tower_repeat=2))
    for level, (x, (cls, reg, ctr)) in enumerate(zip(feats, out, strict=True)):
        x_new = x + w1[level] * x - w2[level] * x
        feat = head.reg_convs(head.reg_convs(x_new))  # regression tower applied twice (paper Sec. IV-B)
        torch.testing.assert_close(cls, head.atss_cls(head.cls_convs(x_new)))
        torch.testing.assert_close(reg, head.scales[level](head.atss_reg(feat)))
        torch.testing.assert_close(ctr, head.atss_centerness(feat))
    once = label_aware_forward(head, feats, _la_cfg(coeffs, reg_tower_repeat=1))
    assert not torch.allclose(once[0].bbox_reg, out[0].bbox_reg)  # the switch changes the regression output


def test_la_under_inference_mode_and_no_grad():
    head, feats = _head(4), _feats()
    ref = label_aware_forward(head, feats, _la_cfg())
    with torch.inference_mode():
        inf_feats = [f.clone() for f in feats]
        assert inf_feats[0].is_inference()
        got = label_aware_forward(head, inf_feats, _la_cfg())
    with torch.no_grad():
        got2 = label_aware_forward(head, feats, _la_cfg())
    for a, b, c in zip(ref, got, got2, strict=True):
        for t_ref, t_inf, t_ng in zip(a, b, c, strict=True):
            assert torch.equal(t_ref.detach(), t_inf) and torch.equal(t_ref.detach(), t_ng)


def _tiny(name: str, **kw):
    return load_config(name).with_overrides(
        depth=18,
        fpn_channels=64,
        stacked_convs=1,
        min_size=96,
        max_size=128,
        candidate_score_thresh=0.001,
        **kw,
    )


def test_coefficients_1_0_0_give_plain_atss():
    torch.manual_seed(0)
    plain = build_detector(_tiny("small_atss")).eval()
    la = build_detector(_tiny("small_lacls", la_coeffs=(1.0, 0.0, 0.0), reg_tower_repeat=1)).eval()
    la.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for p in plain.head.parameters():  # non-trivial scores so that detections exist
            p.add_(torch.randn_like(p) * 0.05)
    la.load_state_dict(plain.state_dict())
    images = [torch.rand(3, 90, 120) * 255, torch.rand(3, 96, 128) * 255]
    with torch.inference_mode():
        a, b = plain.predict(images), la.predict(images)
    assert sum(len(d["boxes"]) for d in a) > 0
    for da, db in zip(a, b, strict=True):
        for k in ("boxes", "scores", "labels"):
            assert torch.equal(da[k], db[k])
    # the default coefficients do change the output, so the comparison above is not vacuous
    la_default = build_detector(_tiny("small_lacls", reg_tower_repeat=1)).eval()
    la_default.load_state_dict(plain.state_dict())
    with torch.inference_mode():
        c = la_default.predict(images)
    assert not torch.equal(c[0]["scores"], a[0]["scores"])
