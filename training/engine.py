"""The training loop: one SGD step, one epoch, per-epoch validation and checkpoints, resumable stops.

``Trainer.fit`` runs the epochs left in a run. A step sets the scheduled lr, runs forward (fp16
autocast on CUDA), checks the loss on every rank at once, and runs backward, clipping and the
optimiser step. An epoch ends with validation (when due) and a checkpoint; ``--max-iters`` or
SIGTERM / SIGINT stop the loop after the current step with a checkpoint that ``--resume`` continues.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from xscreen.model.weights import save_weights
from xscreen.training.checkpoint import save_training_state
from xscreen.training.dataset import CocoDetection, collate
from xscreen.training.distributed import DistInfo, SkipSampler, all_reduce_sum, barrier
from xscreen.training.errors import TrainError
from xscreen.training.evaluate import detect_dataset, evaluate_detections
from xscreen.training.rundir import BEST_FILE, LAST_FILE, STATE_FILE, RunLog
from xscreen.training.threshold import describe, pick_threshold

if TYPE_CHECKING:
    from xscreen.training.schedule import WarmupStepSchedule
    from xscreen.training.settings import TrainSettings

log = logging.getLogger("xscreen.train")

VAL_METRICS = ("mAP", "AP50", "AP75", "APs", "APm", "APl")
OPERATING_POINT_PNG = "operating_point.png"  # PR curve of the last validation with the chosen threshold


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop finishes its iteration, saves, and exits resumably."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = True


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """A StopFlag that SIGTERM and SIGINT set while the block runs (the old handlers come back after)."""
    stop = StopFlag()
    old_handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def leave_stop_signals_to_the_trainer(worker_id: int) -> None:  # noqa: ARG001
    """DataLoader ``worker_init_fn``: the worker ignores SIGTERM and SIGINT.

    Ctrl-C, ``kill -- -PGID`` and ``pkill -f "xscreen train"`` signal the workers too. A worker killed by that
    signal makes the main process raise before its StopFlag is seen, so the run died unsaved; ignoring it
    here lets the main process finish its step, save and exit, and the DataLoader then ends its workers.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class Progress:
    """How far the run is: what the training state saves for ``--resume``, plus the epochs finished."""

    iteration: int = 0
    best_mAP: float | None = None
    best_epoch: int | None = None
    epochs_done: int = 0


@dataclass
class StepResult:
    """One step's outcome, the same on every rank."""

    lr: float
    losses: dict[str, float]  # loss terms and "loss" (their sum), averaged over the ranks
    stop_requested: bool  # some rank got SIGTERM / SIGINT


