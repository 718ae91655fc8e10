"""`xscreen store-purge`: delete bags (images, answers, verdicts) from the scan store.

    xscreen store-purge --all
    xscreen store-purge --before 2026-03-01T00:00:00Z
    xscreen store-purge --older-than-days 30
    xscreen store-purge --request-id 4bf92f3577b34da6a3ce929d0e0e4736 --request-id ...

The store is the one the service uses: XSCREEN_STORE_DIR and XSCREEN_STORE_DATABASE_URL (or the flags).
Files go first, then their rows, in the store's locked write transaction, so running replicas can keep
storing meanwhile (docs/operations.md "Scan store").
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from xscreen.argtypes import aware_time
from xscreen.errors import XscreenError


def _positive_days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days > 0:
        raise argparse.ArgumentTypeError(f"a number of days > 0, got {text!r}")
    return days


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--store-dir", help="the store folder (default: $XSCREEN_STORE_DIR)")
    a(
        "--database-url",
        help="the store's index (default: $XSCREEN_STORE_DATABASE_URL, else SQLite in the folder); prefer "
        "the variable for a URL with a password: a flag shows in the process list",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every bag, and every leftover temporary folder")
    which.add_argument("--before", type=aware_time, help="bags whose time is before this ISO 8601 time")
    which.add_argument("--older-than-days", type=_positive_days, help="bags older than this many days")
    which.add_argument("--request-id", action="append", help="this bag (repeat for several)")


def run(args: argparse.Namespace) -> int:
    from xscreen.store import ScanStore, StoreConfig
    from xscreen.store.config import redacted_url

    store_dir = args.store_dir or os.environ.get("XSCREEN_STORE_DIR")
    if not store_dir:
        raise XscreenError("no store: give --store-dir or set XSCREEN_STORE_DIR")
    if not (Path(store_dir) / "bags").is_dir():  # never make a new, empty store for a mistyped path
        raise XscreenError(f"no scan store in {store_dir} (it has no bags/ folder)")
    url = args.database_url or os.environ.get("XSCREEN_STORE_DATABASE_URL") or None
    store = ScanStore(StoreConfig(store_dir, database_url=url))
    try:
        if args.all:
            count = store.purge()
            store.folders.remove_leftovers(0)
        elif args.request_id:
            count = store.purge(request_ids=args.request_id)
        else:
            before = args.before.timestamp() if args.before else time.time() - args.older_than_days * 86400
            count = store.purge(before=before)
    finally:
        store.close()
    print(f"purged {count} bags from {store_dir} (index {redacted_url(store.config.url)})")
    return 0
