"""Train a detector on a COCO-style scan set (SGD, warm-up + step decay, per-epoch validation, DDP).

``train(TrainSettings(...))`` is what ``xscreen train`` runs (flags: xscreen/commands/train.py). It
checks the settings and the data, sets up the process group (training.distributed) and the run
folder (training.rundir), builds model, optimiser, data and lr schedule, restores a ``--resume``d
run, and hands them to the loop (training.engine). Under ``torchrun`` the same call trains on every
rank; only rank 0 writes.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from xscreen.model import build_detector, load_backbone_weights
from xscreen.model.config import load_config
from xscreen.model.weights import load_weights
from xscreen.training.checkpoint import read_training_state, restore_training_state
from xscreen.training.dataset import CocoDetection, load_coco_json, match_categories
from xscreen.training.distributed import (
    DistInfo,
    broadcast_from_main,
    dist_from_env,
    gather_from_all,
    process_group,
    resolve_device,
)
from xscreen.training.engine import Progress, Trainer, stop_on_signals
from xscreen.training.errors import TrainError
from xscreen.training.rundir import (
    LAST_FILE,
    STATE_FILE,
    RunLog,
    plot_curves,
    prepare_run_dir,
    weights_digest,
)
from xscreen.training.schedule import WarmupStepSchedule, scaled_lr
from xscreen.training.settings import TrainSettings

log = logging.getLogger("xscreen.train")

# training.la_experiment imports LAST_FILE and STATE_FILE from here, beside TrainSettings and train.


def train(s: TrainSettings) -> dict[str, Any]:
    """Run (or resume) one training run; returns a summary dict. Raises TrainError / XscreenError."""
    dist = dist_from_env()
    cfg = load_config(s.config)
    if s.epochs is None:
        s.epochs = cfg.epochs
    if s.batch_size < 1 or s.workers < 0 or s.epochs < 1 or s.eval_every < 0:
        raise TrainError("batch size and epochs must be >= 1, workers and eval-every >= 0")
    if s.init_weights and s.resume:
        raise TrainError(
            "--init-weights starts a new run from other weights; --resume continues the run in --out "
            "from its own state: give one of them"
        )
    if s.init_weights and s.backbone_weights:
        raise TrainError(
            "--init-weights already sets every tensor, the backbone too; drop --backbone-weights"
        )
    out = Path(s.out)
    # Read before the run folder is made: a missing or mismatched file leaves nothing behind.
    init = _read_init_weights(s.init_weights, cfg) if s.init_weights else None
    device = resolve_device(s.device, dist)
    splits = ("train", "val") if s.eval_every else ("train",)
    counts = check_dataset(s.data, cfg.class_names, splits)
    with process_group(dist, device):
        # Only rank 0 touches the output folder; its verdict is shared so no rank runs on alone.
        problem = None
        if dist.is_main:
            try:
                prepare_run_dir(out, s.resume)
            except TrainError as exc:
                problem = str(exc)
        problem = broadcast_from_main(dist, problem)
        if problem:
            raise TrainError(problem)
        return _run(s, cfg, dist, device, out, counts, init)


def check_dataset(
    data_dir: str | Path, class_names: tuple[str, ...], splits: tuple[str, ...]
) -> dict[str, int]:
    """Fail early, with the file and the reason, on a data folder training cannot use.

    Checks each split's annotation JSON (present, parseable, COCO-shaped, non-empty) and that its
    category names are exactly the config's class names (compared with model.classes.normalise_name).
    Returns {split: number of images}.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise TrainError(f"data folder {root} does not exist or is not a folder")
    counts: dict[str, int] = {}
    for split in splits:
        path = root / "annotations" / f"{split}.json"
        coco = load_coco_json(path)  # DatasetError names the file and what is wrong with it
        if not coco["images"]:
            raise TrainError(f"{path}: the {split} split has no images")
        match_categories(coco["categories"], class_names, source=str(path))
        counts[split] = len(coco["images"])
    return counts


