"""Replicas sharing one store folder and one index, on SQLite and on PostgreSQL: writers at once lose
nothing and stay within the byte limit; migrations at once do not trip over each other."""

from __future__ import annotations

import contextlib
import threading
import time

import sqlalchemy as sa

from tests.support import store_child as child
from tests.support.store_bags import bag, bag_folders, disk_bytes
from xscreen.store import ScanStore, StoreConfig
from xscreen.store.bag import encode_bag
from xscreen.store.schema import VERSION_TABLE

N = 8


def test_two_replica_processes_writing_at_once_lose_nothing(tmp_path, database_url):
    store_dir, go = tmp_path / "store", tmp_path / "go"
    ScanStore(StoreConfig(store_dir, database_url=database_url)).close()  # migrated before they start
    pids = [
        child.forked({
            "store_dir": str(store_dir), "database_url": database_url,
            "steps": [{"wait_for": str(go)}, {"put_many": {"prefix": f"r{r}-", "n": N}}],
        })
        for r in (0, 1)
    ]  # fmt: skip
    go.touch()
    puts = [line for pid in pids for line in child.results(pid) if "put" in line]
    assert len(puts) == 2 * N and all(p["stored"] for p in puts), [p for p in puts if not p["stored"]]
    names = sorted(f"r{r}-{i}" for r in (0, 1) for i in range(N))
    for replica in range(2):  # each replica (its own engine) sees all of them
        store = ScanStore(StoreConfig(store_dir, database_url=database_url))
        page = store.recent_bags(limit=100)
        assert sorted(b.request_id for b in page.bags) == names
        assert sorted(b.seq for b in page.bags) == list(range(1, 2 * N + 1)) and page.cursor == 2 * N
        assert store.view(f"r{replica}-{N - 1}", 0).high.shape == (8, 8)
        store.close()
    assert bag_folders(store_dir) == names


def test_replicas_at_once_stay_within_the_byte_limit(tmp_path, database_url):
    """Two replicas in threads, each with its own engine, fill a store that holds 5 bags; a third
    thread measures the disk meanwhile."""
    store_dir = tmp_path / "store"
    first = ScanStore(StoreConfig(store_dir, database_url=database_url))
    one = first.folders.disk_bytes(encode_bag(bag("x", shapes=((8, 8),))).files)
    first.close()
    config = StoreConfig(store_dir, database_url=database_url, max_bytes=5 * one + one // 2)
    stores = [ScanStore(config) for _ in range(2)]
    results: list = []
    peaks: list[int] = []
    done = threading.Event()

    def write(r: int) -> None:
        for i in range(N):
            results.append(stores[r].put_bag(bag(f"t{r}-{i}", minutes=i, seed=i, shapes=((8, 8),))))

    def watch() -> None:
        root_block = (store_dir / "bags").stat().st_blocks * 512
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):  # a folder deleted while walked: no sample
                peaks.append(disk_bytes(store_dir / "bags") - root_block)
            time.sleep(0.001)

    writers = [threading.Thread(target=write, args=(r,)) for r in (0, 1)]
    watcher = threading.Thread(target=watch)
    for thread in [watcher, *writers]:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    watcher.join()
    assert len(results) == 2 * N and all(r.stored for r in results)
    assert all(r.usage.bytes <= config.max_bytes for r in results)
    assert peaks and max(peaks) <= config.max_bytes
    usage = stores[0].usage()
    listed = sorted(b.request_id for b in stores[1].recent_bags().bags)
    assert usage.bags == 5 and usage.bytes == 5 * one and listed == bag_folders(store_dir)
    for store in stores:
        store.close()


def test_replicas_migrating_an_empty_index_at_once(tmp_path, database_url):
    barrier = threading.Barrier(4)
    opened: list[ScanStore] = []
    errors: list[BaseException] = []

    def start(i: int) -> None:
        try:
            barrier.wait()
            opened.append(ScanStore(StoreConfig(tmp_path / "store", database_url=database_url)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(opened) == 4 and all(store.ready for store in opened)
    for i, store in enumerate(opened):
        assert store.put_bag(bag(f"m{i}", minutes=i)).stored
    with opened[0].engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all() == ["0002"]
    assert sorted(b.request_id for b in opened[3].recent_bags().bags) == ["m0", "m1", "m2", "m3"]
    for store in opened:
        store.close()


def test_reviewers_at_once_on_one_detection_leave_one_current_verdict(tmp_path, database_url):
    stores = [ScanStore(StoreConfig(tmp_path / "store", database_url=database_url)) for _ in range(2)]
    assert stores[0].put_bag(bag("rv")).stored
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def review(r: int) -> None:
        try:
            barrier.wait()
            for i in range(6):
                stores[r].set_detection_verdict(
                    "rv", 0, 0, ("confirm", "false_alarm")[i % 2], f"reviewer-{r}"
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=review, args=(r,)) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    got = stores[1].get_bag("rv")
    history = [v for v in got.history if v.detection == 0]
    assert len(history) == 12 and [v.current for v in history].count(True) == 1
    assert history[-1].current and got.detections[0].verdict == history[-1]
    for store in stores:
        store.close()
