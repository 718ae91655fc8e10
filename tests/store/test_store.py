"""The scan store on SQLite and on PostgreSQL: round trip, modes, ids, retention, verdicts, queries."""

from __future__ import annotations

import datetime
import json
import os
import stat

import numpy as np
import pytest

from tests.support.store_bags import MODEL, T0, bag, bag_folders, disk_bytes
from xscreen.store import BagNotFound, NewBag, StoreInputError, View
from xscreen.store.bag import encode_bag


def test_a_bag_comes_back_pixel_exact_with_its_answer_and_model(make_store):
    store = make_store()
    new = bag("req-1", shapes=((40, 56), (33, 17)), seed=7, source="DICOS AE SCANNER_3")
    result = store.put_bag(new)
    assert result.stored and result.reason is None and result.usage.bags == 1
    got = store.get_bag("req-1")
    s = got.summary
    assert (s.request_id, s.source, s.alarm, s.classes, s.top_score, s.n_views) == (
        "req-1", "DICOS AE SCANNER_3", True, ("knife",), 0.91, 2,
    )  # fmt: skip
    assert s.model == MODEL and abs((s.time - new.time).total_seconds()) < 1e-3
    assert got.answer == new.answer and got.view_sizes == [(56, 40), (17, 33)]
    for i, sent in enumerate(new.views):
        view = store.view("req-1", i)
        assert view.high.dtype == np.uint16 and np.array_equal(view.high, sent.high)
        assert np.array_equal(view.low, sent.low)
    assert [(d.view, d.index, d.class_name, d.score) for d in got.detections] == [
        (0, 0, "knife", 0.91), (0, 1, "tin", 0.42),
    ]  # fmt: skip
    # the folder stands alone: bag.json holds what the index holds
    meta = json.loads((store.folders.path("req-1") / "bag.json").read_text())
    assert meta["answer"] == new.answer and meta["model"]["sha256"] == MODEL.sha256
    with pytest.raises(BagNotFound):
        store.view("req-1", 2)


def test_folders_are_0700_and_files_0600_whatever_the_umask(make_store, backend):
    old = os.umask(0)  # the store sets its modes itself
    try:
        store = make_store()
        assert store.put_bag(bag("modes")).stored
    finally:
        os.umask(old)
    root = store.config.store_dir
    folders = [root, root / "bags", root / "bags" / "modes"]
    assert [stat.S_IMODE(p.stat().st_mode) for p in folders] == [0o700] * 3
    files = sorted(p.name for p in (root / "bags" / "modes").iterdir())
    assert files == ["bag.json", "view0_high.npy", "view0_low.npy"]
    index = sorted(root.glob("index.sqlite3*")) if backend == "sqlite" else []
    for path in [*(root / "bags" / "modes").iterdir(), *index]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert bool(index) == (backend == "sqlite")


PATH_LIKE_IDS = ["../x", "..", ".", "a/b", "/etc", "", "a" * 65, "a.b", "a b", "caf\u00e9", "x\x00", "a\\b"]


def test_request_ids_that_could_be_paths_are_refused(make_store):
    store = make_store()
    before = sorted(os.listdir(store.config.store_dir))
    for request_id in PATH_LIKE_IDS:
        result = store.put_bag(bag(request_id))
        assert (result.stored, result.reason) == (False, "invalid"), request_id
        for call, args in (
            (store.get_bag, (request_id,)),
            (store.view, (request_id, 0)),
            (store.set_detection_verdict, (request_id, 0, 0, "confirm", "rev")),
            (store.add_missed_object, (request_id, 0, (0, 0, 1, 1), "knife", "rev")),
            (lambda rid: store.purge(request_ids=[rid]), (request_id,)),
        ):
            with pytest.raises(StoreInputError, match="letters, digits"):
                call(*args)
    assert bag_folders(store.config.store_dir) == [] and sorted(os.listdir(store.config.store_dir)) == before
    assert store.put_bag(bag("A-z_09" + "x" * 58)).stored  # 64 characters of the alphabet: fine