def _run(
    s: TrainSettings, cfg, dist: DistInfo, device, out: Path, counts: dict[str, int], init=None
) -> dict[str, Any]:
    """Build everything the loop needs, run it, and check that the ranks agree at the end."""
    t_start = time.time()
    _seed_everything(s.seed)
    model = _initial_model(s, cfg, device, init)
    base_lr = scaled_lr(
        s.lr if s.lr is not None else cfg.lr, s.batch_size * dist.world_size, cfg.lr_batch_size
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    dataset, sampler = _train_data(s, cfg, dist)
    iters_per_epoch = math.ceil(len(sampler) / s.batch_size)
    schedule = _lr_schedule(s, cfg, base_lr, iters_per_epoch)
    run_info = _run_info(s, cfg, dist, base_lr, iters_per_epoch, init)
    if s.resume:
        progress = _resume(s, out, run_info, dist, model, optimizer, scaler)
    else:
        progress = Progress()
        if dist.enabled:  # one data-augmentation stream per rank
            _seed_everything(s.seed + 1000 * dist.rank)
    ddp_model = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if dist.enabled
        else model
    )
    run_log = _open_run_log(s, cfg, dist, out, run_info, progress)
    with stop_on_signals() as stop:
        trainer = Trainer(
            settings=s,
            model=model,
            ddp_model=ddp_model,
            params=params,
            optimizer=optimizer,
            scaler=scaler,
            schedule=schedule,
            clip=cfg.grad_clip if s.clip_grad is None else (s.clip_grad or None),
            amp=amp,
            dataset=dataset,
            sampler=sampler,
            iters_per_epoch=iters_per_epoch,
            device=device,
            dist=dist,
            out=out,
            run_info=run_info,
            run_log=run_log,
            progress=progress,
            stop=stop,
            t_start=t_start,
        )
        try:
            trainer.fit()
        finally:
            if run_log is not None:
                run_log.close()

    digest = _agreed_digest(model, dist)
    if dist.is_main:
        plot_curves(out)
    if stop.requested:
        raise TrainError(
            f"interrupted at iteration {progress.iteration}; state saved in {out}, continue with --resume"
        )
    return {
        "rank": dist.rank,
        "iteration": progress.iteration,
        "epochs_done": progress.epochs_done,
        "best_mAP": progress.best_mAP,
        "best_epoch": progress.best_epoch,
        "digest": digest,
        "last": str(out / LAST_FILE),
        "seconds": time.time() - t_start,
        "counts": counts,
    }


def _initial_model(s: TrainSettings, cfg, device, init):
    """The detector in train mode on ``device``: backbone weights, or ``init``'s tensors, loaded."""
    model = build_detector(cfg).to(device)
    if s.backbone_weights:
        _load_backbone_weights(model, s.backbone_weights)
    if init is not None:
        model.load_state_dict(init[0], strict=True)
    model.train()
    return model


def _train_data(s: TrainSettings, cfg, dist: DistInfo):
    """The train split (augmented) and this rank's shuffling sampler of it."""
    dataset = CocoDetection(
        s.data, "train", class_names=cfg.class_names, train=True, min_size=cfg.min_size, max_size=cfg.max_size
    )
    if dist.rank == 0:
        _warn_swapped_energies(dataset)
    sampler = DistributedSampler(
        dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=s.seed
    )
    return dataset, sampler


def _run_info(s: TrainSettings, cfg, dist: DistInfo, base_lr: float, iters_per_epoch: int, init) -> dict:
    """What identifies the run (run.json, the saved state; ``--resume`` checks it against the new one)."""
    run_info = {
        "config": cfg.name,
        "data": str(s.data),
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "world_size": dist.world_size,
        "seed": s.seed,
        "lr": base_lr,
        "iters_per_epoch": iters_per_epoch,
    }
    if init is not None:  # provenance: the weights this run started from
        run_info["init_weights"] = init[1]
    return run_info


def _lr_schedule(s: TrainSettings, cfg, base_lr: float, iters_per_epoch: int):
    """Linear warm-up, then the config's step decay, stretched to ``s.epochs``."""
    return WarmupStepSchedule(
        base_lr=base_lr,
        total_iters=iters_per_epoch * s.epochs,
        warmup_iters=cfg.warmup_iters if s.warmup_iters is None else s.warmup_iters,
        warmup_ratio=cfg.warmup_ratio,
        steps=tuple(cfg.lr_steps),
        ref_epochs=cfg.epochs,
    )


