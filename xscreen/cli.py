"""The ``xscreen`` console command: one entry point, one subcommand per capability."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from xscreen import __version__
from xscreen.errors import XscreenError

# Subcommand name -> module. Each module provides ``add_arguments(parser)`` (fills the
# subparser), ``run(args) -> int`` and a module docstring whose first line is the help text.
# Modules are imported lazily so `xscreen --help` stays fast and a broken optional piece
# cannot take down unrelated commands.
SUBCOMMANDS: dict[str, str] = {
    "serve": "service.serve_cli",
    "detect": "service.detect_cli",
    "train": "training.train",
    "export": "model.export_cli",
    "synth": "training.synth.cli",
    "render": "training.render",
    "eval": "training.evaluate",
}


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc else ""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(
        prog="xscreen",
        description="Threat detection on dual-energy X-ray scans (ATSS + Label-aware Mechanism).",
    )
    parser.add_argument("--version", action="version", version=f"xscreen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, object] = {}
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        help_text = _first_line(module.__doc__)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].run(args) or 0)
    except XscreenError as exc:
        print(f"xscreen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xscreen {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
