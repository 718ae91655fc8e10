"""The request guard on a real ``xscreen serve``: keys and body limits before any body is read (/admin/*
too), slow and stalled bodies cut with 408, slow request heads cut, memory bounded meanwhile; keys that
could never match (non-ASCII, whitespace, control characters) refused at start."""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support.hostile import PeakRss, proc_status_kb
from tests.support.service_fixtures import API_KEY, XSCREEN, ServiceProcess, bundled_weights

# slow: slow and stalled clients against a real server and Caddy
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

ADMIN_KEY = "admin-key-0123456789abcdef"
MiB = 1024 * 1024
# Short timeouts keep the suite fast; the defaults (10 s idle, 30 s upload, 10 s head) are checked below.
IDLE_S, UPLOAD_S, HEAD_S = 2.0, 6.0, 3.0
SLACK_S = 3.0  # scheduling on a shared 2-core machine


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guard")
    srv = ServiceProcess(
        tmp / "serve.log",
        weights=bundled_weights(),
        device="cpu",
        warmup="false",
        api_keys=API_KEY,
        admin_keys=ADMIN_KEY,
        body_idle_timeout_s=IDLE_S,
        upload_timeout_s=UPLOAD_S,
        header_timeout_s=HEAD_S,
    ).start()
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: dict
    seconds: float  # from the first byte sent to the whole answer read
    sent: int  # body bytes the client managed to send before the answer
    closed: bool  # the server closed the connection after the answer


