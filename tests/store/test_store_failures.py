"""The scan store when things break, on SQLite and on PostgreSQL: an unwritable folder, a full disk, a
database that cannot be reached or is lost. put_bag returns a reason and leaves nothing half written;
queries raise StoreUnavailable. The failures are real: a child process without write permission, a
file size limit, a tiny tmpfs, a closed port, a role PostgreSQL stops letting in."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest
import sqlalchemy as sa

from tests.support import store_child as child
from tests.support.store_bags import bag, bag_folders, child_results, run_child
from xscreen.store import ScanStore, StoreConfig, StoreUnavailable


def test_an_unwritable_folder_is_a_reason_and_leaves_the_store_whole(tmp_path, database_url):
    store_dir = tmp_path / "store"
    steps = [
        {"put": {"request_id": "a", "minutes": 0}},
        {"put": {"request_id": "b", "minutes": 1}},
        {"chmod": [str(store_dir / "bags"), 0o500]},
        {"put": {"request_id": "c", "minutes": 2}},  # fits the limits: its folder cannot be made
        {"put": {"request_id": "d", "minutes": 3}},  # over max_bags: "a" cannot be evicted
    ]
    spec = {
        "store_dir": str(store_dir),
        "database_url": database_url,
        "limits": {"max_bags": 3},
        "steps": steps,
    }
    results = child.results(child.forked(spec, obey_modes=True))[1:]
    os.chmod(store_dir / "bags", 0o700)
    assert [(r["put"], r["stored"], r["reason"]) for r in results] == [
        ("a", True, None), ("b", True, None), ("c", False, "unwritable"), ("d", False, "unwritable"),
    ]  # fmt: skip
    assert "Permission denied" in results[2]["detail"]
    store = ScanStore(StoreConfig(store_dir, database_url=database_url))
    assert bag_folders(store_dir) == ["a", "b"]
    assert [b.request_id for b in store.recent_bags().bags] == ["b", "a"] and store.usage().bags == 2
    assert store.view("a", 0).high.shape == (40, 56)  # the bag that could not be evicted is whole
    store.close()


def test_a_full_disk_is_a_reason_and_leaves_no_partial_files(tmp_path, database_url):
    """RLIMIT_FSIZE: the write of a file past 6 MiB fails with EFBIG after writing 6 MiB of it."""
    store_dir = tmp_path / "store"
    steps = [
        {"put": {"request_id": "small", "shape": [8, 8]}},
        {"rlimit_fsize": 6 * 1024 * 1024},
        {"put": {"request_id": "big", "shape": [2048, 2048]}},  # 8 MiB per image
        {"put": {"request_id": "small2", "shape": [8, 8], "minutes": 1}},
        {"report": 1},
    ]
    spec = {"store_dir": str(store_dir), "database_url": database_url, "steps": steps}
    *puts, report = child.results(child.forked(spec))[1:]
    assert [(r["put"], r["stored"], r["reason"]) for r in puts] == [
        ("small", True, None), ("big", False, "disk_full"), ("small2", True, None),
    ]  # fmt: skip
    assert report["folders"] == ["small", "small2"] and report["index"] == ["small", "small2"]
    assert report["usage"][0] == 2  # the failed bag's reservation was dropped


def test_enospc_on_a_tiny_filesystem(tmp_path):
    """The store folder on a 1 MiB tmpfs in the child's own mount namespace (unshare); the index (SQLite)
    beside it, as this is about the bags' files: the full-disk test above runs on both backends."""
    unshare = shutil.which("unshare")
    probe = [unshare, "--user", "--map-root-user", "--mount", "true"] if unshare else None
    if probe is None or subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("needs unshare with user and mount namespaces to mount a tiny tmpfs")
    store_dir = tmp_path / "tiny"
    store_dir.mkdir()
    database_url = f"sqlite:///{tmp_path / 'index.sqlite3'}"
    steps = [{"put_many": {"prefix": "b", "n": 8, "shape": [200, 200]}}, {"report": 1}]  # 160 KB a bag
    spec = {"store_dir": str(store_dir), "database_url": database_url, "steps": steps}
    mount = f'mount -t tmpfs -o size=1m,mode=0700 tmpfs {store_dir} && exec "$@"'
    prefix = (unshare, "--user", "--map-root-user", "--mount", "sh", "-c", mount, "sh")
    *puts, report = child_results(run_child(spec, prefix))[1:]
    stored = [r["put"] for r in puts if r["stored"]]
    reasons = [r["reason"] for r in puts if not r["stored"]]
    assert 3 <= len(stored) <= 6 and reasons == ["disk_full"] * (8 - len(stored)), puts
    assert all("No space left" in r["detail"] for r in puts if not r["stored"])
    assert report["folders"] == stored and report["index"] == stored and report["usage"][0] == len(stored)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _all_queries_unavailable(store: ScanStore) -> None:
    import datetime

    t = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    calls = [
        lambda: store.recent_bags(), lambda: store.get_bag("a"), lambda: store.view("a", 0),
        lambda: store.shift_summary(t, t + datetime.timedelta(hours=1)), lambda: store.usage(),
        lambda: store.set_detection_verdict("a", 0, 0, "confirm", "r"), lambda: store.prune(),
        lambda: store.add_missed_object("a", 0, (0, 0, 1, 1), "knife", "r"), lambda: store.purge(),
    ]  # fmt: skip
    for call in calls:
        with pytest.raises(StoreUnavailable, match="database is unavailable"):
            call()


def test_a_database_that_cannot_be_reached_degrades(tmp_path):
    url = f"postgresql://xscreen:secret-pw@127.0.0.1:{_closed_port()}/store"
    store = ScanStore(StoreConfig(tmp_path / "store", database_url=url, retry_s=0))  # no raise at start
    assert not store.ready
    result = store.put_bag(bag("a"))
    assert (result.stored, result.reason) == (False, "database") and "secret-pw" not in result.detail
    assert bag_folders(tmp_path / "store") == []
    _all_queries_unavailable(store)
    store.close()


def test_a_database_lost_and_back(tmp_path, postgres_url, postgres_database):
    """PostgreSQL stops letting the store's role in and cuts its connections; then lets it in again."""
    admin, role = postgres_database, sa.engine.make_url(postgres_url).username
    store = ScanStore(StoreConfig(tmp_path / "store", database_url=postgres_url, retry_s=0))
    assert store.put_bag(bag("a")).stored
    with admin.connect() as conn:  # the role may no longer log in; its connections are cut
        conn.execute(sa.text(f'ALTER ROLE "{role}" NOLOGIN'))
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
                     {"r": role})  # fmt: skip
    result = store.put_bag(bag("b", minutes=1))
    assert (result.stored, result.reason) == (False, "database"), result.detail
    assert bag_folders(store.config.store_dir) == ["a"]
    _all_queries_unavailable(store)
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER ROLE "{role}" LOGIN'))
    assert store.put_bag(bag("c", minutes=2)).stored
    assert [b.request_id for b in store.recent_bags().bags] == ["c", "a"]
    assert bag_folders(store.config.store_dir) == ["a", "c"]
    store.close()