@dataclass
class RunningMeans:
    """Sums of the loss values since the last log row."""

    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def pop(self) -> dict[str, float]:
        means = {k: v / self.count for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return means


@dataclass
class Trainer:
    """One run's model, optimiser, data and records, built by ``training.train.train``."""

    settings: TrainSettings
    model: torch.nn.Module
    ddp_model: torch.nn.Module  # the model itself in a single process
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: WarmupStepSchedule
    clip: float | None  # max gradient L2 norm; None: no clipping
    amp: bool  # fp16 autocast (on CUDA)
    dataset: torch.utils.data.Dataset
    sampler: torch.utils.data.DistributedSampler
    iters_per_epoch: int
    device: torch.device
    dist: DistInfo
    out: Path
    run_info: dict[str, Any]  # the run's identity, saved with every checkpoint
    run_log: RunLog | None  # rank 0 only
    progress: Progress
    stop: StopFlag
    t_start: float
    running: RunningMeans = field(default_factory=RunningMeans)

    # ------------------------------------------------------------------------------ the run

    def fit(self) -> None:
        """Train the epochs left; validate and checkpoint after each; stop early on max-iters / signal."""
        s = self.settings
        start_epoch = self.progress.iteration // self.iters_per_epoch
        self.progress.epochs_done = start_epoch
        for epoch in range(start_epoch, s.epochs):
            if self.train_one_epoch(epoch):  # stopped mid-epoch
                why = "max-iters" if not self.stop.requested else "signal"
                self.save_checkpoint(epoch, None, why)
                log.info("stopped at iteration %d (%s); continue with --resume", self.progress.iteration, why)
                break
            self.progress.epochs_done = epoch + 1
            metrics = self.validate_if_due(epoch)
            self.save_checkpoint(epoch + 1, metrics, "epoch")
            if self.stop.requested or self._hit_max_iters():
                break

    def train_one_epoch(self, epoch: int) -> bool:
        """The rest of epoch ``epoch`` (0-based); True when it stopped before the epoch's end."""
        s = self.settings
        self.sampler.set_epoch(epoch)
        done_before = self.progress.iteration - epoch * self.iters_per_epoch  # > 0 on a mid-epoch resume
        loader = DataLoader(
            self.dataset,
            batch_size=s.batch_size,
            sampler=SkipSampler(self.sampler, done_before * s.batch_size),
            num_workers=s.workers,
            collate_fn=collate,
            worker_init_fn=leave_stop_signals_to_the_trainer,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
            # a per-epoch generator keeps worker seeds reproducible and leaves the global RNG alone
            generator=torch.Generator().manual_seed(s.seed * 100_003 + epoch * 101 + self.dist.rank),
        )
        bar = tqdm(
            total=self.iters_per_epoch,
            initial=done_before,
            desc=f"epoch {epoch + 1}/{s.epochs}",
            disable=not (self.dist.is_main and s.progress),
            dynamic_ncols=True,
            mininterval=1.0,
        )
        epoch_end = (epoch + 1) * self.iters_per_epoch
        stopped_mid_epoch = False
        for images, targets in loader:
            step = self.train_step(images, targets, epoch)
            self.running.add(step.losses)
            bar.set_postfix(loss=f"{step.losses['loss']:.3f}", lr=f"{step.lr:.2e}", refresh=False)
            bar.update(1)
            iteration = self.progress.iteration
            end_of_epoch = iteration == epoch_end
            if self.run_log is not None and (iteration % s.log_every == 0 or end_of_epoch):
                self.run_log.log_train(
                    epoch=epoch + 1,
                    iteration=iteration,
                    lr=step.lr,
                    means=self.running.pop(),
                    elapsed_s=time.time() - self.t_start,
                )
            if (self._hit_max_iters() or step.stop_requested) and not end_of_epoch:
                stopped_mid_epoch = True
                break
        bar.close()
        return stopped_mid_epoch

    def _hit_max_iters(self) -> bool:
        return self.settings.max_iters is not None and self.progress.iteration >= self.settings.max_iters

    # ------------------------------------------------------------------------------- one step

    def train_step(self, images: list[torch.Tensor], targets: list[dict], epoch: int) -> StepResult:
        """Forward, loss check, backward, clip, optimiser step at the scheduled lr; advances the iteration."""
        lr = self.schedule.lr_at(self.progress.iteration)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        images = [im.to(self.device, non_blocking=True) for im in images]
        targets = [
            {"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device)} for t in targets
        ]
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.amp):
            losses = self.ddp_model(images, targets)
        loss = sum(losses.values())
        means, any_non_finite, any_stop = self._reduce_step(losses, loss)
        if any_non_finite:
            raise self._non_finite_loss(losses, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.progress.iteration += 1
        return StepResult(lr=lr, losses=means, stop_requested=any_stop)

    def _reduce_step(
        self, losses: dict[str, torch.Tensor], loss: torch.Tensor
    ) -> tuple[dict[str, float], bool, bool]:
        """(rank-mean loss values, some rank's loss is non-finite, some rank was asked to stop).

        One all-reduce carries the loss terms (for logging) and the stop/finite votes, so every rank
        takes the same decision in the same step.
        """
        names = sorted(losses)
        vec = torch.stack([losses[k].detach().float() for k in names] + [loss.detach().float()])
        flags = torch.tensor(
            [float(not torch.isfinite(loss).item()), float(self.stop.requested)], device=vec.device
        )
        packed = torch.cat([vec.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0), flags])
        if self.dist.enabled:
            all_reduce_sum(self.dist, packed)
            packed[: len(vec)] /= self.dist.world_size
        means = dict(zip(names + ["loss"], packed[: len(vec)].tolist(), strict=True))
        return means, bool(packed[-2] > 0), bool(packed[-1] > 0)

    def _non_finite_loss(self, losses: dict[str, torch.Tensor], epoch: int) -> TrainError:
        where = f"epoch {epoch + 1}, iteration {self.progress.iteration + 1}"
        terms = ", ".join(f"{k}={losses[k].item():.4g}" for k in sorted(losses))
        kept = (
            f"kept the last good checkpoint {self.out / LAST_FILE}"
            if (self.out / LAST_FILE).exists()
            else "no checkpoint had been written yet"
        )
        return TrainError(
            f"non-finite loss at {where} ({terms}); stopped; {kept}. Try a lower --lr or --clip-grad"
        )

    # ------------------------------------------------------------------ validation, checkpoints

    def validate_if_due(self, epoch: int) -> dict[str, Any] | None:
        """Validation after epoch ``epoch`` (0-based) every ``--eval-every`` epochs and after the last."""
        s = self.settings
        epochs_done = epoch + 1
        if not (s.eval_every and (epochs_done % s.eval_every == 0 or epoch == s.epochs - 1)):
            return None
        metrics = evaluate(self.model, s, self.device, self.dist, self.progress.iteration)
        if self.dist.is_main:
            self._record_val(metrics, epochs_done)
        return metrics

    def _record_val(self, metrics: dict[str, Any], epochs_done: int) -> None:
        """Rank 0: best.safetensors on a new best mAP, the val log row, one log line."""
        p = self.progress
        # pycocotools leaves a metric undefined (None here) when the split has no such objects (e.g. APs)
        vals = {k: (float("nan") if metrics.get(k) is None else float(metrics[k])) for k in VAL_METRICS}
        if not math.isnan(vals["mAP"]) and (p.best_mAP is None or vals["mAP"] > p.best_mAP):
            p.best_mAP, p.best_epoch = vals["mAP"], epochs_done
            meta = {"epoch": epochs_done, "iteration": p.iteration, "run": self.run_info}
            meta["val"] = {k: metrics.get(k) for k in VAL_METRICS}
            op = metrics.get("operating_point")
            save_weights(self.model, self.out / BEST_FILE, metadata=meta, operating_point=op)
        self.run_log.log_val(epoch=epochs_done, iteration=p.iteration, values=vals)
        log.info(
            "epoch %d: val mAP %.4f AP50 %.4f (best %s at epoch %s)",
            epochs_done, vals["mAP"], vals["AP50"],
            f"{p.best_mAP:.4f}" if p.best_mAP is not None else "n/a", p.best_epoch,
        )  # fmt: skip

    def save_checkpoint(self, epoch_done: int, metrics: dict[str, Any] | None, why: str) -> None:
        """last.safetensors and the resumable training state (rank 0), after checking the weights."""
        # every rank checks (DDP keeps the weights identical), so all stop together
        bad = [
            n
            for n, p in self.model.state_dict().items()
            if p.is_floating_point() and not torch.isfinite(p).all()
        ]
        if bad:
            raise TrainError(
                f"non-finite weights after iteration {self.progress.iteration} ({bad[0]}, ...); stopped; "
                f"kept the last good checkpoint {self.out / LAST_FILE}"
            )
        if not self.dist.is_main:
            return
        p = self.progress
        meta = {"epoch": epoch_done, "iteration": p.iteration, "run": self.run_info, "why": why}
        if metrics:
            meta["val"] = {k: metrics.get(k) for k in VAL_METRICS}
        op = metrics.get("operating_point") if metrics else None
        save_weights(self.model, self.out / LAST_FILE, metadata=meta, operating_point=op)
        state = {
            "iteration": p.iteration,
            "best_mAP": p.best_mAP,
            "best_epoch": p.best_epoch,
            "run": self.run_info,
        }
        save_training_state(
            self.out / STATE_FILE,
            model=self.model,
            optimizer=self.optimizer,
            scaler=self.scaler,
            progress=state,
        )


def evaluate(
    model: torch.nn.Module, s: TrainSettings, device: torch.device, dist: DistInfo, iteration: int = 0
) -> dict[str, Any]:
    """Validation on rank 0 (pycocotools via training.evaluate); other ranks wait at a barrier.

    The metrics carry the ``operating_point`` that ``s.threshold_rule`` picks on the same detections
    (training.threshold); the checkpoints store it, and RUN/operating_point.png shows its PR curve.
    """
    metrics: dict[str, Any] = {}
    if dist.is_main:
        model.eval()
        try:
            ds = CocoDetection(s.data, "val", class_names=model.cfg.class_names)
            results = detect_dataset(model, ds, batch_size=s.eval_batch_size, device=str(device))
        finally:
            model.train()
        metrics = evaluate_detections(ds.coco, results)
        op = pick_threshold(
            ds.coco,
            results,
            s.threshold_rule,
            s.min_precision,
            plot=Path(s.out) / OPERATING_POINT_PNG,
            title=f"{model.cfg.name}, val split, iteration {iteration}",
        )
        metrics["operating_point"] = {**op, "split": "val"}
        log.info("operating point: %s", describe(metrics["operating_point"]))
    barrier(dist)
    return metrics