def exchange(
    port: int, head: str, body: Iterable[bytes] = (), pause: float = 0.0, timeout: float = 60.0
) -> Answer:
    """Send ``head`` then ``body`` chunk by chunk over a raw socket, ``pause`` seconds apart, stopping as
    soon as an answer arrives (the test never holds the body: it is generated); then wait for the answer
    and read it, and whether the server closes the connection after it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    t0 = time.monotonic()
    sent = 0
    try:
        sock.sendall(head.encode("latin-1"))
        for chunk in body:
            if select.select([sock], [], [], pause)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        response = http.client.HTTPResponse(sock)
        response.begin()
        payload = response.read()
        seconds = time.monotonic() - t0
        try:
            closed = sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            closed = True
        return Answer(
            response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(payload),
            seconds, sent, closed,
        )  # fmt: skip
    finally:
        sock.close()


def post_head(path: str, length: int | None, key: str | None, ctype: str = "application/json") -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {ctype}"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    return "\r\n".join(lines) + "\r\n\r\n"


def zeros(total: int, chunk: int = MiB) -> Iterable[bytes]:
    block = b"0" * chunk
    for _ in range(total // chunk):
        yield block


def chunked(total: int, chunk: int = MiB) -> Iterable[bytes]:
    for block in zeros(total, chunk):
        yield b"%x\r\n" % len(block) + block + b"\r\n"
    yield b"0\r\n\r\n"


# ---------------------------------------------------------------------------------- keys before bodies
@pytest.mark.parametrize(
    "key, length, status, code",
    [
        (None, 300 * MiB, 401, "unauthorized"),  # the probe: 300 MB JSON, no key
        ("wrong-key-0123456789abcdef", 300 * MiB, 401, "unauthorized"),
        (API_KEY, 300 * MiB, 401, "unauthorized"),  # a scan key is no admin key
        (None, None, 401, "unauthorized"),  # chunked: no length to refuse, the key still comes first
        (ADMIN_KEY, 300 * MiB, 413, "payload_too_large"),  # declared: refused from the header
        (ADMIN_KEY, None, 413, "payload_too_large"),  # chunked: refused once past 64 KiB
    ],
)
def test_big_admin_body_is_refused_before_it_is_read(server, key, length, status, code):
    with PeakRss(server.proc.pid) as peak:
        body = zeros(300 * MiB) if length is not None else chunked(300 * MiB)
        a = exchange(server.port, post_head("/admin/model", length, key), body)
    assert (a.status, a.body["error"]) == (status, code), a.body
    assert a.seconds < 3.0 and a.sent < 64 * MiB, (a.seconds, a.sent)
    assert peak.growth_mb <= 100, peak.growth_mb
    assert a.closed and a.headers["connection"] == "close"  # the unread body is not drained
    if status == 401:
        assert a.headers["www-authenticate"].startswith("Bearer")
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200


def test_admin_routes_without_admin_keys_answer_403_before_the_body(tmp_path):
    srv = ServiceProcess(tmp_path / "serve.log", weights=bundled_weights(), device="cpu", warmup="false")
    srv.start().wait_ready()
    try:
        with PeakRss(srv.proc.pid) as peak:
            a = exchange(srv.port, post_head("/admin/model", 300 * MiB, ADMIN_KEY), zeros(300 * MiB))
        assert (a.status, a.body["error"]) == (403, "admin_disabled") and a.seconds < 3.0
        assert peak.growth_mb <= 100, peak.growth_mb
        # any path under /admin/ is checked before routing: no body is read for a 404 either
        a = exchange(srv.port, post_head("/admin/other", 300 * MiB, None), zeros(300 * MiB))
        assert (a.status, a.body["error"]) == (403, "admin_disabled")
    finally:
        srv.stop()


def test_every_other_body_is_capped_small(server):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    for path, headers in (("/no-such-page", {}), ("/healthz", {}), ("/model", auth)):
        r = requests.post(server.url + path, data=b"x" * (65 * 1024), headers=headers, timeout=10)
        assert (r.status_code, r.json()["error"]) == (413, "payload_too_large"), (path, r.text)
        assert "65536 bytes" in r.json()["detail"]
    # under the limit the route answers as before (405: /model takes no POST)
    r = requests.post(server.url + "/model", data=b"x" * 100, headers=auth, timeout=10)
    assert r.status_code == 405


def test_guard_table_covers_every_route_that_declares_a_key(server):
    """The OpenAPI document's security declarations are the routes' dependencies: the guard's table must
    check the same key list on each of those paths (a missing path would answer 500, fail closed)."""
    from xscreen.service.app import guard_policy
    from xscreen.service.settings import Settings

    doc = requests.get(server.url + "/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    policy = guard_policy(Settings(weights=bundled_weights()))
    want = {"ApiKey": "scan", "AdminKey": "admin"}
    assert len(doc["paths"]) >= 7
    for path, ops in doc["paths"].items():
        schemes = {name for op in ops.values() for req in op.get("security", []) for name in req}
        expected = {want[s] for s in schemes} or {"open"}
        if path == "/metrics":  # a scan key only with XSCREEN_PROTECT_METRICS, checked by the guard too
            assert policy.rule(path).keys == "open"
            protected = guard_policy(Settings(weights=bundled_weights(), protect_metrics=True))
            assert protected.rule(path) == protected.rule("/model")
            continue
        assert {policy.rule(path).keys} == expected, path
    assert policy.rule("/detect").upload and policy.rule("/detect").max_body == 64 * MiB
    assert policy.rule("/admin/model").max_body == 64 * 1024


def test_a_key_route_the_guard_did_not_check_fails_closed():
    """require_api_key / require_admin_key only read the guard's result: on an app without the guard (or
    a path missing from its table) they answer 500, never serve the route unchecked."""
    from fastapi import Depends, FastAPI
    from fastapi.testclient import TestClient

    from xscreen.service.auth import require_admin_key, require_api_key
    from xscreen.service.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)
    app.get("/scan", dependencies=[Depends(require_api_key)])(lambda: {"served": True})
    app.get("/admin", dependencies=[Depends(require_admin_key)])(lambda: {"served": True})
    with TestClient(app) as client:
        for path in ("/scan", "/admin"):
            r = client.get(path, headers={"Authorization": f"Bearer {API_KEY}"})
            assert (r.status_code, r.json()["error"]) == (500, "internal_error"), path


def test_key_id_is_logged_from_the_one_key_check(server):
    from xscreen.service.auth import key_id

    r = requests.get(server.url + "/model", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    time.sleep(0.3)
    lines = [json.loads(x) for x in server.log().splitlines() if rid in x and x.startswith("{")]
    assert [x.get("key_id") for x in lines if x.get("msg") == "request"] == [key_id(API_KEY)]
    assert API_KEY not in server.log()


# ------------------------------------------------------------------------------------ slow clients
def _served_meanwhile(url: str, until: threading.Event) -> list[float]:
    """GET /model answer times while ``until`` is not set."""
    times: list[float] = []
    while not until.is_set():
        t0 = time.monotonic()
        r = requests.get(url + "/model", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10)
        assert r.status_code == 200
        times.append(time.monotonic() - t0)
        time.sleep(0.2)
    return times


def _with_traffic(url: str, probe):
    done = threading.Event()
    times: list[float] = []
    worker = threading.Thread(target=lambda: times.extend(_served_meanwhile(url, done)))
    worker.start()
    try:
        result = probe()
    finally:
        done.set()
        worker.join(30)
    return result, times


@pytest.mark.parametrize(
    "chunks, pause, bound, fragment",
    [
        (1, 0.0, IDLE_S, "no request body byte"),  # 1 KiB, then nothing
        (3600, IDLE_S / 2, UPLOAD_S, "not complete within"),  # 1 KiB every idle/2 s
    ],
    ids=["stalled", "slow"],
)
def test_stalled_and_slow_bodies_get_408_while_others_are_served(server, chunks, pause, bound, fragment):
    head = post_head("/detect", 1 * MiB, API_KEY, "multipart/form-data; boundary=x")
    body = (b"0" * 1024 for _ in range(chunks))
    a, times = _with_traffic(server.url, lambda: exchange(server.port, head, body, pause))
    assert (a.status, a.body["error"]) == (408, "request_timeout"), a.body
    assert fragment in a.body["detail"]
    assert bound - 0.5 <= a.seconds <= bound + SLACK_S, a.seconds
    assert a.closed and a.headers["connection"] == "close"
    assert len(times) >= 3 and max(times) < 2.0, times


def _read_to_close(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes (a reset after the answer ends it too)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_slow_request_head_is_cut_and_an_idle_connection_closed(server):
    def dribble() -> tuple[float, bytes]:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        t0 = time.monotonic()
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000:
                if select.select([sock], [], [], 1.0)[0]:  # one byte per second until the server answers
                    break
                sock.sendall(bytes([byte]))
            received = _read_to_close(sock)
        finally:
            sock.close()
        return time.monotonic() - t0, received

    (seconds, received), times = _with_traffic(server.url, dribble)
    assert HEAD_S - 0.5 <= seconds <= HEAD_S + SLACK_S, seconds
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and json.loads(body)["error"] == "request_timeout"
    assert len(times) >= 3 and max(times) < 2.0, times
    # a connection that sends nothing is closed within the same bound, without an answer
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        t0 = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - t0 <= HEAD_S + SLACK_S
    # a kept-alive connection gets the bound again for its next request's head
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = http.client.HTTPResponse(sock)
        first.begin()
        assert first.status == 200 and json.loads(first.read()) == {"status": "ok"}
        sock.sendall(b"GET /hea")
        t0 = time.monotonic()
        assert sock.recv(65536).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - t0 <= HEAD_S + SLACK_S


def test_endless_request_head_is_cut_at_max_header_bytes(server):
    """httptools keeps every header line: 400 MiB of them used to be held (+394 MB in 7.7 s)."""
    with PeakRss(server.proc.pid) as peak, socket.create_connection(("127.0.0.1", server.port)) as sock:
        t0 = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for _ in range(50_000):  # up to 400 MB of 8 kB header lines, until the server answers
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(b"X-Pad: " + b"a" * 8000 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):  # closed: the answer is still readable
                break
        received = _read_to_close(sock)
        seconds = time.monotonic() - t0
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431") and json.loads(body)["error"] == "headers_too_large", received
    assert seconds < 3.0 and peak.growth_mb <= 20, (seconds, peak.growth_mb)
    ok = requests.get(server.url + "/healthz", headers={"X-Pad": "a" * 30_000}, timeout=5)
    assert ok.status_code == 200  # a large head under the limit passes


def test_eight_stalled_60mib_uploads_release_their_memory_at_the_timeout(server):
    pid = server.proc.pid
    base_kb = proc_status_kb(pid, "VmRSS")
    head = post_head("/detect", 60 * MiB, API_KEY, "multipart/form-data; boundary=x")
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=60) for _ in range(8)]
    answers: list[tuple[float, bytes]] = []
    with PeakRss(pid) as peak:
        t0 = time.monotonic()
        for sock in socks:  # all but the last MiB of each body, then silence
            sock.sendall(head.encode())
        for block in zeros(59 * MiB):
            for sock in socks:
                sock.sendall(block)
        sent_at = time.monotonic()
        for sock in socks:
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            answers.append((time.monotonic() - t0, data))
            sock.close()
    time.sleep(1.0)  # the request tasks finish after their answers
    after_mb = (proc_status_kb(pid, "VmRSS") - base_kb) / 1024
    last = max(t for t, _ in answers)
    print(
        f"8 x 60 MiB stalled: sent in {sent_at - t0:.1f} s, peak +{peak.growth_mb:.0f} MB, "
        f"answered after {last:.1f} s, held after the answers {after_mb:+.0f} MB"
    )
    for seconds, data in answers:
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert json.loads(data.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"
        assert seconds <= UPLOAD_S + SLACK_S, seconds
    assert peak.growth_mb <= 8 * 60 * 2.2  # at most the bodies (and a copy being joined)
    assert after_mb <= 100, after_mb
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200


def test_timeout_defaults_bound_a_slow_body_within_45_s():
    from xscreen.service.settings import Settings

    s = Settings(weights=bundled_weights())
    assert (s.body_idle_timeout_s, s.upload_timeout_s, s.header_timeout_s) == (10.0, 30.0, 10.0)
    assert s.max_json_bytes == 64 * 1024 and s.max_header_bytes == 64 * 1024
    assert s.upload_timeout_s + SLACK_S < 45


# -------------------------------------------------------------------------------- keys at start
BAD_KEYS = {
    "non-ascii": "cl\u00e9-0123456789abcdefgh",
    "space": "has space-0123456789abcdef",
    "control": "tab\there-0123456789abcdef",
}


@pytest.mark.parametrize("kind", ["api", "admin"])
@pytest.mark.parametrize("source", ["env", "file"])
@pytest.mark.parametrize("bad", sorted(BAD_KEYS))
def test_keys_that_could_never_match_are_refused_at_start(tmp_path, kind, source, bad):
    key = BAD_KEYS[bad]
    env = {k: v for k, v in os.environ.items() if not k.startswith("XSCREEN_")}
    env["XSCREEN_API_KEYS"] = API_KEY
    if source == "env":
        env[f"XSCREEN_{kind.upper()}_KEYS"] = f"good-key-0123456789abcdef,{key}"
    else:
        path = tmp_path / "keys.txt"
        path.write_text(f"# keys\ngood-key-0123456789abcdef\n{key}\n", encoding="utf-8")
        env[f"XSCREEN_{kind.upper()}_KEYS_FILE"] = str(path)
    t0 = time.monotonic()
    proc = subprocess.run([XSCREEN, "serve"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    position = 3 if (kind, source) == ("api", "file") else 2  # XSCREEN_API_KEYS holds one key first
    assert f"{'API' if kind == 'api' else 'admin'} keys" in lines[0] and f"key number {position} " in lines[0]
    assert "printable ASCII" in lines[0]
    for part in (key, key[:6], key[-8:]):  # no key, nor a piece of one
        assert part not in proc.stderr + proc.stdout
    assert time.monotonic() - t0 < 60


def test_printable_ascii_keys_are_accepted():
    from xscreen.service.settings import Settings

    keys = "!#$%&'()*+-./0123456789:;<=>?@AZ[]^_`az{|}~"
    s = Settings(api_keys=keys, admin_keys=keys, weights=bundled_weights())
    assert s.all_api_keys() == [keys] and s.all_admin_keys() == [keys]


def test_non_numeric_content_length_gets_the_parser_400(server):
    """uvicorn's parser answers a non-numeric Content-Length with a plain-text 400 before the app runs
    (docs/security.md: behind the site proxy, Caddy answers it the same way and never forwards it)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 400")
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200


