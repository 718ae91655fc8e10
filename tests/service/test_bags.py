"""Bags of several views over HTTP on a real uvicorn server: one answer with an alarm decision and each
view's detections equal to that view sent alone; one TDR referencing every view's DX; bad bags -> 4xx.

Normal requests go through ``xscreen.client`` (what an integrator uses); the raw ``post`` is for what the
client never sends: parts out of order, unpaired or declared application/dicom, a bag to /render."""

from __future__ import annotations

import asyncio
import json

import pytest
import requests

from tests.support.dicos_cases import assert_conformant
from tests.support.service_fixtures import (
    API_KEY,
    InThreadServer,
    bundled_weights,
    metric_value,
    synthetic_scans,
)
from xscreen import client
from xscreen.inference.response import BagResponse, ViewSource
from xscreen.scans.dicos import dx, files, tdr

pytestmark = pytest.mark.timeout(600)
THRESHOLD = 0.05  # low, so that the bundled demo model finds something in most views


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    with InThreadServer(
        weights=bundled_weights(),
        device="cpu",
        warmup=False,
        score_threshold=THRESHOLD,
        max_pixels=1_000_000,
        max_views=3,
        api_keys=API_KEY,
        audit_path=audit,
    ) as srv:
        srv.audit = audit
        yield srv


@pytest.fixture(scope="module")
def views():
    """Two views of one bag: two different synthetic scans (a top and a side view, say)."""
    return synthetic_scans([3, 4], 128)


def post(url, parts: list[tuple[str, bytes, str]], *, path="/detect", accept=None, **fields):
    headers = {"Authorization": f"Bearer {API_KEY}", **({"Accept": accept} if accept else {})}
    files_ = [(name, (f"{name}{i}.bin", data, ctype)) for i, (name, data, ctype) in enumerate(parts)]
    return requests.post(url + path, files=files_, data=fields, headers=headers, timeout=120)


def assert_same_detections(got: list[dict], expected: list[dict]) -> None:
    """The same detections, class by class and box by box, up to the float noise of running a scan in a
    batch of two rather than alone (scores differ in the sixth decimal)."""
    assert [d["class_name"] for d in got] == [d["class_name"] for d in expected]
    for g, e in zip(got, expected, strict=True):
        assert g["score"] == pytest.approx(e["score"], abs=1e-4)
        assert list(g["box"].values()) == pytest.approx(list(e["box"].values()), abs=0.05)


def png_parts(scans) -> list[tuple[str, bytes, str]]:
    parts = []
    for scan in scans:
        high, low = scan.png()
        parts += [("high", high, "image/png"), ("low", low, "image/png")]
    return parts


