"""The ``xscreen`` console command: one entry point, one subcommand per capability."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from xscreen import __version__
from xscreen.errors import XscreenError
from xscreen.extras import COMMAND_EXTRAS, extra_providing, missing_extra_message, missing_modules

# Subcommand name -> (module, one-line help). Each module provides ``add_arguments(parser)``
# (fills the subparser) and ``run(args) -> int``. Only the chosen command's module is imported,
# so `xscreen --help` stays fast (torch is not loaded) and a broken optional piece cannot take
# down unrelated commands.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("xscreen.commands.serve", "run the inference service (FastAPI on uvicorn)"),
    "detect": ("xscreen.commands.detect", "detect threats in one dual-energy scan offline"),
    "train": ("xscreen.commands.train", "train a detector on a COCO-layout dataset (CLCXray or synthetic)"),
    "export": ("xscreen.commands.export", "export weights to ONNX, including the test-time LA loop"),
    "synth": ("xscreen.commands.synth", "generate a synthetic dual-energy scan dataset"),
    "send": ("xscreen.commands.send", "send a DICOS DX scan to a DICOS listener and wait for its TDR"),
    "dicos-check": ("xscreen.commands.dicos_check", "check DICOS TDR and DX files against the IOD tables"),
    "render": ("xscreen.commands.render", "draw the pseudo-colour picture of a scan with boxes"),
    "eval": ("xscreen.commands.eval", "evaluate weights or detections with COCO metrics"),
    "threshold": ("xscreen.commands.threshold", "show, set or re-pick the operating threshold of weights"),
    "release": ("xscreen.commands.release", "write the fp16, versioned copy of weights that gets shipped"),
    "store-purge": (
        "xscreen.commands.store_purge",
        "delete bags from the scan store (all, older ones, or by id)",
    ),
    "export-reviews": (
        "xscreen.commands.export_reviews",
        "write the scan store's reviewed bags as a training/evaluation dataset",
    ),
    "import-mmdet": ("xscreen.commands.import_mmdet", "import the authors' released mmdetection checkpoint"),
    "la-experiment": (
        "xscreen.commands.la_experiment",
        "ATSS vs its LA variants, several seeds",
    ),
    "la-probe": ("xscreen.commands.la_probe", "test-time label sources of trained LA models"),
}


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, object | None]:
    """The parser; the subparser of ``command`` (if given and known) gets its full arguments."""
    parser = argparse.ArgumentParser(
        prog="xscreen",
        description="Threat detection on dual-energy X-ray scans (ATSS + Label-aware Mechanism).",
        allow_abbrev=False,  # "--api-keys KEY" must not be taken as --api-keys-file
    )
    parser.add_argument("--version", action="version", version=f"xscreen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = None
    parser.subcommand_parsers = {}  # type: ignore[attr-defined]  # for errors named after the subcommand
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        parser.subcommand_parsers[name] = p  # type: ignore[attr-defined]
        if name == command:
            chosen = importlib.import_module(module_name)
            chosen.add_arguments(p)
    return parser, chosen


def _unrecognized(extra: list[str]) -> str:
    """The unknown options, never their values (a value may be a key given to a flag that does not exist)."""
    flags = [a.split("=", 1)[0] for a in extra if a.startswith("-")]
    values = len(extra) - len(flags)
    shown = " ".join(flags) or "(none)"
    return f"unrecognized arguments: {shown}" + (f" (and {values} value(s), not shown)" if values else "")


def _command_in(argv: list[str]) -> str | None:
    for arg in argv:
        if arg in SUBCOMMANDS:
            return arg
        if not arg.startswith("-"):
            return None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(argv)
    # A command whose extra is not installed stops here, before its module is imported.
    extra = COMMAND_EXTRAS.get(command or "")
    if extra and (missing := missing_modules(extra)):
        print(f"xscreen {command}: error: {missing_extra_message(extra, missing)}", file=sys.stderr)
        return 2
    parser, module = build_parser(command)
    args, extra = parser.parse_known_args(argv)
    if extra:  # named after the subcommand ("xscreen serve: error: ..."), without the values
        parser.subcommand_parsers.get(args.command, parser).error(_unrecognized(extra))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(module.run(args) or 0)
    except XscreenError as exc:
        print(f"xscreen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional path of a command, e.g. eval --onnx without onnxruntime
        if (extra := extra_providing(exc.name)) is None:
            raise
        print(f"xscreen {args.command}: error: {missing_extra_message(extra, exc.name)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xscreen {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