# ------------------------------------------------------------------------ behind the compose proxy
@pytest.fixture(scope="module")
def caddy(server, tmp_path_factory):
    """Caddy with deploy/caddy/Caddyfile's global ``servers`` timeouts and its reverse_proxy ``transport``,
    plain HTTP, in front of the server."""
    from tests.support.service_fixtures import REPO, free_port
    from tests.support.tools import tool

    binary = tool("caddy", "caddy")
    deployed = (REPO / "deploy" / "caddy" / "Caddyfile").read_text()
    servers = re.search(r"\n(\tservers \{.*?\n\t\})\n", deployed, re.S)
    assert servers, "deploy/caddy/Caddyfile sets no servers { timeouts } block"
    transport = re.search(r"\n\t*(transport http \{.*?\n\t*\})\n", deployed, re.S)
    assert transport, "deploy/caddy/Caddyfile sets no reverse_proxy transport block"
    tmp = tmp_path_factory.mktemp("caddy")
    port = free_port()
    config = tmp / "Caddyfile"
    config.write_text(
        f"{{\n\tauto_https off\n\tadmin off\n{servers.group(1)}\n}}\n"
        f":{port} {{\n\treverse_proxy 127.0.0.1:{server.port} {{\n{transport.group(1)}\n\t}}\n}}\n"
    )
    env = dict(os.environ, HOME=str(tmp), XDG_DATA_HOME=str(tmp), XDG_CONFIG_HOME=str(tmp))
    log = open(tmp / "caddy.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [binary, "run", "--config", str(config), "--adapter", "caddyfile"], env=env, stdout=log, stderr=log
    )
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_caddy_refuses_a_non_numeric_content_length_itself(caddy, server):
    """Row 12: behind the proxy a malformed Content-Length never reaches the service; Caddy (Go's HTTP
    server) answers a plain-text 400 of its own, as uvicorn's parser does on direct access."""
    rid = "row12-non-numeric-length"
    with socket.create_connection(("127.0.0.1", caddy), timeout=10) as sock:
        sock.sendall(
            b"POST /detect HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + rid.encode()
            + b"\r\nContent-Length: abc\r\n\r\n"
        )  # fmt: skip
        data = _read_to_close(sock)
    assert data.startswith(b"HTTP/1.1 400") and b"text/plain" in data
    time.sleep(0.3)
    assert rid not in server.log()


