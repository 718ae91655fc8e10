"""/docs and /redoc without the internet: the pages load only this server's /static files (the vendored
npm files, as recorded in service/static/vendor/assets.json), under a Content-Security-Policy of this
origin only; the OpenAPI document keeps the scan key rule (XSCREEN_PROTECT_DOCS), which the pages ask
for; the wheel carries the files; and a headless Chromium with every host but loopback unreachable
renders both viewers and runs "Try it out" with the key it was given."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests
from fastapi.testclient import TestClient

from tests.support import browser
from tests.support.service_fixtures import API_KEY, InThreadServer, bundled_weights
from tools.vendor_assets import check_tree, load_record
from xscreen.service.app import create_app, guard_policy
from xscreen.service.settings import Settings

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "service" / "static"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PAGES = ("/docs", "/redoc")
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


@pytest.fixture(scope="module")
def server():
    with InThreadServer(weights=bundled_weights(), device="cpu", api_keys=API_KEY, warmup=False) as srv:
        yield srv


class _Refs(HTMLParser):
    """Every src and href of a page, and its init script's data- attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.init: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.urls += [found[a] or "" for a in ("src", "href") if a in found]
        if "data-viewer" in found:
            self.init = {k: v or "" for k, v in found.items()}


def page_refs(text: str) -> _Refs:
    refs = _Refs()
    refs.feed(text)
    return refs


def recorded_sha256() -> dict[str, str]:
    """/static path -> sha256 of each vendored file (assets.json)."""
    return {
        f"/static/vendor/{pkg['folder']}/{dest}": entry["sha256"]
        for pkg in load_record().values()
        for dest, entry in pkg["files"].items()
    }


def test_pages_reference_only_this_servers_static_files(server):
    for page in PAGES:
        r = requests.get(server.url + page, timeout=30)  # open: no key
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), page
        assert not re.search(r"(?i)https?:|//", r.text), page  # no scheme, no protocol-relative URL
        refs = page_refs(r.text)
        assert len(refs.urls) >= 4 and all(u.startswith("/static/") for u in refs.urls), refs.urls
        assert refs.init["src"] == "/static/docs/docs.js" and refs.init["data-openapi-url"] == "/openapi.json"


def test_every_asset_of_the_pages_is_served_with_its_type_and_recorded_hash(server):
    recorded = recorded_sha256()
    urls = {url for page in PAGES for url in page_refs(requests.get(server.url + page).text).urls}
    assert {
        "/static/vendor/swagger_ui/swagger-ui-bundle.js",
        "/static/vendor/redoc/redoc.standalone.js",
    } <= urls
    for url in sorted(urls):
        r = requests.get(server.url + url, timeout=30)
        assert r.status_code == 200, url
        expected_type = CONTENT_TYPES[Path(url).suffix]
        assert r.headers["content-type"].split(";")[0] == expected_type, url
        assert r.headers["x-content-type-options"] == "nosniff", url
        digest = hashlib.sha256(r.content).hexdigest()
        if url.startswith("/static/vendor/"):
            assert digest == recorded[url], url
        else:  # the pages' own files, served as they are in the package
            own = STATIC / url.removeprefix("/static/")
            assert digest == hashlib.sha256(own.read_bytes()).hexdigest(), url


def test_every_vendored_file_and_its_license_is_served_as_recorded(server):
    recorded = recorded_sha256()
    assert {p.rsplit("/", 1)[1] for p in recorded} >= {"LICENSE", "NOTICE", "htmx.min.js"}
    for url, sha in recorded.items():
        r = requests.get(server.url + url, timeout=30)
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == sha, url
    assert check_tree(load_record()) == []  # the tree, the record and the README table agree
    for bad in ("/static/%2e%2e/app.py", "/static/vendor/../../app.py", "/static/nothing.js"):
        assert requests.get(server.url + bad, timeout=30).status_code == 404, bad
    # one metrics label for the whole tree, never a client's path
    metrics = requests.get(server.url + "/metrics", timeout=30).text
    assert 'xscreen_http_requests_total{method="GET",route="/static/",status="200"}' in metrics
    assert 'route="/static/",status="404"' in metrics and 'route="/static/v' not in metrics


