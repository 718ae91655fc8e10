"""Train a detector on a COCO-style scan set (SGD, warm-up + step decay, per-epoch validation, DDP).

``xscreen train --config small_lacls --data DIR --out RUN``. Run it under ``torchrun`` for
multi-GPU / multi-node training: the same command, no flag changes (RANK / WORLD_SIZE /
LOCAL_RANK are read from the environment; gloo on CPU, nccl on CUDA). Only rank 0 writes.

RUN/ receives ``last.safetensors`` and ``best.safetensors`` (model weights, model.weights format),
``train_state.safetensors`` (everything ``--resume`` needs, no pickle), ``config.json``,
``train_log.csv`` (per logged iteration), ``val_log.csv`` (per epoch), ``tensorboard/`` and
``curves.png``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xscreen.argtypes import non_negative_float, non_negative_int, positive_float, positive_int
from xscreen.errors import XscreenError

log = logging.getLogger("xscreen.train")

STATE_FILE = "train_state.safetensors"
LAST_FILE = "last.safetensors"
BEST_FILE = "best.safetensors"
TRAIN_CSV = "train_log.csv"
VAL_CSV = "val_log.csv"
VAL_METRICS = ("mAP", "AP50", "AP75", "APs", "APm", "APl")


class TrainError(XscreenError):
    """A training run that cannot start or had to stop (bad data, flags, output folder, diverged loss)."""


@dataclass
class TrainSettings:
    """Everything one ``xscreen train`` run depends on (flags; None = take the config's default)."""

    config: str
    data: str
    out: str
    epochs: int | None = None
    batch_size: int = 2
    workers: int = 2
    device: str = "auto"
    resume: bool = False
    backbone_weights: str | None = None
    lr: float | None = None  # for a total batch of cfg.lr_batch_size; scaled linearly
    clip_grad: float | None = None  # None: cfg.grad_clip; 0: off
    seed: int = 0
    max_iters: int | None = None
    eval_every: int = 1
    warmup_iters: int | None = None
    log_every: int = 10
    eval_batch_size: int = 2
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="detector config name (small_lacls, ...) or JSON path"
    )
    parser.add_argument(
        "--data", required=True, help="dataset folder (annotations/{train,val}.json + images/)"
    )
    parser.add_argument("--out", required=True, help="run folder for checkpoints and logs")
    parser.add_argument("--epochs", type=positive_int, default=None, help="epochs (default: config, 12)")
    parser.add_argument("--batch-size", type=positive_int, default=2, help="images per process (default 2)")
    parser.add_argument("--workers", type=non_negative_int, default=2, help="data-loader workers per process")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    parser.add_argument(
        "--backbone-weights",
        default=None,
        help="ImageNet ResNet weights (.pth/.safetensors) for the backbone",
    )
    parser.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="lr for a total batch of 8 (default: config, 0.01); scaled linearly to the real batch",
    )
    parser.add_argument(
        "--clip-grad",
        type=non_negative_float,
        default=None,
        help="max gradient L2 norm (0 = off; default config)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument(
        "--max-iters",
        type=positive_int,
        default=None,
        help="stop after this many iterations in total (smoke runs)",
    )
    parser.add_argument(
        "--eval-every", type=non_negative_int, default=1, help="validate every N epochs (0 = never)"
    )
    parser.add_argument("--warmup-iters", type=non_negative_int, default=None, help="default: config, 500")
    parser.add_argument(
        "--log-every", type=positive_int, default=10, help="CSV/TensorBoard row every N iterations"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    settings = TrainSettings(
        config=args.config,
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        resume=args.resume,
        backbone_weights=args.backbone_weights,
        lr=args.lr,
        clip_grad=args.clip_grad,
        seed=args.seed,
        max_iters=args.max_iters,
        eval_every=args.eval_every,
        warmup_iters=args.warmup_iters,
        log_every=args.log_every,
        progress=not args.no_progress,
    )
    result = train(settings)
    if result["rank"] == 0:
        best = result["best_mAP"]
        print(
            f"trained {result['iteration']} iterations ({result['epochs_done']} epochs) "
            f"in {result['seconds']:.0f} s; "
            f"best val mAP {'n/a' if best is None else f'{best:.4f}'}; weights: {result['last']}"
        )
    return 0


# ------------------------------------------------------------------------------------ checks


def check_dataset(
    data_dir: str | Path, class_names: tuple[str, ...], splits: tuple[str, ...]
) -> dict[str, int]:
    """Fail early, with the file and the reason, on a data folder training cannot use.

    Checks each split's annotation JSON (present, parseable, COCO-shaped, non-empty) and that its
    category names are exactly the config's class names (compared with model.classes.normalise_name).
    Returns {split: number of images}.
    """
    from xscreen.training.dataset import load_coco_json, match_categories

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


def _prepare_out(out: Path, resume: bool) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise TrainError(f"output folder {out} is not writable ({exc.strerror or exc})") from None
    if not resume and (out / STATE_FILE).exists():
        raise TrainError(
            f"{out} already holds a training run; pass --resume to continue it or pick a new --out"
        )
    if resume and not (out / STATE_FILE).exists():
        raise TrainError(f"--resume: {out / STATE_FILE} not found, nothing to continue")


# ------------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _dist_from_env() -> DistInfo:
    try:
        return DistInfo(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    except ValueError as exc:
        raise TrainError(f"bad RANK/WORLD_SIZE/LOCAL_RANK environment ({exc})") from None


def _resolve_device(name: str, dist: DistInfo):
    import torch

    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainError("--device cuda: no CUDA device is available")
        return torch.device("cuda", dist.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


# ---------------------------------------------------------------------------------- logging


class _CsvLog:
    """Append-only CSV whose columns are fixed by its first row; on resume rows past a point are dropped."""

    def __init__(self, path: Path, key: str, keep_upto: float | None):
        self.path, self.key, self.fields = path, key, None
        if path.exists():
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
                fields = list(rows[0].keys()) if rows else None
            rows = [] if keep_upto is None else [r for r in rows if float(r[key]) <= keep_upto]
            if fields and rows:
                self.fields = fields
                with path.open("w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=fields)
                    w.writeheader()
                    w.writerows(rows)
            else:
                path.unlink()

    def write(self, row: dict[str, Any]) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row.keys())
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


def plot_curves(out: Path) -> Path | None:
    """curves.png: training losses per iteration and validation mAP / AP50 per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rows(name: str) -> list[dict[str, str]]:
        p = out / name
        if not p.exists():
            return []
        with p.open(newline="") as f:
            return list(csv.DictReader(f))

    train_rows, val_rows = rows(TRAIN_CSV), rows(VAL_CSV)
    if not train_rows:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    it = [int(r["iteration"]) for r in train_rows]
    for k in [k for k in train_rows[0] if k.startswith("loss")]:
        ax1.plot(it, [float(r[k]) for r in train_rows], label=k, lw=1.5 if k == "loss" else 0.8)
    ax1.set(xlabel="iteration", ylabel="loss", title="training loss")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    if val_rows:
        ep = [int(r["epoch"]) for r in val_rows]
        for k in ("mAP", "AP50"):
            ax2.plot(ep, [float(r[k]) for r in val_rows], marker="o", label=k)
        ax2.legend()
    ax2.set(xlabel="epoch", ylabel="val AP", title="validation (pycocotools)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def weights_digest(model) -> str:
    """sha256 over the model's state (names, dtypes, bytes): equal digests = bitwise equal weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _SkipSampler:
    """Index order of a DistributedSampler epoch minus the first ``skip`` indices (mid-epoch resume)."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def _load_backbone_weights(model, path: str) -> None:
    """ImageNet ResNet weights (torchvision key names, .pth or .safetensors) into the backbone."""
    from xscreen.model import load_backbone_weights

    if not Path(path).is_file():
        raise TrainError(f"--backbone-weights: {path} does not exist")
    names = load_backbone_weights(model, path)  # WeightsError (an XscreenError) on a wrong file
    log.info("loaded %d backbone tensors from %s", len(names), path)


# ------------------------------------------------------------------------------------ train


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop finishes its iteration, saves, and exits resumably."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = True


def train(s: TrainSettings) -> dict[str, Any]:
    """Run (or resume) one training run; returns a summary dict. Raises TrainError / XscreenError."""
    import torch
    import torch.distributed as torch_dist

    from xscreen.model.config import load_config

    dist = _dist_from_env()
    cfg = load_config(s.config)
    if s.epochs is None:
        s.epochs = cfg.epochs
    if s.batch_size < 1 or s.workers < 0 or s.epochs < 1 or s.eval_every < 0:
        raise TrainError("batch size and epochs must be >= 1, workers and eval-every >= 0")
    out = Path(s.out)
    device = _resolve_device(s.device, dist)
    splits = ("train", "val") if s.eval_every else ("train",)
    counts = check_dataset(s.data, cfg.class_names, splits)

    if dist.enabled and not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group(backend=backend, init_method="env://")
    try:
        # Only rank 0 touches the output folder; its verdict is shared so no rank runs on alone.
        problem = [None]
        if dist.is_main:
            try:
                _prepare_out(out, s.resume)
            except TrainError as exc:
                problem[0] = str(exc)
        if dist.enabled:
            torch_dist.broadcast_object_list(problem, src=0)
        if problem[0]:
            raise TrainError(problem[0])
        return _train(s, cfg, dist, device, out, counts)
    finally:
        if dist.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _train(
    s: TrainSettings, cfg, dist: DistInfo, device, out: Path, counts: dict[str, int]
) -> dict[str, Any]:
    import torch
    import torch.distributed as torch_dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler
    from tqdm import tqdm

    from xscreen.model import build_detector
    from xscreen.model.weights import save_weights
    from xscreen.training.checkpoint import read_training_state, restore_training_state, save_training_state
    from xscreen.training.dataset import CocoDetection, collate
    from xscreen.training.schedule import WarmupStepSchedule, scaled_lr

    t_start = time.time()
    _seed_everything(s.seed)
    model = build_detector(cfg).to(device)
    if s.backbone_weights:
        _load_backbone_weights(model, s.backbone_weights)
    model.train()

    total_batch = s.batch_size * dist.world_size
    base_lr = scaled_lr(s.lr if s.lr is not None else cfg.lr, total_batch, cfg.lr_batch_size)
    clip = cfg.grad_clip if s.clip_grad is None else (s.clip_grad or None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    dataset = CocoDetection(
        s.data, "train", class_names=cfg.class_names, train=True, min_size=cfg.min_size, max_size=cfg.max_size
    )
    sampler = DistributedSampler(
        dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=s.seed
    )
    iters_per_epoch = math.ceil(len(sampler) / s.batch_size)
    total_iters = iters_per_epoch * s.epochs
    schedule = WarmupStepSchedule(
        base_lr=base_lr,
        total_iters=total_iters,
        warmup_iters=cfg.warmup_iters if s.warmup_iters is None else s.warmup_iters,
        warmup_ratio=cfg.warmup_ratio,
        steps=tuple(cfg.lr_steps),
        ref_epochs=cfg.epochs,
    )
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

    iteration, best, best_epoch = 0, None, None
    if s.resume:
        tensors, meta = read_training_state(out / STATE_FILE)
        saved = meta["progress"]
        for key in ("config", "batch_size", "world_size", "iters_per_epoch"):
            if saved["run"].get(key) != run_info[key]:
                raise TrainError(
                    f"--resume: {key} was {saved['run'].get(key)!r} in the saved run, now {run_info[key]!r}; "
                    "resume with the original settings"
                )
        if saved["run"]["epochs"] != s.epochs:
            log.warning(
                "--resume with --epochs %d (was %d): the lr schedule changes",
                s.epochs,
                saved["run"]["epochs"],
            )
        progress = restore_training_state(
            tensors, meta, model=model, optimizer=optimizer, scaler=scaler, restore_rng_state=not dist.enabled
        )
        if dist.enabled:  # per-rank RNG streams are not saved (only rank 0 writes): reseed deterministically
            _seed_everything(s.seed + 1000 * dist.rank + progress["iteration"])
        iteration, best, best_epoch = progress["iteration"], progress["best_mAP"], progress["best_epoch"]
        log.info("resuming %s at iteration %d (epoch %d)", out, iteration, iteration // iters_per_epoch + 1)
    elif dist.enabled:
        _seed_everything(s.seed + 1000 * dist.rank)

    ddp_model = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if dist.enabled
        else model
    )

    writer = train_csv = val_csv = None
    if dist.is_main:
        from torch.utils.tensorboard import SummaryWriter

        (out / "config.json").write_text(cfg.to_json() + "\n")
        (out / "run.json").write_text(
            json.dumps({**run_info, "settings": asdict(s)}, indent=2, default=str) + "\n"
        )
        keep = iteration if s.resume else None
        train_csv = _CsvLog(out / TRAIN_CSV, "iteration", keep)
        val_csv = _CsvLog(out / VAL_CSV, "iteration", keep)
        writer = SummaryWriter(str(out / "tensorboard"), purge_step=iteration if s.resume else None)

    stop = _StopFlag()
    old_handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    def save_all(epoch_done: int, metrics: dict | None, why: str) -> None:
        # every rank checks (DDP keeps the weights identical), so all stop together
        bad = [
            n for n, p in model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()
        ]
        if bad:
            raise TrainError(
                f"non-finite weights after iteration {iteration} ({bad[0]}, ...); stopped; "
                f"kept the last good checkpoint {out / LAST_FILE}"
            )
        if not dist.is_main:
            return
        meta = {"epoch": epoch_done, "iteration": iteration, "run": run_info, "why": why}
        if metrics:
            meta["val"] = {k: metrics.get(k) for k in VAL_METRICS}
        save_weights(model, out / LAST_FILE, metadata=meta)
        progress = {"iteration": iteration, "best_mAP": best, "best_epoch": best_epoch, "run": run_info}
        save_training_state(
            out / STATE_FILE, model=model, optimizer=optimizer, scaler=scaler, progress=progress
        )

    def _record_val(metrics: dict, epochs_done: int) -> None:
        # pycocotools leaves a metric undefined (None here) when the split has no such objects (e.g. APs)
        nonlocal best, best_epoch
        vals = {k: (float("nan") if metrics.get(k) is None else float(metrics[k])) for k in VAL_METRICS}
        if not math.isnan(vals["mAP"]) and (best is None or vals["mAP"] > best):
            best, best_epoch = vals["mAP"], epochs_done
            meta = {"epoch": epochs_done, "iteration": iteration, "run": run_info}
            meta["val"] = {k: metrics.get(k) for k in VAL_METRICS}
            save_weights(model, out / BEST_FILE, metadata=meta)
        row = {"epoch": epochs_done, "iteration": iteration}
        val_csv.write({**row, **{k: round(v, 6) for k, v in vals.items()}})
        for k, v in vals.items():
            if not math.isnan(v):
                writer.add_scalar(f"val/{k}", v, epochs_done)
        log.info(
            "epoch %d: val mAP %.4f AP50 %.4f (best %s at epoch %s)",
            epochs_done, vals["mAP"], vals["AP50"], f"{best:.4f}" if best is not None else "n/a", best_epoch,
        )  # fmt: skip

    start_epoch = iteration // iters_per_epoch
    last_epoch = s.epochs - 1
    epochs_done = start_epoch
    running: dict[str, float] = {}
    n_running = 0
    try:
        for epoch in range(start_epoch, s.epochs):
            sampler.set_epoch(epoch)
            skip = (iteration - epoch * iters_per_epoch) * s.batch_size
            loader = DataLoader(
                dataset,
                batch_size=s.batch_size,
                sampler=_SkipSampler(sampler, skip),
                num_workers=s.workers,
                collate_fn=collate,
                pin_memory=device.type == "cuda",
                drop_last=False,
                # a per-epoch generator keeps worker seeds reproducible and leaves the global RNG alone
                generator=torch.Generator().manual_seed(s.seed * 100_003 + epoch * 101 + dist.rank),
            )
            bar = tqdm(
                total=iters_per_epoch,
                initial=iteration - epoch * iters_per_epoch,
                desc=f"epoch {epoch + 1}/{s.epochs}",
                disable=not (dist.is_main and s.progress),
                dynamic_ncols=True,
                mininterval=1.0,
            )
            stopped_mid_epoch = False
            for images, targets in loader:
                lr = schedule.lr_at(iteration)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                images = [im.to(device, non_blocking=True) for im in images]
                targets = [
                    {"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets
                ]
                with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
                    losses = ddp_model(images, targets)
                loss = sum(losses.values())
                # one all-reduce carries the loss terms (for logging) and the stop/finite votes.
                names = sorted(losses)
                vec = torch.stack([losses[k].detach().float() for k in names] + [loss.detach().float()])
                flags = torch.tensor(
                    [float(not torch.isfinite(loss).item()), float(stop.requested)], device=vec.device
                )
                packed = torch.cat([vec.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0), flags])
                if dist.enabled:
                    torch_dist.all_reduce(packed)
                    packed[: len(vec)] /= dist.world_size
                if packed[-2] > 0:
                    where = f"epoch {epoch + 1}, iteration {iteration + 1}"
                    terms = ", ".join(f"{k}={losses[k].item():.4g}" for k in names)
                    kept = (
                        f"kept the last good checkpoint {out / LAST_FILE}"
                        if (out / LAST_FILE).exists()
                        else "no checkpoint had been written yet"
                    )
                    raise TrainError(
                        f"non-finite loss at {where} ({terms}); stopped; {kept}. "
                        "Try a lower --lr or --clip-grad"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, clip)
                scaler.step(optimizer)
                scaler.update()
                iteration += 1

                values = dict(zip(names + ["loss"], packed[: len(vec)].tolist(), strict=True))
                for k, v in values.items():
                    running[k] = running.get(k, 0.0) + v
                n_running += 1
                bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr:.2e}", refresh=False)
                bar.update(1)
                end_of_epoch = iteration == (epoch + 1) * iters_per_epoch
                if dist.is_main and (iteration % s.log_every == 0 or end_of_epoch):
                    means = {k: v / n_running for k, v in running.items()}
                    row = {"epoch": epoch + 1, "iteration": iteration, "lr": lr}
                    row.update(
                        {k: round(v, 6) for k, v in sorted(means.items(), key=lambda kv: kv[0] != "loss")}
                    )
                    row["elapsed_s"] = round(time.time() - t_start, 1)
                    train_csv.write(row)
                    for k, v in means.items():
                        writer.add_scalar(f"train/{k}", v, iteration)
                    writer.add_scalar("train/lr", lr, iteration)
                    running, n_running = {}, 0
                hit_max = s.max_iters is not None and iteration >= s.max_iters
                if (hit_max or packed[-1] > 0) and not end_of_epoch:
                    stopped_mid_epoch = True
                    break
            bar.close()
            if stopped_mid_epoch:
                why = "max-iters" if not stop.requested else "signal"
                save_all(epoch, None, why)
                log.info("stopped at iteration %d (%s); continue with --resume", iteration, why)
                break
            epochs_done = epoch + 1
            metrics = None
            if s.eval_every and (epochs_done % s.eval_every == 0 or epoch == last_epoch):
                metrics = _evaluate(model, s, device, dist)
                if dist.is_main:
                    _record_val(metrics, epochs_done)
            save_all(epochs_done, metrics, "epoch")
            if stop.requested or (s.max_iters is not None and iteration >= s.max_iters):
                break
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        if writer is not None:
            writer.close()

    digest = weights_digest(model)
    log.info("rank %d final weights sha256 %s", dist.rank, digest)
    if dist.enabled:
        digests: list[str | None] = [None] * dist.world_size
        torch_dist.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise TrainError(f"DDP ranks ended with different weights: {digests}")
    if dist.is_main:
        plot_curves(out)
    if stop.requested:
        raise TrainError(
            f"interrupted at iteration {iteration}; state saved in {out}, continue with --resume"
        )
    return {
        "rank": dist.rank,
        "iteration": iteration,
        "epochs_done": epochs_done,
        "best_mAP": best,
        "best_epoch": best_epoch,
        "digest": digest,
        "last": str(out / LAST_FILE),
        "seconds": time.time() - t_start,
        "counts": counts,
    }


def _evaluate(model, s: TrainSettings, device, dist: DistInfo) -> dict[str, float]:
    """Validation on rank 0 (pycocotools via training.evaluate); other ranks wait at a barrier."""
    import torch.distributed as torch_dist

    from xscreen.training.evaluate import evaluate_model

    metrics: dict[str, float] = {}
    if dist.is_main:
        model.eval()
        try:
            metrics = evaluate_model(model, s.data, "val", batch_size=s.eval_batch_size, device=str(device))
        finally:
            model.train()
    if dist.enabled:
        torch_dist.barrier()
    return metrics


if __name__ == "__main__":  # python -m training.train ... (same flags as `xscreen train`)
    _p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0])
    add_arguments(_p)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(run(_p.parse_args()))
    except XscreenError as _exc:
        print(f"xscreen train: error: {_exc}", file=sys.stderr)
        sys.exit(2)