@pytest.fixture(scope="module")
def xs(server):
    with client.Client(server.url, api_key=API_KEY, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def alone(xs, views):
    """Each view's answer sent as a single-view request (as JSON dicts)."""
    return [xs.detect(*scan.png()).model_dump(mode="json") for scan in views]


def test_single_view_answer_keeps_its_shape_with_an_alarm(server, views):
    r = post(server.url, png_parts(views[:1]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "scan_id", "model", "image", "score_threshold", "alarm", "detections", "batch_size", "timings"
    }  # fmt: skip
    assert body["alarm"] == any(d["score"] >= body["score_threshold"] for d in body["detections"])
    assert "view" not in json.dumps(body)


def assert_bag_equals_alone(bag: BagResponse, alone: list[dict]) -> None:
    """Each view of the bag answers what that view answers alone; the bag alarms when any view does."""
    assert [v.view for v in bag.views] == list(range(len(alone)))
    for view, single in zip(bag.views, alone, strict=True):
        assert view.image.model_dump() == single["image"]
        assert_same_detections([d.model_dump() for d in view.detections], single["detections"])
        assert view.alarm == single["alarm"]
    assert bag.alarm == any(a["alarm"] for a in alone)


def test_two_view_bag_answers_each_view_as_alone(xs, views, alone):
    # the client sends the two views' parts interleaved in order: high0, low0, high1, low1
    bag = xs.detect_bag([s.png() for s in views], scan_id="bag-1")
    assert bag.scan_id == "bag-1" and bag.score_threshold == THRESHOLD
    assert [v.source for v in bag.views] == [ViewSource(part=0), ViewSource(part=1)]  # not DICOS: no UIDs
    assert_bag_equals_alone(bag, alone)
    assert bag.batch_size >= 2  # the bag's views went through the model in one batch
    assert {"decode", "convert", "inference", "total"} <= set(bag.timings)


def test_async_bag_and_the_view_limit_through_the_client(server, views, alone):
    async def send() -> BagResponse:
        async with client.AsyncClient(server.url, api_key=API_KEY, timeout=120) as xs:
            return await xs.detect_bag([s.png() for s in views])

    assert_bag_equals_alone(asyncio.run(send()), alone)
    with client.Client(server.url, api_key=API_KEY) as xs, pytest.raises(client.ApiError) as caught:
        xs.detect_bag([views[0].png()] * 4)  # max_views is 3
    assert (caught.value.status, caught.value.code) == (422, "too_many_views")


def test_bag_parts_in_any_order_pair_by_position(server, views, alone):
    """All highs first, then all lows: the i-th high and the i-th low still make view i."""
    parts = png_parts(views)
    r = post(server.url, [p for p in parts if p[0] == "high"] + [p for p in parts if p[0] == "low"])
    assert r.status_code == 200, r.text
    for view, single in zip(r.json()["views"], alone, strict=True):
        assert_same_detections(view["detections"], single["detections"])


def test_dx_bag_answers_one_tdr_referencing_every_view(xs, views, alone):
    study = files.new_uid()
    pairs = [dx.write_dx_pair(s.high, s.low, study_uid=study) for s in views]
    bag = xs.detect_bag(pairs)
    expected = [dx.read_dx_pair(h, lo) for h, lo in pairs]
    assert [v.source.series_uid for v in bag.views] == [p.high.series_uid for p in expected]
    assert [v.source.low_instance_uid for v in bag.views] == [p.low.sop_instance_uid for p in expected]

    answer = xs.detect_tdr(pairs)
    assert_conformant(answer)
    report = tdr.read_tdr(answer)
    assert report.study_uid == study and report.alarm == ("ALARM" if bag.alarm else "CLEAR")
    assert report.references == [ref for p in expected for ref in p.references()]  # all four DX
    by_view = [[o for o in report.objects if o.view == i] for i in range(2)]
    for objects, single in zip(by_view, alone, strict=True):
        assert [o.class_name for o in objects] == [d["class_name"] for d in single["detections"]]
        for o, d in zip(objects, single["detections"], strict=True):
            assert o.box == pytest.approx(tuple(d["box"].values()), abs=0.05)
            assert o.score == pytest.approx(d["score"], abs=1e-4)


def test_dx_views_of_two_studies_are_refused(server, views):
    pairs = [dx.write_dx_pair(s.high, s.low) for s in views]  # each its own study
    parts = [(n, d, "application/dicom") for h, lo in pairs for n, d in (("high", h), ("low", lo))]
    r = post(server.url, parts)
    assert r.status_code == 400 and r.json()["error"] == "invalid_scan"
    assert "2 studies" in r.json()["detail"]


def test_a_bad_view_is_named(xs, views):
    high, _ = views[1].png()
    with pytest.raises(client.ApiError) as caught:
        xs.detect_bag([views[0].png(), (high, b"not an image")])
    assert caught.value.status in (400, 415) and caught.value.detail.startswith("view 1: ")


@pytest.mark.parametrize(
    ("keep", "views_n", "error"),
    [(3, 2, "invalid_request"), (8, 4, "too_many_views")],
    ids=["unpaired", "over_max_views"],
)
def test_bad_bags_are_refused_before_decoding(server, views, keep, views_n, error):
    parts = (png_parts(views) * 2)[:keep]
    r = post(server.url, parts)
    assert r.status_code == 422 and r.json()["error"] == error, r.text


def test_render_draws_one_view_only(server, views):
    r = post(server.url, png_parts(views), path="/render")
    assert r.status_code == 422 and r.json()["error"] == "one_view_only"


def test_bags_are_counted_and_audited_once(server, xs, views):
    before = requests.get(server.url + "/metrics", timeout=10).text
    body = xs.detect_bag([s.png() for s in views], scan_id="bag-audited").model_dump(mode="json")
    after = requests.get(server.url + "/metrics", timeout=10).text
    alarm = "true" if body["alarm"] else "false"
    for name, labels, step in [
        ("xscreen_bags_total", {"source": "http", "alarm": alarm}, 1),
        ("xscreen_bag_views_total", {"source": "http"}, 2),
    ]:
        assert metric_value(after, name, **labels) - metric_value(before, name, **labels) == step
    found = sum(len(v["detections"]) for v in body["views"])
    assert (
        metric_value(after, "xscreen_detections_total") - metric_value(before, "xscreen_detections_total")
        == found
    )
    records = [json.loads(line) for line in server.audit.read_text().splitlines()]
    mine = [rec for rec in records if rec["scan_id"] == "bag-audited"]
    assert len(mine) == 1 and mine[0]["alarm"] == body["alarm"]
    assert [v["detections"] for v in mine[0]["views"]] == [
        [{**d, "box": list(d["box"].values())} for d in v["detections"]] for v in body["views"]
    ]
