"""Check DICOS TDR and DX files against the IODs' attribute table (xscreen.scans.dicos.conformance).

Prints each attribute missing or malformed (tag, keyword, type, why) and exits 1 when any file has one;
one OK line per conformant file. A path that is not a readable DICOM file is an error (exit 2).
Example: ``xscreen dicos-check report.dcm high.dcm low.dcm``
"""

from __future__ import annotations

from pathlib import Path

from xscreen.errors import XscreenError


class DicosCheckError(XscreenError):
    """A path that is not a readable DICOM file."""


def add_arguments(parser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="DICOS TDR or DX files (Part 10)")


def run(args) -> int:
    from xscreen.scans.dicos.conformance import check, table_for
    from xscreen.scans.dicos.files import parse_dicom
    from xscreen.scans.formats import ScanError

    failed = 0
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            raise DicosCheckError(f"{name}: not a file")
        try:
            ds = parse_dicom(path.read_bytes(), None, False)
        except ScanError as exc:
            raise DicosCheckError(f"{name}: {exc}") from None
        problems = check(ds)
        if problems:
            failed += 1
            print(f"{name}: {len(problems)} problem(s)")
            for problem in problems:
                print(f"  {problem}")
        else:
            iod = table_for(ds)
            print(f"{name}: OK, a conformant DICOS {iod[0] if iod else '?'}")
    return 1 if failed else 0
