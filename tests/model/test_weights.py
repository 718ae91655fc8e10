"""Weights I/O: safetensors round trip, fp16 storage, sha256 checks, rejected files, backbone weights."""

import json

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from xscreen.model import (
    ConfigError,
    WeightsError,
    build_detector,
    load_backbone_weights,
    load_config,
    load_weights,
    save_weights,
)
from xscreen.model.weights import read_header, tensors_sha256


def _cfg(name="small_lacls", **kw):
    base = {"depth": 18, "fpn_channels": 64, "stacked_convs": 1, "min_size": 96, "max_size": 128}
    return load_config(name).with_overrides(**{**base, **kw, "candidate_score_thresh": 0.02})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = build_detector(_cfg()).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("w") / "m.safetensors"
    digest = save_weights(model, path, metadata={"version": "7", "trained_on": "unit test"})
    return model, path, digest


def test_roundtrip_gives_identical_outputs(saved):
    model, path, digest = saved
    loaded, info = load_weights(path, expected_config=model.cfg)
    assert not loaded.training
    assert info.sha256 == digest and info.format_version == 1 and info.name == model.cfg.name
    assert info.version == "7" and info.metadata["trained_on"] == "unit test" and info.config == model.cfg
    header = read_header(path)
    assert json.loads(header["class_names"]) == list(model.cfg.class_names)
    image = [torch.rand(3, 100, 120) * 255]
    with torch.inference_mode():
        a, b = model.predict(image), loaded.predict(image)
    assert len(a[0]["boxes"]) > 0
    for k in ("boxes", "scores", "labels"):
        assert torch.equal(a[0][k], b[0][k])
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_sha256_is_over_names_dtypes_shapes_and_bytes():
    t = {"b": torch.arange(4, dtype=torch.float32), "a": torch.ones(2, 2, dtype=torch.float16)}
    d = tensors_sha256(t)
    assert d == tensors_sha256(dict(reversed(list(t.items()))))  # order-independent
    assert d != tensors_sha256({**t, "b": t["b"].reshape(2, 2)})  # shape counts
    assert d != tensors_sha256({**t, "b": t["b"].double()})  # dtype counts
    assert d != tensors_sha256({"c": t["b"], "a": t["a"]})  # names count


def test_half_storage_is_small_and_loads_as_fp32(tmp_path):
    torch.manual_seed(0)
    model = build_detector(load_config("small_lacls")).eval()
    path = tmp_path / "half.safetensors"
    save_weights(model, path, half=True)
    size_mb = path.stat().st_size / 1e6
    assert size_mb < 40  # the bundled demo weights must fit in 40 MB
    loaded, _ = load_weights(path)
    assert loaded.head.atss_cls.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.head.atss_cls.weight, model.head.atss_cls.weight, rtol=1e-3, atol=1e-4)


def test_corrupted_truncated_and_foreign_files_are_rejected(saved, tmp_path):
    _, path, _ = saved
    raw = path.read_bytes()
    corrupt = tmp_path / "corrupt.safetensors"
    buf = bytearray(raw)
    buf[-10] ^= 0xFF  # flip bits in the last tensor's data
    corrupt.write_bytes(bytes(buf))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_weights(corrupt)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(WeightsError, match="truncated|not a readable safetensors"):
        load_weights(truncated)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 10)
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_weights(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(WeightsError, match="without xscreen detector metadata"):
        load_weights(foreign)
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")


def test_expected_config_mismatch_names_the_difference(saved):
    model, path, _ = saved
    with pytest.raises(WeightsError, match="la_mode: weights have 'cls', expected 'none'"):
        load_weights(path, expected_config=_cfg("small_atss"))
    with pytest.raises(WeightsError, match="class_names"):
        load_weights(path, expected_config=_cfg(class_names=("knife", "gun")))
    # test-time settings may differ: the caller's thresholds apply
    loaded, info = load_weights(
        path, expected_config=_cfg(candidate_score_thresh=0.3).with_overrides(max_dets=5)
    )
    assert info.config.max_dets == 5 and loaded.cfg.max_dets == 5


def _rewrite(path, out, change):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    change(tensors)
    meta["sha256"] = tensors_sha256(tensors)  # consistent hash: only the tensor set is wrong
    save_file(tensors, str(out), metadata=meta)


def test_missing_and_unexpected_tensors_are_rejected(saved, tmp_path):
    _, path, _ = saved
    out = tmp_path / "edited.safetensors"
    _rewrite(path, out, lambda t: t.pop("head.atss_cls.weight"))
    with pytest.raises(WeightsError, match=r"1 missing \['head.atss_cls.weight'\]"):
        load_weights(out)
    _rewrite(path, out, lambda t: t.update({"head.extra": torch.zeros(1)}))
    with pytest.raises(WeightsError, match=r"1 unexpected \['head.extra'\]"):
        load_weights(out)
    _rewrite(path, out, lambda t: t.update({"head.atss_cls.weight": torch.zeros(3, 64, 3, 3)}))
    with pytest.raises(WeightsError, match="tensor shapes do not fit"):
        load_weights(out)


def test_backbone_imagenet_weights_from_local_files(tmp_path):
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)
    sd = resnet.state_dict()
    pth = tmp_path / "r18.pth"
    torch.save(sd, pth)
    model = build_detector(_cfg())
    names = load_backbone_weights(model, pth)
    assert "layer4.1.conv2.weight" in names and not any(n.startswith("fc.") for n in names)
    assert torch.equal(model.backbone.body.layer3[0].conv1.weight, sd["layer3.0.conv1.weight"])
    assert torch.equal(model.backbone.body.bn1.running_var, sd["bn1.running_var"])
    st = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    load_backbone_weights(model, st)
    r50 = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), r50)
    with pytest.raises(WeightsError, match="not a ResNet-18 state dict"):
        load_backbone_weights(model, r50)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read backbone weights"):
        load_backbone_weights(model, bad)


