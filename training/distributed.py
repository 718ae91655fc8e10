"""Data-parallel plumbing for training: torchrun's rank variables, the process group, one device per rank.

``xscreen train`` under ``torchrun`` needs no extra flags: RANK / WORLD_SIZE / LOCAL_RANK come from the
environment, the process group uses gloo on CPU and nccl on CUDA, and each rank takes the GPU of its
local rank. Without those variables the run is a single process and nothing here talks to other ranks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from xscreen.training.errors import TrainError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: global rank, number of processes, rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> DistInfo:
    """The rank variables torchrun sets (a single process when they are absent)."""
    try:
        return DistInfo(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    except ValueError as exc:
        raise TrainError(f"bad RANK/WORLD_SIZE/LOCAL_RANK environment ({exc})") from None


def resolve_device(name: str, dist: DistInfo) -> torch.device:
    """``--device`` (auto / cpu / cuda) to this rank's device: CUDA device ``local_rank`` modulo the count."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainError("--device cuda: no CUDA device is available")
        return torch.device("cuda", dist.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@contextmanager
def process_group(dist: DistInfo, device: torch.device) -> Iterator[None]:
    """The job's process group for the duration of the block (nothing to do for a single process)."""
    if dist.enabled and not torch_dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend=backend, init_method="env://")
    try:
        yield
    finally:
        if dist.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def broadcast_from_main(dist: DistInfo, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if not dist.enabled:
        return value
    box = [value]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_from_all(dist: DistInfo, value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank (a picklable object)."""
    if not dist.enabled:
        return [value]
    values: list[Any] = [None] * dist.world_size
    torch_dist.all_gather_object(values, value)
    return values


def all_reduce_sum(dist: DistInfo, tensor: torch.Tensor) -> None:
    """In place: the element-wise sum over the ranks."""
    if dist.enabled:
        torch_dist.all_reduce(tensor)


def barrier(dist: DistInfo) -> None:
    """Wait until every rank gets here."""
    if dist.enabled:
        torch_dist.barrier()


class SkipSampler:
    """Index order of a DistributedSampler epoch minus the first ``skip`` indices (mid-epoch resume)."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)
