"""`xscreen export-reviews` on SQLite and PostgreSQL: what becomes ground truth, false alarms and left-out
bags; the views pixel for pixel; the stable held-out split; and every refusal as one line and exit 2."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.support.review_recipe import review_recipe
from tests.support.store_bags import MODEL, T0, bag
from tests.support.unreadable import NO_DAC
from xscreen.cli import main
from xscreen.scans import convert_scan, quantise_converted, read_converted
from xscreen.store import ScanStore, StoreConfig
from xscreen.training import review_export
from xscreen.training.dataset import CocoDetection
from xscreen.training.review_export import SplitRule

KNIFE, TIN, SCISSORS = 3, 5, 4  # CLCXray category ids


def _reviewed_store(make_store) -> ScanStore:
    """a: two views, knife confirmed, tin a false alarm, scissors drawn in view 1; b: tin not judged yet;
    c: never reviewed; d: knife confirmed, then judged a false alarm, a drawn box taken back; e: no
    detection, one drawn box."""
    store = make_store()
    assert store.put_bag(bag("a", minutes=0, seed=1, shapes=((40, 56), (33, 17)))).stored
    for name, minutes in (("b", 1), ("c", 2)):
        assert store.put_bag(bag(name, minutes=minutes, seed=minutes)).stored
    assert store.put_bag(bag("d", minutes=3, seed=3, detections=(("knife", 0.7),))).stored
    assert store.put_bag(bag("e", minutes=4, seed=4, detections=())).stored
    store.set_detection_verdict("a", 0, 0, "confirm", "rev-1")
    store.set_detection_verdict("a", 0, 1, "false_alarm", "rev-1")
    store.add_missed_object("a", 1, (1, 2, 15.5, 30), "scissors", "rev-2")
    store.set_detection_verdict("b", 0, 0, "confirm", "rev-1")
    store.set_detection_verdict("d", 0, 0, "confirm", "rev-1")
    store.set_detection_verdict("d", 0, 0, "false_alarm", "rev-2")
    drawn = store.add_missed_object("d", 0, (4, 4, 20, 20), "tin", "rev-1")
    store.remove_missed_object("d", drawn.id, "rev-2")
    store.add_missed_object("e", 0, (10, 10, 30.25, 35), "knife", "rev-2")
    return store


def _export(store: ScanStore, out: Path, *flags: str) -> int:
    argv = ["export-reviews", "--store", str(store.config.store_dir), "--out", str(out), *flags]
    if store.config.database_url:
        argv += ["--database-url", store.config.database_url]
    return main(argv)


def _coco(out: Path, name: str) -> dict:
    return json.loads((out / "annotations" / f"{name}.json").read_text())


def _boxes(coco: dict) -> list[tuple]:
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    return [
        (files[a["image_id"]], a["category_id"], a["bbox"], a["origin"], a.get("score"))
        for a in coco["annotations"]
    ]


def test_truth_is_confirmed_and_drawn_boxes_false_alarms_apart_views_exact(make_store, tmp_path, capsys):
    store = _reviewed_store(make_store)
    out = tmp_path / "site"
    assert _export(store, out, "--split", "site") == 0
    printed = capsys.readouterr().out
    assert "exported 3 reviewed bags (4 images)" in printed
    assert "site      3       4          1       2             2" in printed
    assert "left out 1 bags with detections not judged yet" in printed
    truth, false_alarms = _coco(out, "site"), _coco(out, "site_false_alarms")
    names = ["a_v0.png", "a_v1.png", "d_v0.png", "e_v0.png"]  # oldest bag first; b partial, c unreviewed
    assert [im["file_name"] for im in truth["images"]] == names and false_alarms["images"] == truth["images"]
    assert [(im["request_id"], im["view"], im["width"], im["height"]) for im in truth["images"]] == [
        ("a", 0, 56, 40), ("a", 1, 17, 33), ("d", 0, 56, 40), ("e", 0, 56, 40),
    ]  # fmt: skip
    assert truth["images"][0]["model"] == {
        "name": MODEL.name,
        "version": MODEL.version,
        "sha256": MODEL.sha256,
    }
    assert _boxes(truth) == [
        ("a_v0.png", KNIFE, [2.0, 3.0, 18.0, 27.0], "confirmed", 0.91),
        ("a_v1.png", SCISSORS, [1.0, 2.0, 14.5, 28.0], "missed", None),
        ("e_v0.png", KNIFE, [10.0, 10.0, 20.25, 25.0], "missed", None),
    ]  # fmt: skip
    assert _boxes(false_alarms) == [
        ("a_v0.png", TIN, [3.0, 3.0, 18.0, 27.0], "false_alarm", 0.42),
        ("d_v0.png", KNIFE, [2.0, 3.0, 18.0, 27.0], "false_alarm", 0.7),
    ]  # fmt: skip
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["left_out"] == {"not_fully_reviewed": ["b"], "gone_from_store": []}
    assert manifest["split"] == {"rule": "every bag", "split": "site"}
    assert manifest["models"] == [
        {"name": MODEL.name, "version": MODEL.version, "sha256": MODEL.sha256, "bags": 3}
    ]
    for im in truth["images"]:  # the 16-bit pair pixel for pixel; the image as Eq. 1 converts it
        view = store.view(im["request_id"], im["view"])
        high = cv2.imread(str(out / im["raw_high"]), cv2.IMREAD_UNCHANGED)
        low = cv2.imread(str(out / im["raw_low"]), cv2.IMREAD_UNCHANGED)
        assert high.dtype == np.uint16 and np.array_equal(high, view.high) and np.array_equal(low, view.low)
        expected = quantise_converted(convert_scan(view.high, view.low)).astype(np.float32)
        assert np.array_equal(read_converted(out / "images" / "site" / im["file_name"]), expected)
    # the training loader reads it as it is: e's drawn box and a's confirmed knife; d's view a negative
    ds = CocoDetection(out, "site")
    assert len(ds) == 4 and [len(ds.annotations(i)[0]) for i in range(4)] == [1, 1, 0, 1]
    assert ds.annotations(3)[0].tolist() == [[10.0, 10.0, 30.25, 35.0]]
    # private like the store: folders 0700, files 0600
    for path in [out, *out.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site", "store"]  # no temporary folder left


def test_the_split_is_a_fixed_hash_of_seed_and_request_id():
    rule = SplitRule(holdout=0.2, val=0.1, seed=0)
    # pinned: a change here would move held-out bags of earlier exports into training
    assert [rule.split_of(f"req-{i}") for i in range(8)] == [
        "train", "test", "train", "train", "test", "train", "train", "val",
    ]  # fmt: skip
    digest = hashlib.sha256(b"xscreen-export-reviews:0:req-7").digest()  # the rule, written out
    assert 0.2 <= int.from_bytes(digest[:8], "big") / 2**64 < 0.3
    ids = [f"{i:032x}" for i in range(20000)]
    splits = [rule.split_of(r) for r in ids]
    assert abs(splits.count("test") / 20000 - 0.2) < 0.015 and abs(splits.count("val") / 20000 - 0.1) < 0.01
    other = [SplitRule(holdout=0.2, val=0.1, seed=1).split_of(r) for r in ids]
    assert 0.25 < sum(a != b for a, b in zip(splits, other, strict=True)) / 20000 < 0.6
    assert {SplitRule(single="all").split_of(r) for r in ids[:50]} == {"all"}
    for bad in ({"holdout": 0.6, "val": 0.4}, {"holdout": 1.0, "val": 0.0}, {"single": "../x"}):
        with pytest.raises(review_export.ExportError):
            SplitRule(**bad)


def test_held_out_bags_stay_held_out_as_the_store_grows(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(review_export, "PAGE", 3)  # several pages of the live list
    store = ScanStore(StoreConfig(tmp_path / "store"))

    def add(names, start):
        for i, name in enumerate(names):
            assert store.put_bag(bag(name, minutes=start + i, detections=(("knife", 0.9),))).stored
            store.set_detection_verdict(name, 0, 0, "confirm", "rev")

    add([f"first-{i}" for i in range(10)], 0)
    out = tmp_path / "ds"
    assert _export(store, out, "--holdout", "0.3", "--val", "0.2", "--seed", "7") == 0
    before = {s: {im["request_id"] for im in _coco(out, s)["images"]} for s in ("train", "val", "test")}
    assert sum(len(v) for v in before.values()) == 10 and all(before.values())
    add([f"later-{i}" for i in range(10)], 100)
    assert _export(store, out, "--holdout", "0.3", "--val", "0.2", "--seed", "7") == 2
    assert "exists and is not empty (--force replaces an earlier export)" in capsys.readouterr().err
    assert _export(store, out, "--holdout", "0.3", "--val", "0.2", "--seed", "7", "--force") == 0
    after = {s: {im["request_id"] for im in _coco(out, s)["images"]} for s in ("train", "val", "test")}
    assert sum(len(v) for v in after.values()) == 20
    assert all(before[s] <= after[s] for s in before)  # no bag changed split
    # a time window: only the later bags (their times are T0 + 100..109 minutes)
    since = (T0 + datetime.timedelta(minutes=100)).isoformat()
    assert _export(store, tmp_path / "later", "--split", "all", "--since", since) == 0
    assert {im["request_id"] for im in _coco(tmp_path / "later", "all")["images"]} == {
        f"later-{i}" for i in range(10)
    }
    until = (T0 + datetime.timedelta(minutes=5)).isoformat()
    assert _export(store, tmp_path / "early", "--split", "all", "--until", until) == 0
    assert len(_coco(tmp_path / "early", "all")["images"]) == 5
    store.close()


def _fail(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    # the command's own stderr: without the JSON log lines of a service an earlier test ran in this
    # process (its logging setup stays; `xscreen export-reviews` alone configures none)
    err = "".join(
        line for line in capsys.readouterr().err.splitlines(keepends=True) if not line.startswith('{"ts":')
    )
    assert err.startswith("xscreen export-reviews: error: ") and err.count("\n") == 1, err
    return err


def test_refusals_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("XSCREEN_STORE_DIR", raising=False)
    monkeypatch.delenv("XSCREEN_STORE_DATABASE_URL", raising=False)
    out = ["--out", str(tmp_path / "ds")]
    assert "no store: give --store or set XSCREEN_STORE_DIR" in _fail(["export-reviews", *out], capsys)
    err = _fail(["export-reviews", "--store", str(tmp_path), *out], capsys)
    assert f"no scan store in {tmp_path} (it has no bags/ folder)" in err
    store_dir = tmp_path / "store"
    store = ScanStore(StoreConfig(store_dir))
    base = ["export-reviews", "--store", str(store_dir)]
    err = _fail([*base, *out], capsys)
    assert "no reviewed bag to export: 0 bags stored, none has a verdict" in err
    assert store.put_bag(bag("x")).stored and store.put_bag(bag("y", minutes=1)).stored
    assert "2 bags stored, none has a verdict" in _fail([*base, *out], capsys)
    store.set_detection_verdict("x", 0, 0, "confirm", "rev")
    err = _fail([*base, *out], capsys)
    assert "no fully reviewed bag: 1 reviewed bags still have detections without a verdict" in err
    assert not (tmp_path / "ds").exists()
    store.set_detection_verdict("x", 0, 1, "confirm", "rev")
    (tmp_path / "file").write_text("x")
    assert "exists and is not a folder" in _fail([*base, "--out", str(tmp_path / "file")], capsys)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    err = _fail([*base, "--out", str(tmp_path / "other"), "--force"], capsys)
    assert "is not an earlier export (it has no export.json); not replacing it" in err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    assert "drop --holdout and --val" in _fail([*base, *out, "--split", "x", "--val", "0.1"], capsys)
    assert "sum < 1" in _fail([*base, *out, "--holdout", "0.5", "--val", "0.5"], capsys)
    assert "--until must be after --since" in _fail(
        [*base, *out, "--since", "2030-01-02T00:00:00Z", "--until", "2030-01-01T00:00:00Z"], capsys
    )
    err = _fail([*base, *out, "--database-url", "postgresql+pg8000://nobody@127.0.0.1:9/none"], capsys)
    assert "the scan store's database is unavailable" in err
    with pytest.raises(SystemExit) as exit_info:
        main([*base, *out, "--since", "2030-01-01"])
    assert exit_info.value.code == 2 and "has no time zone" in capsys.readouterr().err
    assert (
        main([*base, *out, "--split", "all"]) == 0
        and not (tmp_path / "ds" / "annotations" / "train.json").exists()
    )
    store.close()


def test_an_unwritable_place_is_one_line_and_leaves_nothing(tmp_path):
    store = ScanStore(StoreConfig(tmp_path / "store"))
    assert store.put_bag(bag("x", detections=(("knife", 0.9),))).stored
    store.set_detection_verdict("x", 0, 0, "confirm", "rev")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    prefix = (shutil.which("setpriv"), *NO_DAC) if os.geteuid() == 0 else ()
    if os.geteuid() == 0 and prefix[0] is None:
        pytest.skip("needs setpriv (util-linux) to make a folder unwritable to root")
    cmd = [
        *prefix,
        sys.executable,
        "-m",
        "xscreen.cli",
        "export-reviews",
        "--store",
        str(store.config.store_dir),
    ]
    cmd += ["--out", str(locked / "ds"), "--split", "all"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    store.close()
    assert proc.returncode == 2, proc.stderr
    message = f"cannot write the export beside --out {locked / 'ds'}: Permission denied"
    assert proc.stderr.strip().splitlines()[-1] == f"xscreen export-reviews: error: {message}"
    assert "Traceback" not in proc.stderr and list(locked.iterdir()) == []


def test_every_command_of_the_training_doc_recipe_parses_with_the_real_cli():
    """The fast check of docs/training.md's recipe (tests/store/test_review_loop.py runs it, slow)."""
    from xscreen.cli import build_parser

    commands = review_recipe()
    xscreen = [shlex.split(c)[1:] for c in commands if c.startswith("xscreen ")]
    assert [argv[0] for argv in xscreen] == ["export-reviews", "train", "eval", "eval", "release"]
    for argv in xscreen:
        parser, module = build_parser(argv[0])
        args, unknown = parser.parse_known_args(argv)  # SystemExit on a missing required flag
        assert module is not None and unknown == [], (argv, unknown)
    train = build_parser("train")[0].parse_args(xscreen[1])
    assert train.init_weights and train.config == "small_lacls_release_demo"
    assert [build_parser("eval")[0].parse_args(a).split for a in xscreen[2:4]] == ["test", "test"]
    curl = commands[-1]
    assert curl.startswith("curl ") and "-X POST" in curl and curl.endswith("/admin/model")


