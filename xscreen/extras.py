"""Optional extras (pyproject.toml): which commands need which, and the one-line hint when one is missing."""

from __future__ import annotations

import importlib.util

# Extra -> the modules it provides (import names). `onnx` and `gpu` both provide onnx + onnxruntime
# (CPU or CUDA build); the hint names both. tests/deploy/test_packaging.py checks these against
# pyproject.toml.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "onnx": ("onnx", "onnxruntime"),
    "train": ("pycocotools", "matplotlib", "tensorboard"),
}

# Commands that cannot run at all without an extra. Others (serve, detect, render, synth) run on a plain
# install; their optional paths (--backend onnxruntime, eval --onnx) report the missing module when used.
COMMAND_EXTRAS: dict[str, str] = {
    "train": "train",
    "eval": "train",
    "export": "onnx",
}

_HINTS = {
    "onnx": "pip install 'xscreen[onnx]' (CPU) or 'xscreen[gpu]' (CUDA)",
    "train": "pip install 'xscreen[train]'",
}


def install_hint(extra: str) -> str:
    """The pip command that installs ``extra``."""
    return _HINTS[extra]


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (empty when the extra is installed)."""
    return [m for m in EXTRA_MODULES[extra] if importlib.util.find_spec(m) is None]


def extra_providing(module: str | None) -> str | None:
    """The extra whose package provides the top-level module of ``module`` (e.g. 'pycocotools.coco')."""
    top = (module or "").partition(".")[0]
    return next((extra for extra, mods in EXTRA_MODULES.items() if top in mods), None)


def missing_extra_message(extra: str, missing: list[str] | str) -> str:
    """One line: what is missing and how to install it."""
    names = ", ".join([missing] if isinstance(missing, str) else missing)
    return f"needs the '{extra}' extra ({names} not installed): {install_hint(extra)}"
