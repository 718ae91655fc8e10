"""Review console test helpers: a service with the store and the three kinds of key, sign-in with a
requests session, the CSRF token of a page, and bags sent through /detect."""

from __future__ import annotations

import re
import time
from pathlib import Path

import requests

from tests.support.service_fixtures import API_KEY, InThreadServer

REVIEWER_KEY = "reviewer-key-0123456789abcdef"
OTHER_REVIEWER_KEY = "reviewer-two-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


def console_server(demo, tmp: Path, **settings) -> InThreadServer:
    """A real service with the scan store in ``tmp/store``, the audit trail in ``tmp/audit.jsonl``, and a
    scan key, an admin key and two reviewer keys."""
    return InThreadServer(
        weights=demo.weights,
        device="cpu",
        warmup=False,
        api_keys=API_KEY,
        admin_keys=ADMIN_KEY,
        reviewer_keys=f"{REVIEWER_KEY},{OTHER_REVIEWER_KEY}",
        score_threshold=demo.score_threshold,
        audit_path=tmp / "audit.jsonl",
        **{"store_dir": tmp / "store", **settings},
    )


def sign_in(url: str, key: str = REVIEWER_KEY) -> requests.Session:
    """A requests session signed in to the console (its cookie jar holds the session cookie)."""
    session = requests.Session()
    r = session.post(url + "/console/login", data={"key": key}, allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["location"] == "/console", (r.status_code, r.text[:300])
    # requests keeps a Secure cookie for http://127.0.0.1 only if told it is secure: copy it over as such
    cookie = r.cookies.get("xscreen_console")
    session.cookies.clear()
    session.cookies.set("xscreen_console", cookie, domain="127.0.0.1", path="/console")
    return session


def csrf_of(session: requests.Session, url: str) -> str:
    page = session.get(url + "/console", timeout=30)
    assert page.status_code == 200, page.text[:300]
    return CSRF_RE.search(page.text).group(1)


def post_bag(url: str, scans, request_id: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {API_KEY}", **({"X-Request-ID": request_id} if request_id else {})}
    parts = []
    for i, scan in enumerate(scans):
        high, low = scan.png()
        parts += [("high", (f"h{i}.png", high, "image/png")), ("low", (f"l{i}.png", low, "image/png"))]
    r = requests.post(url + "/detect", files=parts, headers=headers, timeout=120)
    assert r.status_code == 200, r.text[:300]
    return r


def wait_stored(session: requests.Session, url: str, request_id: str, timeout: float = 5.0) -> None:
    """Wait until the bag's console page answers (the store writes it after the answer)."""
    end = time.monotonic() + timeout
    while session.get(f"{url}/console/bags/{request_id}", timeout=30).status_code != 200:
        assert time.monotonic() < end, f"bag {request_id} never appeared in the console"
        time.sleep(0.05)
