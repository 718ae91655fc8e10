"""The settings of one training run (what ``xscreen train``'s flags fill in)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    init_weights: str | None = None  # a whole detector's weights to fine-tune from (a new run)
    lr: float | None = None  # for a total batch of cfg.lr_batch_size; scaled linearly
    clip_grad: float | None = None  # None: cfg.grad_clip; 0: off
    seed: int = 0
    max_iters: int | None = None
    eval_every: int = 1
    warmup_iters: int | None = None
    log_every: int = 10
    eval_batch_size: int = 2
    progress: bool = True
    threshold_rule: str = "best-f1"  # how validation picks the operating threshold (training.threshold)
    min_precision: float = 0.9  # threshold_rule "precision": the precision to reach
    extra: dict[str, Any] = field(default_factory=dict)
