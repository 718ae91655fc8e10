"""`xscreen train` end to end on a tiny scan set: outputs, exact resume, and every failure's message."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.train_data import tiny_config, write_tiny_set
from xscreen.cli import main
from xscreen.model.weights import load_weights
from xscreen.training.train import TrainSettings, train

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(autouse=True)
def one_thread():
    # One intra-op thread: on a shared 2-core machine OpenMP spin-waiting under oversubscription
    # made the same steps ~10x slower with 2 threads.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data = write_tiny_set(root / "data", n_train=4, n_val=2)
    return data, tiny_config(root / "tiny.json")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_train_help_does_not_import_torch():
    code = (
        "import sys; from xscreen.cli import main\n"
        "try:\n    main(['train', '--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'xscreen.training.train') if m in sys.modules)\n"
        "assert not heavy, f'imported for train --help: {heavy}'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--config", "--data", "--out", "--resume", "--max-iters", "--no-progress"):
        assert flag in proc.stdout


@pytest.mark.slow  # a training run with evaluation
def test_cli_run_writes_checkpoints_logs_and_plot(tiny, tmp_path):
    data, cfg = tiny
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "xscreen.cli", "train", "--config", str(cfg), "--data", str(data)]
    cmd += ["--out", str(out), "--epochs", "2", "--batch-size", "2", "--workers", "0", "--device", "cpu"]
    cmd += ["--log-every", "1", "--seed", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained 4 iterations (2 epochs)" in proc.stdout
    assert "epoch 2/2" in proc.stderr  # tqdm progress bar
    for name in (
        "last.safetensors",
        "best.safetensors",
        "train_state.safetensors",
        "config.json",
        "curves.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))

    rows = _rows(out / "train_log.csv")
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert [int(r["epoch"]) for r in rows] == [1, 1, 2, 2]
    assert all(math.isfinite(float(r["loss"])) and float(r["loss"]) > 0 for r in rows)
    lrs = [float(r["lr"]) for r in rows]
    # warm-up of 2 iterations from 0.001 x lr (tiny config), lr 0.01 x 2/8; of 4 iterations the decays
    # at 8/12 and 11/12 fall on 0-based iterations round(2.67) = 3 and round(3.67) = 4 (after the run)
    base = 0.01 * 2 / 8
    assert lrs[0] == pytest.approx(base * 0.001) and lrs[1] == pytest.approx(base * (1 - 0.5 * 0.999))
    assert lrs[2] == pytest.approx(base) and lrs[3] == pytest.approx(base * 0.1)
    val = _rows(out / "val_log.csv")
    assert [int(r["epoch"]) for r in val] == [1, 2]
    assert all(0.0 <= float(r["mAP"]) <= 1.0 for r in val)

    model, info = load_weights(out / "last.safetensors")
    assert info.config.name == "tiny_small_lacls"
    assert info.metadata["epoch"] == 2 and info.metadata["iteration"] == 4
    best = max(float(r["mAP"]) for r in val)
    _, best_info = load_weights(out / "best.safetensors")
    assert best_info.metadata["val"]["mAP"] == pytest.approx(best)
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())


def _settings(data, cfg, out, **kw) -> TrainSettings:
    base = dict(config=str(cfg), data=str(data), out=str(out), epochs=2, batch_size=2, workers=0)
    base.update(device="cpu", eval_every=0, seed=7, progress=False, log_every=1)
    base.update(kw)
    return TrainSettings(**base)


@pytest.mark.slow  # three training runs
def test_resume_after_interruption_equals_uninterrupted_run(tiny, tmp_path):
    data, cfg = tiny
    full = train(_settings(data, cfg, tmp_path / "full"))
    assert full["iteration"] == 4
    part = train(_settings(data, cfg, tmp_path / "part", max_iters=3))  # stops mid-epoch 2
    assert part["iteration"] == 3 and part["digest"] != full["digest"]
    torch.manual_seed(999)  # disturb the global RNG: resume must restore it
    resumed = train(_settings(data, cfg, tmp_path / "part", resume=True))
    assert resumed["iteration"] == 4
    a, _ = load_weights(tmp_path / "full" / "last.safetensors")
    b, _ = load_weights(tmp_path / "part" / "last.safetensors")
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=1e-6, rtol=0), k
    assert resumed["digest"] == full["digest"]  # bitwise on CPU with workers=0
    rows = _rows(tmp_path / "part" / "train_log.csv")
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == [r["loss"] for r in _rows(tmp_path / "full" / "train_log.csv")]


def _fail(argv, capsys) -> str:
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_missing_and_malformed_data(tiny, tmp_path, capsys):
    data, cfg = tiny
    common = ["--config", str(cfg), "--out", str(tmp_path / "r"), "--device", "cpu", "--workers", "0"]
    err = _fail(["--data", str(tmp_path / "nope"), *common], capsys)
    assert "xscreen train: error: data folder" in err and "does not exist" in err

    bad = tmp_path / "bad"
    (bad / "annotations").mkdir(parents=True)
    err = _fail(["--data", str(bad), *common], capsys)
    assert "annotation file not found" in err and "train.json" in err

    (bad / "annotations" / "train.json").write_text("{not json")
    assert "train.json: not valid JSON" in _fail(["--data", str(bad), *common], capsys)

    (bad / "annotations" / "train.json").write_text(json.dumps({"images": [], "categories": []}))
    assert "COCO key 'annotations' missing or not a list" in _fail(["--data", str(bad), *common], capsys)

    (bad / "annotations" / "train.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": []})
    )
    assert "the train split has no images" in _fail(["--data", str(bad), *common], capsys)


def test_class_list_must_match_the_config(tiny, tmp_path, capsys):
    data, cfg = tiny
    coco = json.loads((data / "annotations" / "train.json").read_text())
    coco["categories"][0]["name"] = "hammer"
    other = tmp_path / "other"
    (other / "annotations").mkdir(parents=True)
    (other / "annotations" / "train.json").write_text(json.dumps(coco))
    err = _fail(
        ["--config", str(cfg), "--data", str(other), "--out", str(tmp_path / "r"), "--eval-every", "0"],
        capsys,
    )
    assert "train.json: categories do not match the configured classes" in err
    assert (
        "in the json but not in the model's classes: 'hammer'" in err
        and "in the model's classes but not in the json: 'blade'" in err
    )


def test_output_folder_not_writable_and_bad_flags(tiny, tmp_path, capsys):
    data, cfg = tiny
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = _fail(["--config", str(cfg), "--data", str(data), "--out", str(blocker / "run")], capsys)
    assert f"output folder {blocker / 'run'} is not writable" in err
    err = _fail(["--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "r"), "--resume"], capsys)
    assert "--resume" in err and "nothing to continue" in err
    err = _fail(["--config", "no_such_variant", "--data", str(data), "--out", str(tmp_path / "r")], capsys)
    assert "no detector config 'no_such_variant'" in err
    for flag, value, msg in (
        ("--epochs", "0", "must be >= 1"),
        ("--lr", "-1", "must be a finite number > 0"),
        ("--lr", "nan", "must be a finite number > 0"),
        ("--batch-size", "two", "expected a whole number"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(
                [
                    "train",
                    "--config",
                    str(cfg),
                    "--data",
                    str(data),
                    "--out",
                    str(tmp_path / "r"),
                    flag,
                    value,
                ]
            )
        assert exc.value.code == 2
        assert msg in capsys.readouterr().err


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny, tmp_path, capsys):
    data, cfg = tiny
    out = tmp_path / "run"
    args = ["--config", str(cfg), "--data", str(data), "--out", str(out), "--epochs", "2", "--workers", "0"]
    args += ["--device", "cpu", "--eval-every", "0", "--no-progress", "--clip-grad", "0"]
    assert main(["train", *args, "--max-iters", "2"]) == 0  # one good epoch
    capsys.readouterr()
    good = (out / "last.safetensors").read_bytes()
    err = _fail([*args, "--resume", "--lr", "1e30"], capsys)  # diverges in epoch 2
    assert "non-finite loss at epoch 2, iteration " in err
    assert f"kept the last good checkpoint {out / 'last.safetensors'}" in err
    assert (out / "last.safetensors").read_bytes() == good
    _, info = load_weights(out / "last.safetensors")
    assert info.metadata["epoch"] == 1


def _max_diff(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa if sa[k].is_floating_point())


@pytest.mark.slow  # two training runs
def test_init_weights_starts_a_new_run_from_another_runs_weights(tiny, tmp_path):
    data, cfg = tiny
    train(_settings(data, cfg, tmp_path / "first", epochs=1))
    src = tmp_path / "first" / "last.safetensors"
    first, src_info = load_weights(src)
    # At lr 1e-12 a run ends where it started: at `src` when --init-weights loaded it, else at its own
    # random init (seed 8, not the first run's 7).
    tuned = train(_settings(data, cfg, tmp_path / "tuned", epochs=1, lr=1e-12, seed=8, init_weights=str(src)))
    train(_settings(data, cfg, tmp_path / "fresh", epochs=1, lr=1e-12, seed=8))
    assert tuned["iteration"] == 2  # a new run: its own schedule from iteration 0
    b, info = load_weights(tmp_path / "tuned" / "last.safetensors")
    c, _ = load_weights(tmp_path / "fresh" / "last.safetensors")
    assert _max_diff(first, b) < 1e-6
    assert _max_diff(first, c) > 1e-3
    assert info.metadata["run"]["init_weights"] == {
        "path": str(src),
        "name": src_info.name,
        "version": src_info.version,
        "sha256": src_info.sha256,
    }
    # An fp16 copy (what is bundled) is a valid start too: loaded as fp32, equal to fp16 precision.
    from xscreen.model.weights import save_weights

    half = tmp_path / "half.safetensors"
    save_weights(first, half, half=True)
    train(_settings(data, cfg, tmp_path / "from_half", epochs=1, lr=1e-12, seed=8, init_weights=str(half)))
    d, _ = load_weights(tmp_path / "from_half" / "last.safetensors")
    assert next(iter(d.state_dict().values())).dtype == torch.float32
    assert _max_diff(first, d) < 2e-3


def test_init_weights_refuses_a_missing_or_different_model_and_conflicting_flags(tiny, tmp_path, capsys):
    data, cfg = tiny
    common = ["--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "r"), "--device", "cpu"]
    common += ["--workers", "0", "--eval-every", "0", "--no-progress"]
    err = _fail([*common, "--init-weights", str(tmp_path / "none.safetensors")], capsys)
    assert f"--init-weights: {tmp_path / 'none.safetensors'} does not exist" in err

    from xscreen.model import build_detector
    from xscreen.model.config import load_config
    from xscreen.model.weights import save_weights

    other = tmp_path / "atss.safetensors"
    save_weights(build_detector(load_config(tiny_config(tmp_path / "atss.json", base="small_atss"))), other)
    err = _fail([*common, "--init-weights", str(other)], capsys)
    assert "weights do not match the expected config 'tiny_small_lacls'" in err
    assert "la_mode: weights have 'none', expected 'cls'" in err

    err = _fail([*common, "--init-weights", str(other), "--resume"], capsys)
    assert "--init-weights starts a new run from other weights; --resume continues the run" in err
    err = _fail([*common, "--init-weights", str(other), "--backbone-weights", str(other)], capsys)
    assert "--init-weights already sets every tensor, the backbone too; drop --backbone-weights" in err
    assert not (tmp_path / "r").exists()  # nothing written for a refused run


def test_sigterm_to_the_process_group_saves_a_checkpoint_the_run_resumes_from(tiny, tmp_path):
    """Ctrl-C, `kill -- -PGID` and `pkill -f "xscreen train"` signal every process of the run, its
    DataLoader worker too: the run must still finish its step, save and say so, and resume."""
    import signal
    import time

    data, cfg = tiny
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "xscreen.cli", "train", "--config", str(cfg), "--data", str(data)]
    cmd += ["--out", str(out), "--epochs", "500", "--batch-size", "1", "--workers", "1", "--device", "cpu"]
    cmd += ["--log-every", "1", "--eval-every", "0", "--seed", "5", "--no-progress"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 180
        while not ((out / "train_log.csv").exists() and len(_rows(out / "train_log.csv")) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, stderr[-3000:]  # interrupted, not finished
    assert "Traceback" not in stderr and "DataLoader worker" not in stderr
    stopped = int(_rows(out / "train_log.csv")[-1]["iteration"])
    assert f"interrupted at iteration {stopped}; state saved in {out}, continue with --resume" in stderr
    _, info = load_weights(out / "last.safetensors")
    assert info.metadata["iteration"] == stopped < 2000  # saved where it stopped, long before the end

    again = dict(epochs=500, batch_size=1, workers=1, seed=5, resume=True, max_iters=stopped + 2)
    resumed = train(_settings(data, cfg, out, **again))
    assert resumed["iteration"] == stopped + 2
    assert [int(r["iteration"]) for r in _rows(out / "train_log.csv")] == list(range(1, stopped + 3))
