"""`xscreen release`: the copy of a run's weights that gets shipped (fp16, a version, its threshold kept).

    xscreen release runs/x/last.safetensors --out dist/xscreen-lacls.safetensors --version 1.2.0
    xscreen release W.safetensors --out W2.safetensors --version 1.2.0 --name site-lacls --fp32

A training run writes fp32 weights named after the config and versioned with xscreen's own version.
The release copy stores float tensors as fp16 (half the size, the form of the bundled weights; the
model is loaded back in fp32), records ``--version`` (and ``--name``) in the header and keeps the
config, the metadata and the operating point. The tensors' sha256 is computed anew (fp16 tensors are
other tensors) and printed: it is what the service reports and what ``XSCREEN_WEIGHTS_SHA256`` pins.
"""

from __future__ import annotations

import argparse
import re

from xscreen.errors import XscreenError

_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")


def _label(what: str):
    def parse(text: str) -> str:
        if not _VERSION.fullmatch(text):
            raise argparse.ArgumentTypeError(
                f"{what} must be 1-64 letters, digits or . + _ - (the first a letter or digit), got {text!r}"
            )
        return text

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("weights", help="safetensors weights (xscreen format), e.g. a run's last.safetensors")
    a("--out", required=True, help="release file to write (may equal WEIGHTS; written atomically)")
    a("--version", required=True, type=_label("--version"), help="the release's version, e.g. 1.2.0")
    a("--name", type=_label("--name"), help="the model's name in the header (default: kept)")
    a("--fp32", action="store_true", help="keep fp32 tensors (default: fp16, half the size)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from xscreen.model.weights import load_weights, save_weights
    from xscreen.training.threshold import describe

    if Path(args.out).is_dir():
        raise XscreenError(f"--out {args.out} is a directory; give the file to write")
    model, info = load_weights(args.weights)
    metadata = {**info.metadata, "name": args.name or info.name, "version": args.version}
    op = info.operating_point
    try:
        sha = save_weights(model, args.out, half=not args.fp32, metadata=metadata, operating_point=op)
    except OSError as exc:  # an unwritable place: one line; the temporary file is never left as --out
        raise XscreenError(f"cannot write --out {args.out}: {exc.strerror or exc}") from None
    size = Path(args.out).stat().st_size
    precision = "fp32" if args.fp32 else "fp16"
    print(f"wrote {args.out} ({size} bytes, {precision}): {metadata['name']} {args.version}")
    print(f"sha256 of the tensors: {sha}")
    print(describe(op))
    return 0