def test_unusable_bags_store_nothing(make_store):
    store = make_store()
    good = bag("ok")
    unusable = [
        NewBag("v8", [View(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))], {}, MODEL, "s", False),
        NewBag(
            "shape", [View(np.zeros((4, 4), np.uint16), np.zeros((4, 5), np.uint16))], {}, MODEL, "s", False
        ),
        NewBag("none", [], {}, MODEL, "s", False),
        NewBag("naive", good.views, {}, MODEL, "s", False, time=datetime.datetime(2030, 1, 1)),
        NewBag("nan", good.views, {"x": float("nan")}, MODEL, "s", False),
    ]
    for b in unusable:
        assert store.put_bag(b).reason == "invalid", b.request_id
    result = store.put_bag(NewBag("no-views", None, {}, MODEL, "s", False))  # a caller's bug: no raise either
    assert (result.stored, result.reason) == (False, "internal") and "TypeError" in result.detail
    assert store.usage().bags == 0 and bag_folders(store.config.store_dir) == []


def test_a_second_bag_with_the_same_request_id_is_refused(make_store):
    store = make_store()
    assert store.put_bag(bag("same", seed=1)).stored
    result = store.put_bag(bag("same", seed=2))
    assert (result.stored, result.reason) == (False, "duplicate")
    assert np.array_equal(store.view("same", 0).high, bag("same", seed=1).views[0].high)


def test_count_limit_evicts_the_oldest_bags_first(make_store):
    store = make_store(max_bags=3)
    # times out of arrival order: "old" arrives last but is the oldest bag
    for name, minutes in [("b", 2), ("c", 3), ("d", 4), ("old", 1), ("e", 5)]:
        result = store.put_bag(bag(name, minutes=minutes))
        assert result.stored
    names = [b.request_id for b in store.recent_bags().bags]
    assert names == ["e", "d", "c"]  # newest first (arrival order); "old" and "b" went first
    assert bag_folders(store.config.store_dir) == ["c", "d", "e"]
    with pytest.raises(BagNotFound):
        store.get_bag("b")


def test_byte_limit_is_never_exceeded_on_disk(make_store):
    store = make_store(max_bytes=10**9)
    one = store.folders.disk_bytes(encode_bag(bag("p")).files)  # each bag below takes this much
    store = make_store(store_dir=store.config.store_dir.with_name("limited"), max_bytes=int(2.5 * one))
    seen = []
    for i in range(6):
        result = store.put_bag(bag(f"b{i}", minutes=i, seed=i))
        assert result.stored and result.usage.bytes <= store.config.max_bytes
        seen.append(result.evicted)
        assert (
            disk_bytes(store.config.store_dir / "bags") - disk_bytes_of_root(store) <= store.config.max_bytes
        )
    assert seen == [0, 0, 1, 1, 1, 1]
    assert bag_folders(store.config.store_dir) == ["b4", "b5"]
    assert store.usage().bytes == 2 * one


def disk_bytes_of_root(store) -> int:
    """The bags folder's own block (du counts it; the store counts each bag's folder, not the root)."""
    return os.lstat(store.config.store_dir / "bags").st_blocks * 512


def test_a_bag_larger_than_the_limit_is_refused_and_evicts_nothing(make_store):
    store = make_store(max_bytes=64 * 1024)
    assert store.put_bag(bag("small")).stored
    result = store.put_bag(bag("huge", shapes=((200, 200),)))
    assert (result.stored, result.reason) == (False, "too_large")
    assert bag_folders(store.config.store_dir) == ["small"]


def test_age_limit_evicts_old_bags_at_the_next_put_and_at_prune(make_store):
    now = datetime.datetime.now(datetime.UTC)
    store = make_store(max_age_s=3600)
    for name, hours in [("2h", -2), ("90m", -1.5), ("fresh", -0.1)]:
        new = bag(name)
        assert store.put_bag(NewBag(**{**new.__dict__, "time": now + datetime.timedelta(hours=hours)})).stored
    # each put evicts what has expired by then: the first two had, when "fresh" arrived
    assert [b.request_id for b in store.recent_bags().bags] == ["fresh"]
    assert store.prune() == 0
    old = bag("late-old")
    assert store.put_bag(NewBag(**{**old.__dict__, "time": now - datetime.timedelta(hours=5)})).stored
    assert store.prune() == 1 and [b.request_id for b in store.recent_bags().bags] == ["fresh"]
    assert bag_folders(store.config.store_dir) == ["fresh"]