def test_caddy_cuts_slow_heads_and_passes_the_service_408_for_slow_bodies(caddy):
    deployed = (Path(__file__).resolve().parents[2] / "deploy" / "caddy" / "Caddyfile").read_text()
    read_header = float(re.search(r"read_header (\d+)s", deployed).group(1))
    read_body = float(re.search(r"read_body (\d+)s", deployed).group(1))
    assert read_header <= 10 and read_body > 30  # above the service's default upload time (30 s)
    with socket.create_connection(("127.0.0.1", caddy), timeout=60) as sock:
        t0 = time.monotonic()
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            if select.select([sock], [], [], 1.0)[0]:
                break
            sock.sendall(bytes([byte]))
        _read_to_close(sock)
        assert time.monotonic() - t0 <= read_header + SLACK_S
    head = post_head("/detect", 1 * MiB, API_KEY, "multipart/form-data; boundary=x")
    a = exchange(caddy, head, (b"0" * 1024 for _ in range(3600)), IDLE_S / 2)
    assert (a.status, a.body["error"]) == (408, "request_timeout")
    assert UPLOAD_S - 0.5 <= a.seconds <= UPLOAD_S + SLACK_S


@pytest.mark.parametrize("via", ["direct", "caddy"])
def test_a_scan_sent_without_a_key_reads_its_401(server, caddy, via):
    """A lane with a wrong key sends its whole scan before it reads the answer: the 401 comes before any
    body byte is read, and the rest of the body is then read and dropped (lingering close), so the client
    gets the JSON 401, not a reset; behind Caddy too (Go drops a client with over 256 KiB unread)."""
    port = server.port if via == "direct" else caddy
    body = os.urandom(3 * MiB)
    with PeakRss(server.proc.pid) as peak:
        r = requests.post(
            f"http://127.0.0.1:{port}/detect",
            files={"high": ("h.png", body), "low": ("l.png", body)},
            headers={"Authorization": "Bearer wrong-key-0123456789abcdef"},
            timeout=60,
        )
    assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
    assert peak.growth_mb < 20  # dropped, not kept


