"""Write the settings table of docs/service.md from service/settings.py and the `xscreen serve` flags.

``python tools/settings_table.py`` rewrites the table between its marker comments; with ``--check`` it
only exits 1 when docs/service.md differs (tests/test_docs.py checks the same).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xscreen.cli import build_parser
from xscreen.service.settings import SETTINGS_TABLE_BEGIN, SETTINGS_TABLE_END, Settings, settings_table

SERVICE_DOC = Path(__file__).resolve().parents[1] / "docs" / "service.md"
UPDATE_COMMAND = "python tools/settings_table.py"


def serve_flags() -> dict[str, tuple[str, str]]:
    """Setting name -> (flag, help) for every `xscreen serve` option that sets a setting."""
    parser, _ = build_parser("serve")
    serve = parser.subcommand_parsers["serve"]
    return {
        action.dest: (action.option_strings[-1], action.help or "")
        for action in serve._actions
        if action.dest in Settings.model_fields and action.option_strings
    }


def with_table(text: str) -> str:
    """``text`` (docs/service.md) with the generated table between the markers."""
    head, begin, rest = text.partition(SETTINGS_TABLE_BEGIN)
    _, end, tail = rest.partition(SETTINGS_TABLE_END)
    if not begin or not end:
        raise SystemExit(
            f"{SERVICE_DOC}: the markers {SETTINGS_TABLE_BEGIN!r} ... {SETTINGS_TABLE_END!r} are missing"
        )
    return f"{head}{begin}\n{settings_table(serve_flags())}{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when the file differs")
    args = parser.parse_args(argv)
    text = SERVICE_DOC.read_text()
    new = with_table(text)
    if args.check:
        if new != text:
            print(f"{SERVICE_DOC} is out of date: run {UPDATE_COMMAND}", file=sys.stderr)
            return 1
        return 0
    SERVICE_DOC.write_text(new)
    print(f"wrote the settings table of {SERVICE_DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
