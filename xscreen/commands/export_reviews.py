"""`xscreen export-reviews`: the scan store's reviewed bags as a dataset that `xscreen train` and `eval` read.

    xscreen export-reviews --store /var/lib/xscreen/store --out site-2026-12 --holdout 0.2 --val 0.1 --seed 0
    xscreen export-reviews --store DIR --out night-shift --split test --since 2026-12-01T22:00:00Z

Ground truth: confirmed detections and drawn (missed) boxes; false alarms are negatives, their boxes in
annotations/SPLIT_false_alarms.json. Bags with a detection not judged yet are left out (docs/training.md
"Retraining on the site's reviews"). The store is the service's: XSCREEN_STORE_DIR and
XSCREEN_STORE_DATABASE_URL, or the flags.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from xscreen.argtypes import aware_time, non_negative_float, non_negative_int
from xscreen.errors import XscreenError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--store", "--store-dir", dest="store", help="the store folder (default: $XSCREEN_STORE_DIR)")
    a(
        "--database-url",
        help="the store's index (default: $XSCREEN_STORE_DATABASE_URL, else SQLite in the folder); prefer "
        "the variable for a URL with a password: a flag shows in the process list",
    )
    a("--out", required=True, type=Path, help="the dataset folder to write (new or empty)")
    a(
        "--split",
        help="put every exported bag into this one split (e.g. test: evaluate weights on all the reviews); "
        "not with --holdout or --val",
    )
    a(
        "--holdout",
        type=non_negative_float,
        help="fraction of bags held out as the test split, chosen by a hash of request id and --seed "
        "(default 0.2)",
    )
    a(
        "--val",
        type=non_negative_float,
        help="fraction of bags in the val split (default 0.1); the rest train",
    )
    a("--seed", type=non_negative_int, default=0, help="seed of the split's hash (default 0); keep it fixed")
    a("--since", type=aware_time, help="only bags whose time is at or after this ISO 8601 time")
    a("--until", type=aware_time, help="only bags whose time is before this ISO 8601 time")
    a("--force", action="store_true", help="replace an earlier export in --out (one with export.json)")


def _split_rule(args: argparse.Namespace):
    from xscreen.training.review_export import SplitRule

    if args.split is not None:
        if args.holdout is not None or args.val is not None:
            raise XscreenError("--split puts every bag into one split: drop --holdout and --val")
        return SplitRule(single=args.split)
    holdout = 0.2 if args.holdout is None else args.holdout
    return SplitRule(holdout=holdout, val=0.1 if args.val is None else args.val, seed=args.seed)


def _open_store(args: argparse.Namespace):
    from xscreen.store import ScanStore, StoreConfig

    store_dir = args.store or os.environ.get("XSCREEN_STORE_DIR")
    if not store_dir:
        raise XscreenError("no store: give --store or set XSCREEN_STORE_DIR")
    if not (Path(store_dir) / "bags").is_dir():  # never make a new, empty store for a mistyped path
        raise XscreenError(f"no scan store in {store_dir} (it has no bags/ folder)")
    url = args.database_url or os.environ.get("XSCREEN_STORE_DATABASE_URL") or None
    # the store logs an unreachable index as a warning and retries; here its error ends the command
    store_log = logging.getLogger("xscreen.store")
    level = store_log.level
    store_log.setLevel(logging.ERROR)
    try:
        store = ScanStore(StoreConfig(store_dir, database_url=url))
    finally:
        store_log.setLevel(level)
    try:
        store.usage()  # StoreUnavailable (one line) when the index cannot be reached
    except BaseException:
        store.close()
        raise
    return store


def run(args: argparse.Namespace) -> int:
    from xscreen.training.review_export import export_reviews

    if args.since and args.until and args.until <= args.since:
        raise XscreenError("--until must be after --since")
    rule = _split_rule(args)
    store = _open_store(args)
    try:
        manifest = export_reviews(store, args.out, rule, since=args.since, until=args.until, force=args.force)
    finally:
        store.close()
    _print_summary(args.out, manifest)
    return 0


def _print_summary(out: Path, manifest: dict) -> None:
    counts = manifest["counts"]
    total = sum(c["bags"] for c in counts.values())
    images = sum(c["images"] for c in counts.values())
    print(f"exported {total} reviewed bags ({images} images) from {manifest['store']} to {out}")
    print("split  bags  images  confirmed  missed  false_alarms")
    for split, c in counts.items():
        print(
            f"{split:<6} {c['bags']:>4} {c['images']:>7} {c['confirmed']:>10} {c['missed']:>7} "
            f"{c['false_alarms']:>13}"
        )
    left = manifest["left_out"]
    if left["not_fully_reviewed"]:
        n = len(left["not_fully_reviewed"])
        print(f"left out {n} bags with detections not judged yet (named in {out}/export.json)")
    if left["gone_from_store"]:
        print(f"left out {len(left['gone_from_store'])} bags evicted or purged during the export")
    for split, c in counts.items():
        if not c["images"]:
            print(
                f"note: the {split} split is empty (xscreen train needs train and val; eval needs its split)"
            )