def _directives(header: str) -> dict[str, list[str]]:
    return {name: rest for name, *rest in (d.split() for d in header.split(";") if d.strip())}


def test_pages_carry_a_content_security_policy_of_this_origin_only(server):
    for page in PAGES:
        answers = [requests.get(server.url + page, timeout=30) for _ in range(2)]
        policies = [_directives(r.headers["content-security-policy"]) for r in answers]
        nonces = [page_refs(r.text).init["data-style-nonce"] for r in answers]
        assert nonces[0] != nonces[1] and all(len(n) >= 22 for n in nonces), page  # fresh per answer
        for csp, nonce in zip(policies, nonces, strict=True):
            assert csp["default-src"] == ["'none'"] and csp["script-src"] == ["'self'"], page
            assert csp["style-src"][:2] == ["'self'", f"'nonce-{nonce}'"], page
            assert all(s.startswith("'sha256-") for s in csp["style-src"][2:]), page
            assert csp["connect-src"] == ["'self'"] and csp["img-src"] == ["'self'", "data:"], page
            assert csp["form-action"] == ["'none'"] and csp["frame-ancestors"] == ["'none'"], page
            sources = " ".join(s for values in csp.values() for s in values)
            assert not re.search(r"https?:|\*|unsafe-", sources), (page, sources)
        assert answers[0].headers["x-content-type-options"] == "nosniff"
        assert answers[0].headers["cache-control"] == "no-store"
    assert "content-security-policy" not in requests.get(server.url + "/healthz").headers


def test_the_document_keeps_the_scan_key_and_the_pages_are_open(server):
    r = requests.get(server.url + "/openapi.json", timeout=30)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    doc = requests.get(server.url + "/openapi.json", headers=AUTH, timeout=30).json()
    assert {"/detect", "/model", "/admin/model"} <= set(doc["paths"])
    assert "/docs" not in doc["paths"] and not any(p.startswith("/static") for p in doc["paths"])
    assert requests.get(server.url + "/model", timeout=30).status_code == 401
    assert requests.post(server.url + "/detect", files={"high": b"x", "low": b"x"}).status_code == 401
    assert requests.post(server.url + "/admin/model", json={"model": "x"}).status_code == 403  # no admin key


def test_protect_docs_false_makes_only_the_document_public():
    """protect_docs=false (XSCREEN_PROTECT_DOCS): /openapi.json needs no key; every other rule stays."""
    public = Settings(weights=bundled_weights(), api_keys=API_KEY, protect_docs=False)
    policy, default = (
        guard_policy(public),
        guard_policy(Settings(weights=bundled_weights(), api_keys=API_KEY)),
    )
    assert policy.rule("/openapi.json").keys == "open" and default.rule("/openapi.json").keys == "scan"
    for path in ("/detect", "/render", "/model", "/admin/model"):
        assert policy.rule(path) == default.rule(path), path
    assert policy.rule("/docs").keys == policy.rule("/static/docs/docs.js").keys == "open"
    client = TestClient(create_app(public))  # no lifespan: no model is loaded for these routes
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/model").status_code == 401


def test_the_wheel_carries_every_file_under_service_static(tmp_path):
    """setuptools' own wheel build from pyproject.toml (packages, package-data) of a tree holding the real
    service/static/ and the other package folders empty: every static file is in it, where /static serves
    it from. (tests/deploy/test_packaging.py builds the full wheel and sdist from a clone.)"""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    tree = tmp_path / "tree"
    for package in setuptools["packages"]:
        top = max(
            (p for p in setuptools["package-dir"] if package == p or package.startswith(p + ".")), default=""
        )
        rest = package.removeprefix(top).lstrip(".").split(".") if top else package.split(".")
        tree.joinpath(setuptools["package-dir"][top] if top else "", *rest).mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(REPO / name, tree / name)
    shutil.copytree(STATIC, tree / "service" / "static", dirs_exist_ok=True)
    code = "from setuptools import build_meta; print(build_meta.build_wheel('dist'))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = zipfile.ZipFile(tree / "dist" / proc.stdout.split()[-1]).namelist()
    expected = {f"xscreen/service/static/{p.relative_to(STATIC)}" for p in STATIC.rglob("*") if p.is_file()}
    assert len(expected) >= 15 and "xscreen/service/static/vendor/swagger_ui/NOTICE" in expected
    assert {n for n in names if n.startswith("xscreen/service/static/")} == expected