def test_group_norm_backbone_trains_round_trips_and_refuses_imagenet_weights(tmp_path):
    # backbone_norm=group_norm (training from scratch, docs/la_experiment.md): trainable GroupNorm
    # in the ResNet, saved and reloaded like any variant, and never mixed with frozen-BN weights.
    torch.manual_seed(0)
    cfg = _cfg(backbone_norm="group_norm", frozen_stages=-1)
    model = build_detector(cfg)
    norms = [m for m in model.backbone.body.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 1 + 2 * 8 + 3  # stem + 2 per basic block + 3 downsample branches (ResNet-18)
    assert all(m.num_groups == 32 and m.weight.requires_grad for m in norms)
    assert not any(isinstance(m, torchvision.ops.misc.FrozenBatchNorm2d) for m in model.modules())
    model.train()
    images = [torch.rand(3, 96, 128) * 255]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([3])}]
    sum(model(images, targets).values()).backward()
    assert norms[0].weight.grad is not None and norms[0].weight.grad.abs().sum() > 0
    path = tmp_path / "gn.safetensors"
    save_weights(model.eval(), path)
    loaded, info = load_weights(path)
    assert info.config.backbone_norm == "group_norm"
    with torch.inference_mode():
        a, b = model.predict(images), loaded.predict(images)
    assert torch.equal(a[0]["scores"], b[0]["scores"])
    with pytest.raises(WeightsError, match="backbone_norm"):
        load_weights(path, expected_config=_cfg())
    pth = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), pth)
    with pytest.raises(WeightsError, match="BatchNorm statistics.*'group_norm'"):
        load_backbone_weights(model, pth)


def _deprecation_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]


def test_config_file_with_the_old_candidate_key_loads_with_one_deprecation_line(tmp_path, caplog):
    data = json.loads(_cfg().to_json())
    del data["candidate_score_thresh"]
    data["score_thresh"] = 0.125  # the key's name in older files
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    with caplog.at_level("WARNING", logger="xscreen.model.config"):
        cfg = load_config(old)
    assert cfg.candidate_score_thresh == 0.125 and cfg == _cfg().with_overrides(candidate_score_thresh=0.125)
    (line,) = _deprecation_lines(caplog)
    assert str(old) in line and "'score_thresh'" in line and "'candidate_score_thresh'" in line
    data["candidate_score_thresh"] = 0.5  # both names: which one is meant is unclear
    old.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="both 'score_thresh' and its new name 'candidate_score_thresh'"):
        load_config(old)


def test_weights_file_with_the_old_candidate_key_loads_with_one_deprecation_line(saved, tmp_path, caplog):
    """A file saved before the rename: its stored config says score_thresh. Same tensors, same sha256."""
    from safetensors.torch import load_file

    model, path, digest = saved
    header = read_header(path)
    stored = json.loads(header["config"])
    stored["score_thresh"] = stored.pop("candidate_score_thresh")
    old = tmp_path / "old.safetensors"
    save_file(
        load_file(str(path)), str(old), metadata={**header, "config": json.dumps(stored, sort_keys=True)}
    )
    with caplog.at_level("INFO"):
        loaded, info = load_weights(old, expected_config=model.cfg)
    assert info.sha256 == digest and info.config == model.cfg
    assert loaded.cfg.candidate_score_thresh == model.cfg.candidate_score_thresh == 0.02
    (line,) = _deprecation_lines(caplog)
    assert str(old) in line and "'candidate_score_thresh'" in line
    caplog.clear()
    with caplog.at_level("INFO"):
        load_weights(path)  # a file with the current name: no such line
    assert _deprecation_lines(caplog) == []
