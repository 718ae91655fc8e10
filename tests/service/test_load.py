"""Bounded concurrent load on a real server with a small queue: only 200/503, bounded queue, exact metrics."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.support.service_fixtures import (
    ServiceProcess,
    metric_value,
    synthetic_scans,
)
from xscreen import client

pytestmark = pytest.mark.timeout(600)

QUEUE_SIZE = 4
REQUESTS = 200
THREADS = 16


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("load")
    srv = ServiceProcess(
        tmp / "serve.log",
        weights=demo.weights,
        max_batch_size=2,
        max_queue_delay_ms=20,
        queue_size=QUEUE_SIZE,
        request_timeout_s=120,
        device="cpu",
    ).start()
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


def test_concurrent_load_is_answered_200_or_503_and_counted(server):
    scan = synthetic_scans([7], 128)[0]
    high, low = scan.png()
    before = requests.get(server.url + "/metrics").text
    depths: list[float] = []
    stop = threading.Event()

    def watch_queue():
        while not stop.is_set():
            depths.append(metric_value(requests.get(server.url + "/metrics").text, "xscreen_queue_depth"))
            time.sleep(0.02)

    xs = client.Client(server.url, timeout=180)  # shared: each thread keeps its own connection

    def one(i: int):
        time.sleep(0.01 * (i % THREADS))  # stagger a little so accepted and refused scans interleave
        try:
            return 200, None, xs.detect(high, low, scan_id=f"load-{i}")
        except client.ApiError as exc:
            return exc.status, exc.retry_after, exc

    watcher = threading.Thread(target=watch_queue, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(one, range(REQUESTS)))
    stop.set()
    watcher.join()
    xs.close()
    after = requests.get(server.url + "/metrics").text

    statuses = [s for s, _, _ in results]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    n200, n503 = statuses.count(200), statuses.count(503)
    assert n200 > 0 and n503 > 0, (n200, n503)
    for status, retry, answer in results:
        if status == 503:
            assert answer.code == "queue_full" and retry >= 1
        else:
            assert answer.scan_id.startswith("load-") and 1 <= answer.batch_size <= 2
    assert depths and max(depths) <= QUEUE_SIZE
    assert metric_value(after, "xscreen_queue_capacity") == QUEUE_SIZE

    def delta(name, **labels):
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("xscreen_http_requests_total", route="/detect", method="POST", status="200") == n200
    assert delta("xscreen_http_requests_total", route="/detect", method="POST", status="503") == n503
    assert delta("xscreen_http_request_duration_seconds_count", route="/detect") == REQUESTS
    assert delta("xscreen_rejected_requests_total", reason="queue_full") == n503
    assert delta("xscreen_batch_size_sum") == n200  # every accepted scan went through exactly one batch
    assert delta("xscreen_queue_wait_seconds_count") == n200
    assert metric_value(after, "xscreen_queue_depth") == 0
    assert metric_value(after, "xscreen_in_flight_requests") == 1  # the /metrics request itself
    # batching happened: fewer batches than scans
    assert delta("xscreen_batch_size_count") < n200 or n200 == 1
    assert np.isfinite(delta("xscreen_inference_stage_seconds_sum", stage="backbone_fpn"))