# --- a real browser, network unplugged ---------------------------------------------------------------------


def _wait_text(driver, css: str, needle: str, timeout: float = 60.0) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: any(needle in e.text for e in d.find_elements(By.CSS_SELECTOR, css))
    )
    return "\n".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, css))


def _sign_in(driver, key: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, "key-input")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()


def _gone_out(driver, base: str) -> list[tuple[str, str | None]]:
    """The requests of the pages that were not for this server (nor data: or blob: URLs)."""
    made = browser.requests_made(driver)
    return [(url, why) for url, why in made if not url.startswith((base + "/", "data:", "blob:"))]


@pytest.mark.slow  # ~15 s: Chromium's start and two viewers on a 2-core machine
@pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))
def test_docs_and_redoc_render_in_chromium_with_the_network_unplugged(server, tmp_path):
    from selenium.webdriver.common.by import By

    model_name = requests.get(server.url + "/model", headers=AUTH, timeout=30).json()["name"]
    with browser.offline_chromium() as driver:
        driver.get(server.url + "/docs")
        _wait_text(driver, "#key-form", "Scan key")  # the document needs the key: the page asks
        _sign_in(driver, "wrong-key-0123456789")
        _wait_text(driver, "#key-message", "refused")
        _sign_in(driver, API_KEY)
        paths = _wait_text(driver, ".opblock-summary-path", "/detect")
        assert {"/detect", "/render", "/model", "/admin/model"} <= set(paths.split())
        assert not driver.find_element(By.ID, "key-form").is_displayed()
        # "Try it out" on GET /model sends the key the page was given (Swagger UI's Authorize)
        driver.find_element(By.CSS_SELECTOR, "#operations-model-get_model_model_get .opblock-summary").click()
        _wait_text(driver, "#operations-model-get_model_model_get .try-out__btn", "Try it out")
        driver.find_element(By.CSS_SELECTOR, "#operations-model-get_model_model_get .try-out__btn").click()
        driver.find_element(By.CSS_SELECTOR, "#operations-model-get_model_model_get .execute").click()
        answer = _wait_text(driver, "#operations-model-get_model_model_get .live-responses-table", model_name)
        assert re.search(r"\b200\b", answer) and "401" not in answer
        browser.screenshot(driver, tmp_path / "docs.png")
        assert browser.csp_violations(driver) == []
        assert _gone_out(driver, server.url) == []

        driver.get(server.url + "/redoc")
        _wait_text(driver, "#key-form", "Scan key")
        _sign_in(driver, API_KEY)
        text = _wait_text(driver, "#api-viewer", "Detect threats in a raw scan")
        assert "/detect" in text and "/admin/model" in text
        browser.screenshot(driver, tmp_path / "redoc.png")
        # ReDoc's footer shows Redocly's logo from its CDN: the policy refuses it (it never leaves the
        # browser) and ReDoc hides the image; nothing else is refused, nothing else goes out
        logo = "https://cdn.redoc.ly/redoc/logo-mini.svg"
        refused = [(v["directive"], v["blocked"]) for v in browser.csp_violations(driver)]
        assert refused in ([], [("img-src", logo)]), json.dumps(refused)
        assert set(_gone_out(driver, server.url)) <= {(logo, "csp")}
    for shot in ("docs.png", "redoc.png"):
        assert (tmp_path / shot).stat().st_size > 20_000, shot
