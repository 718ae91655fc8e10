"""``xscreen.client``'s own mechanics, without the model: a light import, the request it builds, its errors,
and its kept-alive connections.

The detection answers themselves (single views, bags, TDRs, the API's error codes) are checked against the
real service in tests/service/test_bags.py. Here a small stdlib HTTP server stands in for a proxy or a
broken peer where the real service cannot be made to misbehave: a 200 that is not the contract's, an error
page that is not the API's JSON, a kept-alive connection closed by the server between two calls.
"""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.service_fixtures import free_port
from xscreen import client
from xscreen.inference.response import BagResponse, DetectResponse

ANSWER = {
    "scan_id": "s-1",
    "model": {"name": "m", "version": "1", "sha256": "0" * 64, "backend": "torch", "device": "cpu"},
    "image": {"width": 4, "height": 3},
    "score_threshold": 0.5,
    "alarm": True,
    "detections": [
        {
            "class_id": 3,
            "class_name": "knife",
            "group": "cutter",
            "score": 0.9,
            "box": {"x1": 0.0, "y1": 0.0, "x2": 2.0, "y2": 2.0},
        }
    ],
    "batch_size": 1,
    "timings": {"total": 0.01},
}


class Peer:
    """A stdlib HTTP/1.1 server that answers every POST with ``status``/``body`` and records each request's
    form parts and the connection it came on; ``close_after`` closes the connection after answering
    (without saying so, as a server whose keep-alive timeout passed does)."""

    def __init__(self, status: int = 200, body: bytes = b"", close_after: bool = False, headers=None):
        self.status, self.body, self.close_after = status, body, close_after
        self.headers = headers or {"Content-Type": "application/json"}
        self.requests: list[tuple[int, list[tuple[str, str | None, bytes]], dict]] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                data = self.rfile.read(int(self.headers["Content-Length"]))
                message = BytesParser(policy=HTTP).parsebytes(
                    b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + data
                )
                parts = [
                    (p.get_param("name", header="content-disposition"), p.get_filename(), p.get_content())
                    for p in message.iter_parts()
                ]
                peer.requests.append((self.client_address[1], parts, dict(self.headers)))
                self.send_response(peer.status)
                for k, v in peer.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(peer.body)))
                self.end_headers()
                self.wfile.write(peer.body)
                self.close_connection = peer.close_after

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> Peer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_importing_the_client_loads_neither_the_service_nor_the_model():
    code = (
        "import sys, xscreen.client\n"
        "heavy = ('torch', 'fastapi', 'numpy', 'pydantic', 'xscreen.service', 'xscreen.model')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ast.literal_eval(proc.stdout.strip()) == []


def test_a_bag_is_sent_as_paired_parts_in_order_and_answers_the_services_model():
    with Peer(body=json.dumps(ANSWER).encode()) as peer:
        xs = client.Client(peer.url, api_key="k-1")
        answer = xs.detect(b"H", b"L", scan_id="s-1", score_threshold=0.5)
        bag = xs.detect_bag([(b"H0", b"L0")])  # one view: the bag shape all the same
        xs.close()
    assert isinstance(answer, DetectResponse) and answer.alarm and answer.detections[0].box.x2 == 2.0
    assert (answer.width, answer.height) == (4, 3)
    _, parts, headers = peer.requests[0]
    assert parts == [
        ("high", "high.bin", b"H"),
        ("low", "low.bin", b"L"),
        ("scan_id", None, "s-1"),
        ("score_threshold", None, "0.5"),
    ]
    assert headers["Authorization"] == "Bearer k-1" and headers["Accept"] == "application/json"
    assert isinstance(bag, BagResponse) and bag.alarm and [v.view for v in bag.views] == [0]
    assert bag.views[0].source.part == 0 and bag.views[0].detections == answer.detections


def test_several_views_go_high_low_per_view(tmp_path):
    (tmp_path / "top_high.png").write_bytes(b"TH")
    views = [(tmp_path / "top_high.png", b"TL"), (b"SH", b"SL")]
    bag_answer = {
        **{k: v for k, v in ANSWER.items() if k not in ("image", "detections")},
        "views": [
            {"view": i, "source": {"part": i}, "image": ANSWER["image"], "alarm": False, "detections": []}
            for i in range(2)
        ],
    }
    with Peer(body=json.dumps(bag_answer).encode()) as peer, client.Client(peer.url) as xs:
        bag = xs.detect_bag(views)
        form = client.scan_form(views, width=2, height=1)
        again = xs.detect_form(form)
    assert isinstance(bag, BagResponse) and again == bag and [v.view for v in bag.views] == [0, 1]
    _, parts, headers = peer.requests[0]
    assert [(n, f, v) for n, f, v in parts] == [
        ("high", "top_high.png", b"TH"),
        ("low", "low0.bin", b"TL"),
        ("high", "high1.bin", b"SH"),
        ("low", "low1.bin", b"SL"),
    ]
    assert "Authorization" not in headers
    assert [p[0] for p in peer.requests[1][1]][-2:] == ["width", "height"] and form.views == 2


def test_kept_alive_connection_is_reused_and_reopened_when_the_server_closed_it():
    body = json.dumps(ANSWER).encode()
    with Peer(body=body) as peer, client.Client(peer.url) as xs:
        for _ in range(3):
            xs.detect(b"H", b"L")
    assert len({port for port, _, _ in peer.requests}) == 1  # one connection for three calls
    with Peer(body=body, close_after=True) as peer, client.Client(peer.url) as xs:
        for _ in range(3):
            xs.detect(b"H", b"L")
    assert len({port for port, _, _ in peer.requests}) == 3 and len(peer.requests) == 3  # each sent once


def test_async_calls_are_in_flight_together():
    async def main(url: str) -> list:
        async with client.AsyncClient(url) as xs:
            singles = [xs.detect(b"H", b"L", scan_id=f"a-{i}") for i in range(3)]
            return await asyncio.gather(*singles, xs.detect_bag([(b"H", b"L")], scan_id="a-3"))

    with Peer(body=json.dumps(ANSWER).encode()) as peer:
        answers = asyncio.run(main(peer.url))
    assert [type(a) for a in answers] == [DetectResponse] * 3 + [BagResponse]
    sent = sorted(v for _, parts, _ in peer.requests for name, _, v in parts if name == "scan_id")
    assert sent == ["a-0", "a-1", "a-2", "a-3"]


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (200, b'{"scan_id": "x"}', None, (client.TransportError, "is not a DetectResponse")),
        (200, b"<html>", None, (client.TransportError, "is not a DetectResponse")),
        (200, json.dumps(ANSWER).encode(), None, None),
        (502, b"<html>bad gateway</html>", {"Retry-After": "7"}, (client.ApiError, "http_error")),
        (
            503,
            b'{"error": "queue_full", "detail": "busy"}',
            {"Retry-After": "3"},
            (client.ApiError, "queue_full"),
        ),
    ],
    ids=["not_the_model", "not_json", "ok", "proxy_page", "api_error"],
)
def test_answers_that_are_not_the_contracts(status, body, headers, expected):
    with Peer(status, body, headers=headers) as peer, client.Client(peer.url) as xs:
        if expected is None:
            assert xs.detect(b"H", b"L").scan_id == "s-1"
            return
        error, text = expected
        with pytest.raises(error, match=text) as caught:
            xs.detect(b"H", b"L")
    if error is client.ApiError:
        assert caught.value.status == status and caught.value.retry_after == float(headers["Retry-After"])


