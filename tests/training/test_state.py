"""The lr schedule (warm-up + step decay) and the pickle-free resumable training state."""

import random

import numpy as np
import pytest
import torch

from xscreen.training.checkpoint import (
    CheckpointError,
    read_training_state,
    restore_training_state,
    save_training_state,
)
from xscreen.training.schedule import WarmupStepSchedule, scaled_lr


def test_schedule_matches_mmdet_schedule_1x():
    # 12 epochs of 100 iterations: decay at the start of epochs 9 and 12 (0-based iterations 800, 1100).
    s = WarmupStepSchedule(base_lr=0.01, total_iters=1200, warmup_iters=500, warmup_ratio=0.001)
    assert s.decay_iters == (800, 1100)
    assert s.lr_at(0) == pytest.approx(0.01 * 0.001)
    assert s.lr_at(250) == pytest.approx(0.01 * (1 - 0.5 * 0.999))
    assert s.lr_at(500) == pytest.approx(0.01)
    assert s.lr_at(799) == pytest.approx(0.01)
    assert s.lr_at(800) == pytest.approx(0.001)
    assert s.lr_at(1099) == pytest.approx(0.001)
    assert s.lr_at(1100) == pytest.approx(0.0001)
    lrs = [s.lr_at(i) for i in range(500)]
    assert all(b > a for a, b in zip(lrs, lrs[1:], strict=False))


def test_short_run_keeps_the_shape_of_the_schedule():
    s = WarmupStepSchedule(base_lr=0.02, total_iters=60, warmup_iters=0, steps=(8, 11), ref_epochs=12)
    assert s.decay_iters == (40, 55)
    assert s.lr_at(39) == pytest.approx(0.02) and s.lr_at(40) == pytest.approx(0.002)


def test_linear_scaling_rule_and_bad_values():
    assert scaled_lr(0.01, 16) == pytest.approx(0.02)
    assert scaled_lr(0.01, 2) == pytest.approx(0.0025)
    with pytest.raises(ValueError, match="learning rate"):
        WarmupStepSchedule(base_lr=0.0, total_iters=10)
    with pytest.raises(ValueError, match="batch"):
        scaled_lr(0.01, 0)


def _tiny():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    return model, opt


def _step(model, opt):
    x = torch.randn(5, 4)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def test_state_round_trip_continues_bitwise(tmp_path):
    model, opt = _tiny()
    for _ in range(3):
        _step(model, opt)
    random.seed(5)
    np.random.seed(5)
    save_training_state(
        tmp_path / "s.safetensors", model=model, optimizer=opt, scaler=None, progress={"it": 3}
    )
    ref = [_step(model, opt) for _ in range(3)] + [random.random(), float(np.random.rand())]
    ref_w = {k: v.clone() for k, v in model.state_dict().items()}

    model2, opt2 = _tiny()  # fresh objects, different RNG position
    torch.manual_seed(123)
    tensors, meta = read_training_state(tmp_path / "s.safetensors")
    progress = restore_training_state(tensors, meta, model=model2, optimizer=opt2, scaler=None)
    assert progress == {"it": 3}
    got = [_step(model2, opt2) for _ in range(3)] + [random.random(), float(np.random.rand())]
    assert got == ref
    for k, v in model2.state_dict().items():
        assert torch.equal(v, ref_w[k]), k
    # the file is plain safetensors: no pickle anywhere
    assert (tmp_path / "s.safetensors").read_bytes()[8:9] == b"{"


def test_bad_state_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_training_state(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable xscreen training state"):
        read_training_state(bad)
    model, opt = _tiny()
    save_training_state(tmp_path / "s.safetensors", model=model, optimizer=opt, scaler=None, progress={})
    tensors, meta = read_training_state(tmp_path / "s.safetensors")
    other = torch.nn.Linear(3, 3)
    with pytest.raises(CheckpointError, match="does not match"):
        restore_training_state(
            tensors, meta, model=other, optimizer=torch.optim.SGD(other.parameters(), lr=0.1), scaler=None
        )
