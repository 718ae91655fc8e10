"""Reading mmdetection checkpoints of the released heads: real files, every refusal (issue: import-mmdet)."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from xscreen.model.classes import CLASS_NAMES
from xscreen.model.mmdet_checkpoint import (
    MmdetImportError,
    checkpoint_class_order,
    read_checkpoint,
)

# The fork's CLASSES tuple (docs/method.md §7.9), as mmdetection writes it into meta.
FORK_CLASSES = (
    "blade", "scissors", "knife", "dagger", "SwissArmyKnife", "PlasticBottle",
    "Cans", "VacuumCup", "GlassBottle", "CartonDrinks", "Tin", "SprayCans",
)  # fmt: skip


def head_state(conf=(16, 4), classes=12, reg=68, extra=None) -> dict[str, torch.Tensor]:
    sd = {
        "backbone.conv1.weight": torch.zeros(64, 3, 7, 7),
        "bbox_head.atss_cls.weight": torch.arange(classes, dtype=torch.float32)[:, None, None, None]
        .expand(classes, 8, 3, 3)
        .clone(),
        "bbox_head.atss_cls.bias": torch.arange(classes, dtype=torch.float32),
        "bbox_head.atss_reg.weight": torch.zeros(reg, 8, 3, 3),
    }
    if conf is not None:
        sd["bbox_head.reg_conf.0.weight"] = torch.zeros(conf[0], conf[1], 1, 1)
        sd["bbox_head.reg_conf.2.weight"] = torch.zeros(1, conf[0], 1, 1)
    sd.update(extra or {})
    return sd


def save(path, sd, classes=FORK_CLASSES):
    meta = {"mmdet_version": "2.12.0", "CLASSES": classes, "epoch": 12}
    torch.save({"meta": meta, "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


@pytest.mark.parametrize(
    ("conf", "head"), [((16, 4), "lacls"), ((64, 20), "lacls_7f32fc6a"), ((64, 4), "lareg")]
)
def test_released_heads_are_told_apart_by_reg_conf(tmp_path, conf, head):
    ckpt = read_checkpoint(save(tmp_path / "c.pth", head_state(conf)))
    assert ckpt.head == head and ckpt.num_classes == 12 and ckpt.meta_classes == FORK_CLASSES
    assert ckpt.mmdet_version == "2.12.0"


def test_class_rows_follow_meta_classes_or_the_json(tmp_path):
    ckpt = read_checkpoint(save(tmp_path / "c.pth", head_state()))
    perm, why = checkpoint_class_order(ckpt, None)
    # xscreen class k takes the checkpoint row of the same name in the fork's order
    assert [FORK_CLASSES[i] for i in perm] == [
        "blade", "dagger", "knife", "scissors", "Tin", "Cans", "CartonDrinks", "GlassBottle",
        "PlasticBottle", "VacuumCup", "SprayCans", "SwissArmyKnife",
    ]  # fmt: skip
    assert "meta CLASSES" in why
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(reversed(CLASS_NAMES))]
    ann = tmp_path / "instances_test.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    perm, why = checkpoint_class_order(ckpt, ann)
    assert perm == list(range(11, -1, -1)) and "categories order" in why


def test_a_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"state_dict": Payload()}, protocol=2))  # a legacy (non-zip) .pth
    with pytest.raises(MmdetImportError, match=r"refused: .*GLOBAL posix.system.*nothing in it was run"):
        read_checkpoint(evil)
    assert not marker.exists()
    # the same payload inside torch.save's zip container
    zipped = tmp_path / "evil_zip.pth"
    torch.save({"state_dict": head_state(), "meta": {"x": Payload()}}, zipped)
    with pytest.raises(MmdetImportError, match=r"refused: .*GLOBAL posix.system"):
        read_checkpoint(zipped)
    assert not marker.exists()


def test_truncated_and_foreign_files_are_one_line_errors(tmp_path):
    good = save(tmp_path / "c.pth", head_state())
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MmdetImportError, match="truncated or not a PyTorch checkpoint"):
        read_checkpoint(cut)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(MmdetImportError, match="truncated or not a PyTorch checkpoint"):
        read_checkpoint(text)
    bare = tmp_path / "bare.pth"
    torch.save({"weights": torch.zeros(2)}, bare)
    with pytest.raises(MmdetImportError, match="expected a dict with 'state_dict'"):
        read_checkpoint(bare)
    with pytest.raises(MmdetImportError, match="no such checkpoint file"):
        read_checkpoint(tmp_path / "missing.pth")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"bbox_head.atss_centerness.weight": torch.zeros(1, 8, 3, 3)}, "a plain ATSS head"),
        ({"bbox_head.retina_cls.weight": torch.zeros(9, 8, 3, 3)}, "a RetinaNet head"),
        ({"bbox_head.gfl_cls.weight": torch.zeros(80, 8, 3, 3)}, "a GFL head"),
    ],
)
def test_other_architectures_are_named_and_refused(tmp_path, extra, message):
    with pytest.raises(MmdetImportError, match=message):
        read_checkpoint(save(tmp_path / "c.pth", head_state(conf=None, reg=4, extra=extra)))


def test_wrong_class_count_reg_conf_and_bins_are_refused(tmp_path):
    with pytest.raises(MmdetImportError, match="the classifier has 80 classes; the CLCXray model has 12"):
        read_checkpoint(save(tmp_path / "a.pth", head_state(classes=80)))
    with pytest.raises(MmdetImportError, match=r"reg_conf has shapes .* fit no released version"):
        read_checkpoint(save(tmp_path / "b.pth", head_state(conf=(32, 4))))
    with pytest.raises(MmdetImportError, match="regress 4 x 17 bins"):
        read_checkpoint(save(tmp_path / "c.pth", head_state(reg=4)))


def test_class_lists_without_all_twelve_names_are_refused(tmp_path):
    ckpt = read_checkpoint(save(tmp_path / "c.pth", head_state(), classes=FORK_CLASSES[:11] + ("wrench",)))
    with pytest.raises(MmdetImportError, match=r"lacks the CLCXray class\(es\) \['spray cans'\]"):
        checkpoint_class_order(ckpt, None)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"categories": [{"id": i, "name": n} for i, n in enumerate(CLASS_NAMES[1:])]}))
    with pytest.raises(MmdetImportError, match=r"lacks the CLCXray class\(es\) \['blade'\]"):
        checkpoint_class_order(ckpt, ann)
    no_meta = tmp_path / "nometa.pth"
    torch.save({"state_dict": head_state()}, no_meta)
    with pytest.raises(MmdetImportError, match="no meta CLASSES; give the dataset's annotation json"):
        checkpoint_class_order(read_checkpoint(no_meta), None)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(MmdetImportError, match="not a readable JSON file"):
        checkpoint_class_order(read_checkpoint(no_meta), broken)