def test_tdr_answers_are_bytes_and_a_json_answer_is_refused():
    with Peer(body=b"DICM-bytes", headers={"Content-Type": "application/dicom"}) as peer:
        with client.Client(peer.url) as xs:
            assert xs.detect_tdr([(b"H", b"L"), (b"H", b"L")]) == b"DICM-bytes"
        assert peer.requests[0][2]["Accept"] == "application/dicom"
    with (
        Peer(body=json.dumps(ANSWER).encode()) as peer,
        client.Client(peer.url) as xs,
        pytest.raises(client.TransportError, match="not a DICOS TDR"),
    ):
        xs.detect_tdr([(b"H", b"L")])


def test_render_answers_png_bytes():
    png = {"Content-Type": "image/png"}
    with Peer(body=b"PNG-bytes", headers=png) as peer, client.Client(peer.url) as xs:
        assert xs.render(b"H", b"L", scan_id="r-1") == b"PNG-bytes"
    assert peer.requests[0][2]["Accept"] == "image/png"
    assert [p[0] for p in peer.requests[0][1]] == ["high", "low", "scan_id"]


def test_input_and_transport_errors(tmp_path):
    xs = client.Client(f"http://127.0.0.1:{free_port()}", timeout=5)
    with pytest.raises(client.InputError, match="missing.png"):
        xs.detect(tmp_path / "missing.png", b"L")
    with pytest.raises(client.InputError, match=r"view 1 low image .*nope.png"):
        xs.detect_bag([(b"H", b"L"), (b"H", tmp_path / "nope.png")])
    with pytest.raises(client.InputError, match="at least one view"):
        xs.detect_bag([])
    with pytest.raises(client.InputError, match=r"view 0 is not a \(high, low\) pair"):
        xs.detect_bag(("high.png", "low.png"))  # a pair, not a list of pairs
    with pytest.raises(client.TransportError, match="Connection refused"):
        xs.detect(b"H", b"L")
    with pytest.raises(ValueError, match="give http://host:port"):
        client.Client("xscreen:8000")