def test_verdicts_replace_earlier_ones_and_keep_their_history(make_store):
    store = make_store()
    assert store.put_bag(bag("v")).stored
    first = store.set_detection_verdict("v", 0, 0, "confirm", "reviewer-a")
    second = store.set_detection_verdict("v", 0, 0, "false_alarm", "reviewer-b")
    other = store.set_detection_verdict("v", 0, 1, "confirm", "reviewer-a")
    drawn = store.add_missed_object("v", 0, (1, 2, 30.5, 39), "scissors", "reviewer-b")
    got = store.get_bag("v")
    assert [(d.index, d.verdict.kind, d.verdict.reviewer) for d in got.detections] == [
        (0, "false_alarm", "reviewer-b"), (1, "confirm", "reviewer-a"),
    ]  # fmt: skip
    assert [(m.class_name, m.box, m.view) for m in got.missed] == [("scissors", (1.0, 2.0, 30.5, 39.0), 0)]
    assert [(h.id, h.kind, h.current) for h in got.history] == [
        (first.id, "confirm", False), (second.id, "false_alarm", True), (other.id, "confirm", True),
        (drawn.id, "missed", True),
    ]  # fmt: skip
    assert first.time <= second.time and second.detection == 0 and second.class_name == "knife"
    removed = store.remove_missed_object("v", drawn.id, "reviewer-a")
    got = store.get_bag("v")
    assert got.missed == [] and removed.kind == "missed_removed" and removed.reviewer == "reviewer-a"
    with pytest.raises(BagNotFound):
        store.remove_missed_object("v", drawn.id, "reviewer-a")


BAD_VERDICTS = [
    (lambda s: s.set_detection_verdict("v", 0, 0, "maybe", "r"), StoreInputError, "confirm, false_alarm"),
    (lambda s: s.set_detection_verdict("v", 0, 5, "confirm", "r"), BagNotFound, "no detection 5"),
    (lambda s: s.set_detection_verdict("nope", 0, 0, "confirm", "r"), BagNotFound, "no stored bag"),
    (lambda s: s.set_detection_verdict("v", 0, 0, "confirm", ""), StoreInputError, "reviewer"),
    (lambda s: s.add_missed_object("v", 0, (0, 0, 57, 10), "knife", "r"), StoreInputError, "x2 <= 56"),
    (lambda s: s.add_missed_object("v", 0, (5, 5, 5, 10), "knife", "r"), StoreInputError, "x1 < x2"),
    (lambda s: s.add_missed_object("v", 0, (0, 0, float("inf"), 1), "knife", "r"), StoreInputError, "finite"),
    (lambda s: s.add_missed_object("v", 0, (0, 0, 1), "knife", "r"), StoreInputError, "four numbers"),
    (lambda s: s.add_missed_object("v", 1, (0, 0, 5, 5), "knife", "r"), StoreInputError, "views 0-0"),
    (lambda s: s.add_missed_object("v", 0, (0, 0, 5, 5), "bazooka", "r"), StoreInputError, "unknown class"),
    (lambda s: s.remove_missed_object("v", 99, "r"), BagNotFound, "no current drawn box 99"),
]


def test_bad_verdicts_are_refused_with_a_reason(make_store):
    store = make_store()
    assert store.put_bag(bag("v")).stored
    for call, error, match in BAD_VERDICTS:
        with pytest.raises(error, match=match):
            call(store)
    assert store.get_bag("v").history == []


