"""The run folder of ``xscreen train``: its file names, the writability / resume check, logs, curves, digest.

RUN/ receives ``last.safetensors`` and ``best.safetensors`` (model weights, model.weights format),
``train_state.safetensors`` (everything ``--resume`` needs, no pickle), ``config.json``, ``run.json``,
``train_log.csv`` (per logged iteration), ``val_log.csv`` (per epoch), ``tensorboard/`` and
``curves.png``. Only rank 0 writes here.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from xscreen.training.errors import TrainError

STATE_FILE = "train_state.safetensors"
LAST_FILE = "last.safetensors"
BEST_FILE = "best.safetensors"
TRAIN_CSV = "train_log.csv"
VAL_CSV = "val_log.csv"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"


def prepare_run_dir(out: Path, resume: bool) -> None:
    """Create ``out`` and prove it writable; refuse to start over a run, or to resume none."""
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


class CsvLog:
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


class RunLog:
    """Rank 0's records of a run: config.json, run.json, the two CSV logs and the TensorBoard events.

    ``resume_at`` (the iteration a resumed run continues from) drops the CSV rows and TensorBoard
    events written after it, so the logs of an interrupted and resumed run equal an uninterrupted one.
    """

    def __init__(self, out: Path, *, config_json: str, run_json: dict[str, Any], resume_at: int | None):
        from torch.utils.tensorboard import SummaryWriter

        (out / CONFIG_FILE).write_text(config_json + "\n")
        (out / RUN_FILE).write_text(json.dumps(run_json, indent=2, default=str) + "\n")
        self.train_csv = CsvLog(out / TRAIN_CSV, "iteration", resume_at)
        self.val_csv = CsvLog(out / VAL_CSV, "iteration", resume_at)
        self.writer = SummaryWriter(str(out / TENSORBOARD_DIR), purge_step=resume_at)

    def log_train(self, *, epoch: int, iteration: int, lr: float, means: dict[str, float], elapsed_s: float):
        """One train_log.csv row (total loss first, then the terms) and the same scalars in TensorBoard."""
        row = {"epoch": epoch, "iteration": iteration, "lr": lr}
        row.update({k: round(v, 6) for k, v in sorted(means.items(), key=lambda kv: kv[0] != "loss")})
        row["elapsed_s"] = round(elapsed_s, 1)
        self.train_csv.write(row)
        for k, v in means.items():
            self.writer.add_scalar(f"train/{k}", v, iteration)
        self.writer.add_scalar("train/lr", lr, iteration)

    def log_val(self, *, epoch: int, iteration: int, values: dict[str, float]) -> None:
        """One val_log.csv row; TensorBoard gets the defined (non-NaN) metrics."""
        self.val_csv.write(
            {"epoch": epoch, "iteration": iteration, **{k: round(v, 6) for k, v in values.items()}}
        )
        for k, v in values.items():
            if not math.isnan(v):
                self.writer.add_scalar(f"val/{k}", v, epoch)

    def close(self) -> None:
        self.writer.close()


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
    path = out / CURVES_FILE
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