def _open_run_log(
    s: TrainSettings, cfg, dist: DistInfo, out: Path, run_info: dict[str, Any], progress: Progress
) -> RunLog | None:
    """Rank 0's run log (config, run settings, metrics); None on the other ranks."""
    if not dist.is_main:
        return None
    return RunLog(
        out,
        config_json=cfg.to_json(),
        run_json={**run_info, "settings": asdict(s)},
        resume_at=progress.iteration if s.resume else None,
    )


def _agreed_digest(model, dist: DistInfo) -> str:
    """The final weights' sha256, the same on every rank (TrainError otherwise)."""
    digest = weights_digest(model)
    log.info("rank %d final weights sha256 %s", dist.rank, digest)
    digests = gather_from_all(dist, digest)
    if len(set(digests)) != 1:
        raise TrainError(f"DDP ranks ended with different weights: {digests}")
    return digest


def _resume(
    s: TrainSettings, out: Path, run_info: dict[str, Any], dist: DistInfo, model, optimizer, scaler
) -> Progress:
    """Model, optimiser, scaler and RNG state of the run in ``out``; refuses a run with other settings."""
    tensors, meta = read_training_state(out / STATE_FILE)
    saved = meta["progress"]
    for key in ("config", "batch_size", "world_size", "iters_per_epoch"):
        if saved["run"].get(key) != run_info[key]:
            raise TrainError(
                f"--resume: {key} was {saved['run'].get(key)!r} in the saved run, now {run_info[key]!r}; "
                "resume with the original settings"
            )
    if "init_weights" in saved["run"]:  # a fine-tuning run keeps its provenance across resumes
        run_info["init_weights"] = saved["run"]["init_weights"]
    if saved["run"]["epochs"] != s.epochs:
        log.warning(
            "--resume with --epochs %d (was %d): the lr schedule changes", s.epochs, saved["run"]["epochs"]
        )
    state = restore_training_state(
        tensors, meta, model=model, optimizer=optimizer, scaler=scaler, restore_rng_state=not dist.enabled
    )
    if dist.enabled:  # per-rank RNG streams are not saved (only rank 0 writes): reseed deterministically
        _seed_everything(s.seed + 1000 * dist.rank + state["iteration"])
    progress = Progress(
        iteration=state["iteration"], best_mAP=state["best_mAP"], best_epoch=state["best_epoch"]
    )
    log.info(
        "resuming %s at iteration %d (epoch %d)",
        out, progress.iteration, progress.iteration // run_info["iters_per_epoch"] + 1,
    )  # fmt: skip
    return progress


def _warn_swapped_energies(dataset) -> None:
    """A warning with counts when training images look like exchanged high/low (docs/method.md §1a)."""
    checked, swapped = dataset.swapped_energy_images()
    if swapped:
        shown = ", ".join(swapped[:5]) + (", ..." if len(swapped) > 5 else "")
        log.warning(
            "%d of %d training images checked look like exchanged high/low energies "
            "(channel 1 darker than channel 2 where objects attenuate; docs/method.md §1a): %s",
            len(swapped), checked, shown,
        )  # fmt: skip
    else:
        log.info("energy order: %d training images checked, none look exchanged", checked)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _read_init_weights(path: str, cfg) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Another detector's weights to start (fine-tune) from: its fp32 state dict and its provenance.

    The file must hold the same architecture as the run's config (load_weights checks its sha256 and
    the architecture fields and raises WeightsError naming the difference); fp16 files load as fp32.
    The provenance (path, name, version, tensors sha256) goes into the run's metadata.
    """
    if not Path(path).is_file():
        raise TrainError(f"--init-weights: {path} does not exist")
    source, info = load_weights(path, expected_config=cfg)
    log.info("starting from %s (%s %s, sha256 %s...)", path, info.name, info.version, info.sha256[:12])
    provenance = {"path": str(path), "name": info.name, "version": info.version, "sha256": info.sha256}
    return source.state_dict(), provenance


def _load_backbone_weights(model, path: str) -> None:
    """ImageNet ResNet weights (torchvision key names, .pth or .safetensors) into the backbone."""
    if not Path(path).is_file():
        raise TrainError(f"--backbone-weights: {path} does not exist")
    names = load_backbone_weights(model, path)  # WeightsError (an XscreenError) on a wrong file
    log.info("loaded %d backbone tensors from %s", len(names), path)
