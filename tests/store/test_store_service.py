"""The scan store fed by a real service: bags answered over HTTP appear in the store (within 2 s) keyed by
their audit records' request ids, with pixel-exact views; a store that refuses a bag never fails its
answer; two replicas sharing one PostgreSQL and one folder see each other's bags; off means nothing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.service_fixtures import API_KEY, InThreadServer, metric_value
from xscreen.service.auth import key_id
from xscreen.store import StoreConfig, open_store

pytestmark = pytest.mark.timeout(300)


def post(url: str, scans, *, request_id: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {API_KEY}", **({"X-Request-ID": request_id} if request_id else {})}
    parts = []
    for i, scan in enumerate(scans):
        high, low = scan.png()
        parts += [("high", (f"h{i}.png", high, "image/png")), ("low", (f"l{i}.png", low, "image/png"))]
    return requests.post(url + "/detect", files=parts, headers=headers, timeout=120)


def wait_for_bags(store, count: int, timeout: float = 2.0):
    """The store's newest bags once it lists ``count`` (the service writes them after answering)."""
    end = time.monotonic() + timeout
    while True:
        bags = store.recent_bags(limit=50).bags
        if len(bags) >= count or time.monotonic() > end:
            return bags
        time.sleep(0.05)


def serve(demo, tmp: Path, **settings) -> InThreadServer:
    return InThreadServer(
        weights=demo.weights,
        device="cpu",
        warmup=False,
        api_keys=API_KEY,
        score_threshold=demo.score_threshold,
        audit_path=tmp / "audit.jsonl",
        **settings,
    )


def test_answered_bags_appear_in_the_store_within_two_seconds(demo, tmp_path):
    store_dir = tmp_path / "store"
    with serve(demo, tmp_path, store_dir=store_dir) as srv:
        one = post(srv.url, demo.scans[:1], request_id="lane3-req-1")
        two = post(srv.url, demo.scans[:2])
        assert one.status_code == two.status_code == 200
        t_answered = time.monotonic()
        store = open_store(StoreConfig(store_dir))
        try:
            bags = wait_for_bags(store, 2)
            assert time.monotonic() - t_answered < 2.0 and len(bags) == 2
            records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
            assert {b.request_id for b in bags} == {r["request_id"] for r in records}
            assert "lane3-req-1" in {b.request_id for b in bags}
            bag_two = store.get_bag(two.headers["X-Request-ID"])
            assert bag_two.answer == two.json() and bag_two.summary.alarm == two.json()["alarm"]
            assert bag_two.summary.source == f"/detect key {key_id(API_KEY)}"
            for i, scan in enumerate(demo.scans[:2]):
                view = store.view(two.headers["X-Request-ID"], i)
                assert view.high.dtype == np.uint16 and np.array_equal(view.high, scan.high)
                assert np.array_equal(view.low, scan.low)
            metrics = requests.get(srv.url + "/metrics", timeout=10).text
            assert metric_value(metrics, "xscreen_store_bags") == 2
        finally:
            store.close()
        files = [p for p in store_dir.rglob("*") if p.is_file()]
        assert files and all(p.stat().st_mode & 0o077 == 0 for p in files)  # 0600: reviewers' data


def test_a_bag_the_store_refuses_is_answered_and_counted(demo, tmp_path):
    with serve(demo, tmp_path, store_dir=tmp_path / "store", store_max_bytes=4096) as srv:
        r = post(srv.url, demo.scans[:1])
        assert r.status_code == 200 and r.json()["detections"]
        end = time.monotonic() + 2
        while True:
            metrics = requests.get(srv.url + "/metrics", timeout=10).text
            if (
                metric_value(metrics, "xscreen_store_failures_total", reason="too_large")
                or time.monotonic() > end
            ):
                break
            time.sleep(0.05)
        assert metric_value(metrics, "xscreen_store_failures_total", reason="too_large") == 1
        assert post(srv.url, demo.scans[:1]).status_code == 200  # serves on


def test_store_off_writes_nothing(demo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with serve(demo, tmp_path) as srv:
        assert srv.settings.store_dir is None
        assert post(srv.url, demo.scans[:1]).status_code == 200
        metrics = requests.get(srv.url + "/metrics", timeout=10).text
    assert sorted(os.listdir(tmp_path)) == ["audit.jsonl"]
    assert metric_value(metrics, "xscreen_store_bags") == 0


def test_two_replicas_on_one_postgresql_see_each_others_bags(demo, tmp_path, postgres_url):
    """Two services sharing one PostgreSQL and one folder (the Kubernetes replicas): one index of every
    replica's bags, and one console: a reviewer signed in on one replica sees and opens the other's bags,
    with the same session (sessions live in the shared database)."""
    from tests.support.console import REVIEWER_KEY, sign_in

    shared = tmp_path / "shared"  # the ReadWriteMany volume of deploy/k8s/console
    settings = {"store_dir": shared, "store_database_url": postgres_url, "reviewer_keys": REVIEWER_KEY}
    with serve(demo, tmp_path / "a", **settings) as a, serve(demo, tmp_path / "b", **settings) as b:
        ids = {}
        for srv in (a, b, a, b):
            r = post(srv.url, demo.scans[:1])
            assert r.status_code == 200
            ids[r.headers["X-Request-ID"]] = srv
        store = open_store(StoreConfig(shared, database_url=postgres_url))
        try:
            bags = wait_for_bags(store, 4)
            assert {x.request_id for x in bags} == set(ids)  # each replica's two, in one index
            assert len({store.view(i, 0).high.tobytes() for i in ids}) == 1  # the same scan, four times
        finally:
            store.close()
        session = sign_in(a.url, REVIEWER_KEY)
        for replica in (a, b):  # the session made on a works on b
            listing = session.get(replica.url + "/console", timeout=30)
            assert listing.status_code == 200 and all(i in listing.text for i in ids)
            for request_id, answered_by in ids.items():
                if answered_by is not replica:  # the other replica's bag, opened here
                    page = session.get(f"{replica.url}/console/bags/{request_id}", timeout=30)
                    assert page.status_code == 200 and request_id in page.text