def test_list_filters_cursor_and_paging(make_store):
    store = make_store()
    specs = {
        "a": (("knife", 0.9),), "b": (("tin", 0.3),), "c": (("tin", 0.8), ("knife", 0.2)), "d": (),
    }  # fmt: skip
    for i, (name, detections) in enumerate(specs.items()):
        assert store.put_bag(bag(name, minutes=i, detections=detections)).stored
    listed = store.recent_bags()
    assert [b.request_id for b in listed.bags] == ["d", "c", "b", "a"] and listed.cursor == 4
    assert [b.request_id for b in store.recent_bags(alarm_only=True).bags] == ["c", "a"]
    assert [b.request_id for b in store.recent_bags(class_name="tin").bags] == ["c"]
    assert [b.request_id for b in store.recent_bags(limit=2).bags] == ["d", "c"]
    assert [b.request_id for b in store.recent_bags(before=3).bags] == ["b", "a"]
    store.set_detection_verdict("a", 0, 0, "confirm", "r")
    assert [b.request_id for b in store.recent_bags(unreviewed=True).bags] == ["d", "c", "b"]
    assert [(b.request_id, b.reviewed) for b in store.recent_bags(alarm_only=True).bags] == [
        ("c", False), ("a", True),
    ]  # fmt: skip
    # polling: nothing new, then exactly the new bag; the cursor survives a purge (seq is never reused)
    assert store.recent_bags(since=listed.cursor).bags == []
    assert store.put_bag(bag("e", minutes=9)).stored
    new = store.recent_bags(since=listed.cursor)
    assert [b.request_id for b in new.bags] == ["e"] and new.cursor == 5
    assert store.purge() == 5
    assert store.put_bag(bag("f")).stored and [b.seq for b in store.recent_bags(since=5).bags] == [6]
    with pytest.raises(StoreInputError):
        store.recent_bags(limit=0)


def test_shift_summary_counts_the_window(make_store):
    store = make_store()
    specs = [("x1", 0, (("knife", 0.9), ("tin", 0.6))), ("x2", 10, (("knife", 0.7),)), ("x3", 20, ()),
             ("x4", 30, (("tin", 0.2),)), ("later", 600, (("knife", 0.99),))]  # fmt: skip
    for name, minutes, detections in specs:
        assert store.put_bag(bag(name, minutes=minutes, detections=detections)).stored
    store.set_detection_verdict("x1", 0, 0, "confirm", "r1")
    store.set_detection_verdict("x1", 0, 1, "false_alarm", "r1")
    store.set_detection_verdict("x2", 0, 0, "confirm", "r1")
    store.set_detection_verdict("x2", 0, 0, "false_alarm", "r2")  # replaces: counted once, as r2 said
    store.add_missed_object("x3", 0, (1, 1, 9, 9), "scissors", "r2")
    store.set_detection_verdict("later", 0, 0, "confirm", "r1")  # outside the window
    summary = store.shift_summary(T0, T0 + datetime.timedelta(hours=8))
    assert (summary.bags, summary.alarms, summary.alarm_rate, summary.reviewed_bags) == (4, 2, 0.5, 3)
    counts = {
        name: (c.detections, c.confirmed, c.false_alarms, c.missed) for name, c in summary.per_class.items()
    }
    assert counts == {"knife": (2, 1, 1, 0), "scissors": (0, 0, 0, 1), "tin": (2, 0, 1, 0)}
    assert summary.scores == [0.2, 0.6, 0.7, 0.9]
    empty = store.shift_summary(T0 - datetime.timedelta(days=1), T0)
    assert (empty.bags, empty.alarm_rate, empty.per_class, empty.scores) == (0, None, {}, [])


def test_multi_view_answers_index_detections_per_view(make_store):
    store = make_store()
    answer = {
        "score_threshold": 0.5,
        "views": [
            {"detections": [{"class_name": "knife", "score": 0.8, "box": [1, 1, 5, 5]}]},
            {"detections": [{"class_name": "tin", "score": 0.3, "box": [2, 2, 6, 6]},
                            {"class_name": "dagger", "score": 0.95, "box": [0, 0, 3, 3]}]},
        ],
    }  # fmt: skip
    base = bag("mv", shapes=((40, 56), (40, 56)))
    assert store.put_bag(NewBag(**{**base.__dict__, "answer": answer})).stored
    verdict = store.set_detection_verdict("mv", 1, 1, "confirm", "r")
    assert (verdict.view, verdict.detection, verdict.class_name) == (1, 1, "dagger")
    got = store.get_bag("mv")
    assert [(d.view, d.index, d.class_name) for d in got.detections] == [
        (0, 0, "knife"), (1, 0, "tin"), (1, 1, "dagger"),
    ]  # fmt: skip
    assert store.add_missed_object("mv", 1, (0, 0, 56, 40), "blade", "r").view == 1
