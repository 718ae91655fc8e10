"""Reviewing on a real server: bags sent through /detect reach the live list's rows, verdicts posted
through the console's endpoints land in the store and in the audit trail with the reviewer's key id, the
shift summary and the review metrics count them; the store off or unreachable is said, detection goes on."""

from __future__ import annotations

import json
import os

import pytest
import requests

from tests.support.console import (
    OTHER_REVIEWER_KEY,
    REVIEWER_KEY,
    console_server,
    csrf_of,
    post_bag,
    sign_in,
    wait_stored,
)
from tests.support.service_fixtures import API_KEY, InThreadServer, metric_value
from xscreen.service.auth import key_id
from xscreen.service.console.figures import ks_statistic, ks_threshold
from xscreen.store import StoreConfig, open_store

pytestmark = pytest.mark.timeout(300)
JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def served(demo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console-review")
    with console_server(demo, tmp) as srv:
        yield srv, tmp


def test_new_bags_reach_the_rows_and_verdicts_land_in_store_audit_summary_and_metrics(served, demo):
    srv, tmp = served
    first, second = sign_in(srv.url), sign_in(srv.url, OTHER_REVIEWER_KEY)
    cursor = int(first.get(srv.url + "/console/rows?since=0", timeout=30).headers["x-console-cursor"])
    answers = [post_bag(srv.url, demo.scans[:1], request_id=f"rev-{i}").json() for i in range(2)]
    wait_stored(first, srv.url, "rev-1")
    rows = first.get(srv.url + f"/console/rows?since={cursor}", timeout=30)
    assert rows.text.count('class="bag-link"') == 2 and "rev-0" in rows.text and "rev-1" in rows.text
    assert int(rows.headers["x-console-cursor"]) == cursor + 2
    assert "ALARM" in rows.text and f"/detect key {key_id(API_KEY)}" in rows.text
    assert len(answers[0]["detections"]) >= 2, "the demo scan needs two detections for this test"
    url = srv.url + "/console/bags/rev-0"
    token_a, token_b = csrf_of(first, srv.url), csrf_of(second, srv.url)
    confirm = {"view": 0, "detection": 0, "verdict": "confirm", "csrf_token": token_a}
    false_alarm = {"view": 0, "detection": 1, "verdict": "false_alarm", "csrf_token": token_b}
    box = {"view": 0, "x1": 5, "y1": 6, "x2": 40.5, "y2": 50, "class_name": "scissors", "csrf_token": token_a}
    post = [
        first.post(url + "/verdicts", data=confirm, headers=JSON),
        second.post(url + "/verdicts", data=false_alarm, headers=JSON),
        first.post(url + "/missed", data=box, headers=JSON),
    ]
    assert [r.status_code for r in post] == [200, 200, 200], [r.text for r in post]
    # the form without a script: 303 back to the bag
    again = {**false_alarm, "csrf_token": token_a}
    r = first.post(url + "/verdicts", data=again, allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/bags/rev-0"
    bad = first.post(url + "/missed", data={**box, "x2": 4}, headers=JSON)
    assert bad.status_code == 422 and "x1 < x2" in bad.json()["detail"]
    store = open_store(StoreConfig(tmp / "store"))
    try:
        bag = store.get_bag("rev-0")
    finally:
        store.close()
    current = {(d.index, d.verdict.kind, d.verdict.reviewer) for d in bag.detections if d.verdict}
    assert current == {(0, "confirm", key_id(REVIEWER_KEY)), (1, "false_alarm", key_id(REVIEWER_KEY))}
    assert [(m.class_name, m.box) for m in bag.missed] == [("scissors", (5.0, 6.0, 40.5, 50.0))]
    records = [json.loads(x) for x in (tmp / "audit.jsonl").read_text().splitlines()]
    reviews = [x for x in records if x.get("event") == "review_verdict"]
    assert [(x["key_id"], x["verdict"]["kind"], x["request_id"]) for x in reviews] == [
        (key_id(REVIEWER_KEY), "confirm", "rev-0"), (key_id(OTHER_REVIEWER_KEY), "false_alarm", "rev-0"),
        (key_id(REVIEWER_KEY), "missed", "rev-0"), (key_id(REVIEWER_KEY), "false_alarm", "rev-0"),
    ]  # fmt: skip
    assert all(REVIEWER_KEY not in line for line in (tmp / "audit.jsonl").read_text().splitlines())
    page = first.get(srv.url + "/console/summary", timeout=30).text
    n_detections = sum(len(a["detections"]) for a in answers)
    alarms = sum(a["alarm"] for a in answers)
    assert '<td id="n-bags">2</td>' in page and f'<td id="n-alarms">{alarms}</td>' in page
    assert f'<td id="alarm-rate">{100 * alarms / 2:.1f} %</td>' in page
    assert '<td id="n-confirmed">1</td>' in page and '<td id="n-false">1</td>' in page
    assert '<td id="fa-ratio">50.0 %</td>' in page and '<td id="n-missed">1</td>' in page
    # the reference is these same first bags of the model: no drift (with 30 scores or more on each side)
    assert n_detections >= 30 and "No drift: KS D = 0.000" in page
    metrics = requests.get(srv.url + "/metrics", timeout=30).text
    knife = answers[0]["detections"][0]["class_name"]
    assert metric_value(metrics, "xscreen_review_verdicts_total", verdict="confirm", class_name=knife) == 1
    assert metric_value(metrics, "xscreen_review_verdicts_total", verdict="false_alarm") == 2
    assert (
        metric_value(metrics, "xscreen_review_verdicts_total", verdict="missed", class_name="scissors") == 1
    )
    assert metric_value(metrics, "xscreen_review_shift_alarm_rate") == alarms / 2
    assert metric_value(metrics, "xscreen_review_shift_false_alarm_ratio") == 0.5
    assert metric_value(metrics, "xscreen_review_score_drift") == 0
    assert metric_value(metrics, "xscreen_review_score_ks_statistic") == 0


def test_the_ks_drift_test():
    same = [i / 100 for i in range(100)]
    assert ks_statistic(same, same) == 0.0
    assert ks_statistic([0.1] * 40, [0.9] * 40) == 1.0
    assert ks_statistic([0.1, 0.2, 0.3, 0.4], [0.3, 0.4, 0.5, 0.6]) == 0.5
    assert ks_threshold(100, 100) == pytest.approx(1.628 * (200 / 10_000) ** 0.5)
    shifted = [min(1.0, s + 0.3) for s in same]
    assert ks_statistic(shifted, same) > ks_threshold(100, 100) > ks_statistic(same[::2], same)


def test_store_off_the_console_says_why_and_nothing_is_written(demo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with console_server(demo, tmp_path, store_dir=None) as srv:
        for path in ("/console", "/console/login"):
            r = requests.get(srv.url + path, timeout=30)
            assert r.status_code == 503 and "XSCREEN_STORE_DIR is unset" in r.text, path
        r = requests.post(srv.url + "/console/login", data={"key": REVIEWER_KEY}, timeout=30)
        assert r.status_code == 503 and "XSCREEN_STORE_DIR is unset" in r.text
        assert "set-cookie" not in r.headers
        post_bag(srv.url, demo.scans[:1])
    assert sorted(os.listdir(tmp_path)) == ["audit.jsonl"]


def test_store_database_unreachable_the_console_says_so_and_detection_goes_on(demo, tmp_path):
    closed = "postgresql://nobody@127.0.0.1:9/none"  # port 9: nothing listens
    with InThreadServer(
        weights=demo.weights, device="cpu", warmup=False, api_keys=API_KEY, reviewer_keys=REVIEWER_KEY,
        store_dir=tmp_path / "store", store_database_url=closed,
    ) as srv:  # fmt: skip
        r = requests.post(srv.url + "/console/login", data={"key": REVIEWER_KEY}, timeout=30)
        assert (
            r.status_code == 503 and "cannot be reached" in r.text and "Detection is not affected" in r.text
        )
        assert post_bag(srv.url, demo.scans[:1]).status_code == 200