class _PurgedMidway(ScanStore):
    """A store whose ``doomed`` bags are purged (for real) between the listing and the copy of their
    views, as an operator's store-purge or another replica's eviction can do."""

    doomed: tuple[str, ...] = ()

    def view(self, request_id: str, index: int):
        if request_id in self.doomed:
            self.purge(request_ids=[request_id])
        return super().view(request_id, index)


def test_a_bag_evicted_during_the_export_is_left_out_and_named(tmp_path):
    store = _PurgedMidway(StoreConfig(tmp_path / "store"))
    for name, minutes in (("c", 0), ("d", 1)):
        assert store.put_bag(bag(name, minutes=minutes, detections=(("knife", 0.9),))).stored
        store.set_detection_verdict(name, 0, 0, "confirm", "rev")
    store.doomed = ("d",)
    manifest = review_export.export_reviews(store, tmp_path / "ds", SplitRule(single="all"))
    assert manifest["left_out"] == {"not_fully_reviewed": [], "gone_from_store": ["d"]}
    assert [im["request_id"] for im in _coco(tmp_path / "ds", "all")["images"]] == ["c"]
    assert sorted(p.name for p in (tmp_path / "ds" / "images" / "all").iterdir()) == ["c_v0.png"]
    store.doomed = ("c",)
    with pytest.raises(review_export.ExportError, match="every reviewed bag was evicted or purged"):
        review_export.export_reviews(store, tmp_path / "ds2", SplitRule(single="all"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "store"]  # nothing half written
    store.close()