def _sends_fail(sock: socket.socket, within: float) -> bool:
    """True once sending 64 KiB chunks fails (the server closed the connection) within ``within`` s."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            sock.sendall(b"x" * 65536)
        except OSError:  # EPIPE or ECONNRESET: the server is gone
            return True
        time.sleep(0.2)
    return False


def test_after_the_401_the_body_is_dropped_then_the_connection_closed(server):
    """The answer and a half-close come at once; the client may go on sending (its bytes are read and
    dropped, no reset) until it pauses for LINGER_IDLE_S, or LINGER_S pass: then the server closes."""
    from xscreen.service.http_protocol import LINGER_IDLE_S, LINGER_S

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 100000000\r\n\r\n" + b"x" * 100_000)  # fmt: skip
        assert _read_to_close(sock).startswith(b"HTTP/1.1 401")  # answer, then the server's FIN
        assert not _sends_fail(sock, within=LINGER_IDLE_S / 2)  # still read and dropped
        t0 = time.monotonic()
        time.sleep(LINGER_IDLE_S + 0.5)  # a pause: the server stops lingering
        assert _sends_fail(sock, within=LINGER_S + SLACK_S)
        assert time.monotonic() - t0 <= LINGER_IDLE_S + LINGER_S + SLACK_S


def _read_answer(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """One whole HTTP answer: its head and Content-Length bytes of body (TCP may split them)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _length(data: bytes) -> int:
    match = re.search(rb"(?im)^content-length: *(\d+)", data.partition(b"\r\n\r\n")[0])
    return int(match.group(1)) if match else 0


@pytest.mark.parametrize("via", ["direct", "caddy"])
def test_expect_100_continue_gets_the_401_before_the_scan_is_sent(server, caddy, via):
    """The way for a client to learn a refused key before sending its scan (curl sends the header for
    bodies over 1 MiB): the 401 comes in place of 100 Continue, directly and through Caddy."""
    port = server.port if via == "direct" else caddy
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /detect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-key-0123456789ab\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 6000000\r\n"
                     b"Expect: 100-continue\r\n\r\n")  # fmt: skip
        head = _read_answer(sock)
    assert head.startswith(b"HTTP/1.1 401") and b'"unauthorized"' in head, head[:200]
