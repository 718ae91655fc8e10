"""The served model and switching it without downtime (``POST /admin/model``, SIGHUP).

A switch loads the new file in a worker thread while the old model keeps serving, runs one warm-up
inference on it, then hands it to the micro-batcher between two batches (one attribute assignment on
the event loop): every batch runs wholly on one model and its responses name that model. A failed load
(no such file, sha256 mismatch, corrupt file, other architecture or class list, failed warm-up) keeps
the old model; the reason is answered (admin endpoint) or logged (SIGHUP) and counted in
``xscreen_model_reloads_total{result}``. One switch at a time: another one meanwhile is refused (409).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xscreen.errors import XscreenError
from xscreen.inference.backend import InferenceBackend, make_backend
from xscreen.inference.settings import ModelFileUnreadable, model_file, read_selection
from xscreen.service.metrics import ServiceMetrics
from xscreen.service.settings import Settings

log = logging.getLogger("xscreen.service.model_switch")

RELOAD_RESULTS = (
    "switched",
    "unchanged",
    "not_found",
    "sha256_mismatch",
    "invalid_model",
    "busy",
    "selection_error",
)


class ModelSwitchError(XscreenError):
    """A switch that did not happen: HTTP status, error code, metric result label and the reason."""

    def __init__(self, status: int, code: str, result: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.result, self.detail = status, code, result, detail


def warmup_scan(size: int = 256) -> np.ndarray:
    """A converted synthetic scan (bright air with a dense block) for the warm-up inference."""
    from xscreen.scans import convert_scan

    high = np.full((size, size), 60000, np.uint16)
    low = np.full((size, size), 58000, np.uint16)
    high[size // 4 : size // 2, size // 4 : 3 * size // 4] = 20000
    low[size // 4 : size // 2, size // 4 : 3 * size // 4] = 9000
    return convert_scan(high, low)


def model_config(backend: InferenceBackend) -> dict:
    """The detector config dict of a loaded backend (torch: the module's cfg; ONNX: the export's)."""
    cfg = getattr(backend, "cfg", None) or getattr(getattr(backend, "model", None), "cfg", None)
    return cfg.model_dump(mode="json") if cfg is not None and hasattr(cfg, "model_dump") else {}


@dataclass(frozen=True)
class ActiveModel:
    backend: InferenceBackend
    path: Path
    model_name: str | None  # the file stem in the models directory, when one is used
    loaded_at: float  # time.time()


class ModelManager:
    """Owns the active model; ``switch`` replaces it in the batcher (see the module docstring)."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics):
        self.settings = settings
        self.metrics = metrics
        self.active: ActiveModel | None = None
        self._switching = asyncio.Lock()
        for result in RELOAD_RESULTS:
            metrics.model_reloads.labels(result=result)

    def _path(self) -> Path:
        s = self.settings
        return Path(s.onnx_path) if s.backend == "onnxruntime" and s.onnx_path else Path(s.weights)

    def activate(self, backend: InferenceBackend, path: Path | None = None, name: str | None = None) -> None:
        """Record ``backend`` as the one serving now (metrics included)."""
        self.active = ActiveModel(
            backend, path or self._path(), name if path else self.settings.model_name, time.time()
        )
        info = backend.info
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(
            info.name, info.version, info.sha256, self.settings.backend, backend.device, info.precision
        ).set(1)
        self.metrics.model_loaded.set(self.active.loaded_at)

    @property
    def busy(self) -> bool:
        return self._switching.locked()

    def _count(self, result: str) -> None:
        self.metrics.model_reloads.labels(result=result).inc()

    async def switch(self, batcher, name: str, sha256: str, source: str) -> tuple[str, str, bool]:
        """Serve model ``name`` (pinned by ``sha256``) -> (result, previous sha256, persisted)."""
        if self._switching.locked():
            self._count("busy")
            raise ModelSwitchError(
                409, "model_switch_in_progress", "busy", "another model switch is still loading; try later"
            )
        async with self._switching:
            try:
                outcome = await self._switch(batcher, name, sha256.lower(), source)
            except ModelSwitchError as exc:
                self._count(exc.result)
                log.error(
                    "model switch failed, the old model keeps serving",
                    extra={"source": source, "model_name": name, "reason": exc.detail},
                )
                raise
            self._count(outcome[0])
            return outcome

    async def _switch(self, batcher, name: str, sha256: str, source: str) -> tuple[str, str, bool]:
        assert self.active is not None
        s = self.settings
        previous = self.active.backend.info.sha256
        if s.models_dir is None:
            raise ModelSwitchError(
                404, "model_not_found", "not_found", "no models directory configured (XSCREEN_MODELS_DIR)"
            )
        try:
            path = model_file(s.models_dir, name, s.backend)
        except ModelFileUnreadable as exc:
            raise ModelSwitchError(422, "invalid_model", "invalid_model", str(exc)) from None
        except ValueError as exc:
            raise ModelSwitchError(404, "model_not_found", "not_found", str(exc)) from None
        if path == self.active.path and sha256 == previous:
            return "unchanged", previous, self._persist(name, sha256)
        field = "onnx_path" if s.backend == "onnxruntime" else "weights"
        wanted = s.model_copy(update={field: path, "weights_sha256": sha256})
        t0 = time.perf_counter()
        try:
            backend = await asyncio.to_thread(make_backend, wanted)
        except XscreenError as exc:
            msg = str(exc)
            if "sha256 mismatch" in msg and "expected" in msg:  # the pin, not a corrupt file
                raise ModelSwitchError(422, "sha256_mismatch", "sha256_mismatch", msg) from None
            raise ModelSwitchError(422, "invalid_model", "invalid_model", msg) from None
        except Exception as exc:  # anything else from a broken file
            raise ModelSwitchError(
                422, "invalid_model", "invalid_model", f"{path}: {type(exc).__name__}: {exc}"
            ) from None
        old_names = self.active.backend.info.class_names
        if backend.info.class_names != old_names:
            raise ModelSwitchError(
                422,
                "invalid_model",
                "invalid_model",
                f"{path}: classes {list(backend.info.class_names)} differ from the served "
                f"{list(old_names)}; a model with other classes needs a restart",
            )
        try:
            await asyncio.to_thread(backend.predict, [warmup_scan()])
        except Exception as exc:
            raise ModelSwitchError(
                422, "invalid_model", "invalid_model", f"{path}: warm-up inference failed: {exc}"
            ) from None
        batcher.backend = backend  # between two batches: the next batch runs on the new model
        self.activate(backend, path, name)
        persisted = self._persist(name, sha256)
        log.info(
            "model switched",
            extra={
                "source": source,
                "model_name": name,
                "sha256": backend.info.sha256,
                "previous_sha256": previous,
                "load_s": round(time.perf_counter() - t0, 3),
                "persisted": persisted,
            },
        )
        return "switched", previous, persisted

    def _persist(self, name: str, sha256: str) -> bool:
        """Write the selection file (atomically) so a restart serves the same model; False if none/failed."""
        target = self.settings.model_selection_file
        if target is None:
            return False
        try:
            if read_selection(target) == (name, sha256):
                return True
        except ValueError:
            pass
        tmp = target.with_name(target.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"name": name, "sha256": sha256}) + "\n", encoding="utf-8")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            log.warning(
                "model selection not saved: a restart serves the configured model",
                extra={"selection_file": str(target), "reason": exc.strerror or str(exc)},
            )
            return False
        return True

    async def reload_selection(self, batcher) -> None:
        """SIGHUP: switch to what the selection file names (logged; never raises)."""
        target = self.settings.model_selection_file
        try:
            if target is None:
                raise ValueError("SIGHUP ignored: no XSCREEN_MODEL_SELECTION_FILE to re-read")
            chosen = read_selection(target)
            if chosen is None:
                raise ValueError(f"SIGHUP ignored: model selection file {target} does not exist")
        except ValueError as exc:
            self._count("selection_error")
            log.error(str(exc))
            return
        with contextlib.suppress(ModelSwitchError):  # logged and counted by switch()
            await self.switch(batcher, chosen[0], chosen[1], "SIGHUP")
