"""The console's security on a real server: only a live reviewer session reaches it; scan and admin keys
are refused on every route; state changes need the session's CSRF token and the same origin; expired,
signed-out and made-up sessions are refused; image ids cannot name a path; the cookie's attributes; failed
sign-ins are limited and logged without the key."""

from __future__ import annotations

import logging
import time

import pytest
import requests

from tests.support.console import (
    ADMIN_KEY,
    REVIEWER_KEY,
    console_server,
    csrf_of,
    post_bag,
    sign_in,
    wait_stored,
)
from tests.support.service_fixtures import API_KEY
from xscreen.service.auth import key_id
from xscreen.store import StoreConfig, open_store
from xscreen.store.sessions import SessionTable

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def served(demo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console-security")
    with console_server(demo, tmp) as srv:
        r = post_bag(srv.url, demo.scans[:1], request_id="sec-bag-1")
        reviewer = sign_in(srv.url)
        wait_stored(reviewer, srv.url, "sec-bag-1")
        yield srv, tmp, r.json()


def routes(bag: str) -> list[tuple[str, str]]:
    return [
        ("GET", "/console"), ("GET", "/console/login"), ("GET", "/console/rows?since=0"),
        ("GET", f"/console/bags/{bag}"), ("GET", f"/console/bags/{bag}/views/0.png"),
        ("GET", "/console/summary"), ("POST", "/console/login"), ("POST", "/console/logout"),
        ("POST", f"/console/bags/{bag}/verdicts"), ("POST", f"/console/bags/{bag}/missed"),
        ("POST", f"/console/bags/{bag}/missed/1/remove"),
    ]  # fmt: skip


def verdict_count(tmp) -> int:
    store = open_store(StoreConfig(tmp / "store"))
    try:
        return len(store.get_bag("sec-bag-1").history)
    finally:
        store.close()


def test_scan_and_admin_keys_are_refused_on_every_console_route(served):
    srv, _, _ = served
    for key in (API_KEY, ADMIN_KEY, REVIEWER_KEY):
        for method, path in routes("sec-bag-1"):
            bearer = {"Authorization": f"Bearer {key}"}
            r = requests.request(method, srv.url + path, headers=bearer, timeout=30)
            assert r.status_code == 403 and r.json()["error"] == "console_session_only", (key, path)
    # a signed-in reviewer who also sends a key is refused too: the console takes sessions only
    reviewer = sign_in(srv.url)
    bearer = {"Authorization": f"Bearer {API_KEY}"}
    assert reviewer.get(srv.url + "/console", headers=bearer, timeout=30).status_code == 403


def test_without_a_session_pages_go_to_sign_in_and_the_rest_is_refused(served):
    srv, _, _ = served
    for method, path in routes("sec-bag-1"):
        if path == "/console/login":
            continue
        r = requests.request(method, srv.url + path, allow_redirects=False, timeout=30)
        if method == "GET" and not path.endswith(".png"):
            assert r.status_code == 303 and r.headers["location"] == "/console/login", path
        else:
            assert r.status_code in (401, 422), (path, r.status_code)
        api = requests.request(method, srv.url + path, headers={"Accept": "application/json"}, timeout=30)
        assert api.status_code in (401, 422), path
        if api.status_code == 401:
            assert api.json()["error"] == "signed_out"


def test_session_cookie_attributes(served):
    srv, _, _ = served
    r = requests.post(srv.url + "/console/login", data={"key": REVIEWER_KEY}, allow_redirects=False)
    header = r.headers["set-cookie"]
    parts = {p.strip().split("=")[0].lower(): p.strip() for p in header.split(";")}
    name, value = header.split(";")[0].split("=", 1)
    assert name == "xscreen_console" and len(value) == 43
    assert {"httponly", "secure", "path", "max-age", "samesite"} <= set(parts)
    assert parts["path"] == "Path=/console" and parts["max-age"] == "Max-Age=28800"
    assert parts["samesite"].lower() == "samesite=strict"
    assert "domain" not in parts  # host-only
    assert r.headers["cache-control"] == "no-store"
    page = requests.get(srv.url + "/console/login", timeout=30)
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "unsafe" not in page.headers["content-security-policy"]


def test_verdicts_need_the_sessions_csrf_token_and_nothing_is_recorded_without_it(served):
    srv, tmp, answer = served
    reviewer = sign_in(srv.url)
    other = sign_in(srv.url)  # the same key, another session: another token
    before = verdict_count(tmp)
    form = {"view": 0, "detection": 0, "verdict": "confirm"}
    url = srv.url + "/console/bags/sec-bag-1/verdicts"
    for extra in ({}, {"csrf_token": "0" * 64}, {"csrf_token": csrf_of(other, srv.url)}, {"csrf_token": ""}):
        r = reviewer.post(url, data={**form, **extra}, headers={"Accept": "application/json"}, timeout=30)
        assert r.status_code == 403 and r.json()["error"] == "csrf", extra
    r = reviewer.post(url, data=form, headers={"X-CSRF-Token": "f" * 64, "Accept": "application/json"})
    assert r.status_code == 403
    missed = {"view": 0, "x1": 1, "y1": 1, "x2": 9, "y2": 9, "class_name": "knife"}
    assert reviewer.post(srv.url + "/console/bags/sec-bag-1/missed", data=missed).status_code == 403
    assert verdict_count(tmp) == before  # nothing recorded
    # another site's page posting with the reviewer's cookie is refused before the token is looked at
    token = csrf_of(reviewer, srv.url)
    r = reviewer.post(url, data={**form, "csrf_token": token}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403 and verdict_count(tmp) == before
    r = reviewer.post(url, data={**form, "csrf_token": token}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and verdict_count(tmp) == before
    # the right token (header or field) is taken
    r = reviewer.post(url, data=form, headers={"X-CSRF-Token": token, "Accept": "application/json"})
    assert r.status_code == 200 and r.json()["verdict"]["kind"] == "confirm"
    assert verdict_count(tmp) == before + 1


def test_expired_signed_out_and_made_up_sessions_are_refused(served):
    srv, tmp, _ = served
    store = open_store(StoreConfig(tmp / "store"))
    try:
        expired, _ = SessionTable(store).create(key_id(REVIEWER_KEY), ttl_s=0.2)
    finally:
        store.close()
    time.sleep(0.3)
    signed_out = sign_in(srv.url)
    old_cookie = signed_out.cookies.get("xscreen_console")
    token = csrf_of(signed_out, srv.url)
    r = signed_out.post(srv.url + "/console/logout", data={"csrf_token": token}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert 'xscreen_console=""' in r.headers["set-cookie"] and "Max-Age=0" in r.headers["set-cookie"]
    made_up = "A" * 43
    for cookie in (expired, old_cookie, made_up, "../../etc/passwd", "x" * 5000):
        jar = {"xscreen_console": cookie}
        page = requests.get(srv.url + "/console", cookies=jar, allow_redirects=False, timeout=30)
        assert page.status_code in (303, 431), cookie[:20]
        assert page.headers.get("location", "/console/login") == "/console/login"
        r = requests.post(
            srv.url + "/console/bags/sec-bag-1/verdicts",
            cookies=jar,
            data={"view": 0, "detection": 0, "verdict": "false_alarm", "csrf_token": token},
            timeout=30,
        )
        assert r.status_code in (401, 431), cookie[:20]


def test_image_ids_cannot_name_a_path(served):
    srv, tmp, _ = served
    reviewer = sign_in(srv.url)
    (tmp / "secret.npy").write_bytes(b"secret")
    ok = reviewer.get(srv.url + "/console/bags/sec-bag-1/views/0.png", timeout=30)
    assert ok.status_code == 200 and ok.content[:8] == b"\x89PNG\r\n\x1a\n"
    for mode in ("high", "low"):
        assert reviewer.get(srv.url + f"/console/bags/sec-bag-1/views/0.png?mode={mode}").status_code == 200
    bad = [
        "/console/bags/../views/0.png", "/console/bags/..%2f..%2fsecret/views/0.png",
        "/console/bags/%2e%2e%2f%2e%2e%2fsecret/views/0.png", "/console/bags/%2e%2e/views/0.png",
        "/console/bags/%2Fetc%2Fpasswd/views/0.png", "/console/bags//etc/passwd/views/0.png",
        "/console/bags/sec-bag-1/views/..%2f..%2fsecret.png", "/console/bags/sec-bag-1/views/-1.png",
        "/console/bags/sec-bag-1/views/1.png", "/console/bags/sec-bag-1/views/99999999999999999999.png",
        "/console/bags/" + "a" * 65 + "/views/0.png", "/console/bags/" + "a" * 5000 + "/views/0.png",
        "/console/bags/sec-bag-1/views/0.png?mode=../../secret", "/console/bags/no-such-bag/views/0.png",
        "/console/bags/sec%00bag/views/0.png", "/console/bags/sec.bag/views/0.png",
    ]  # fmt: skip
    for path in bad:
        r = reviewer.get(srv.url + path, timeout=30)
        assert r.status_code in (404, 422), (path, r.status_code)
        assert b"secret" not in r.content and not r.content.startswith(b"\x89PNG"), path


def test_failed_sign_ins_are_limited_and_logged_without_the_key(served, caplog):
    srv, _, _ = served
    wrong = "not-a-reviewer-key-0123456789"
    with caplog.at_level(logging.WARNING, logger="xscreen.service.console"):
        codes = [
            requests.post(srv.url + "/console/login", data={"key": k}, timeout=30).status_code
            for k in (wrong, API_KEY, ADMIN_KEY, wrong, wrong)
        ]
        assert codes == [401] * 5
        r = requests.post(srv.url + "/console/login", data={"key": REVIEWER_KEY}, allow_redirects=False)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0 and "Too many" in r.text
    refused = [rec for rec in caplog.records if "sign-in refused" in rec.getMessage()]
    assert len(refused) == 5
    for rec in caplog.records:
        text = rec.getMessage() + repr(rec.__dict__)
        assert wrong not in text and API_KEY not in text and ADMIN_KEY not in text
