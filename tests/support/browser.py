"""A headless Chromium for page tests: Debian's ``chromium`` and ``chromium-driver`` through Selenium, with
every host but loopback unreachable, and what the page asked for and what its CSP refused kept.

Nothing is downloaded: the driver's path is given, so Selenium Manager never runs. Without the two
packages ``missing()`` names them and the page tests skip (.ci/run installs them).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = "chromium"
CHROMEDRIVER = "chromedriver"
APT_PACKAGES = "chromium chromium-driver"

# The network unplugged: no name resolves but 127.0.0.1, and anything else (an address literal too) goes
# to a proxy on a closed loopback port (loopback itself bypasses proxies). The browser's own background
# fetches are switched off.
OFFLINE_ARGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
]

# Runs before any page script: each Content-Security-Policy violation is kept in window.__cspViolations.
RECORD_CSP = (
    "window.__cspViolations = [];"
    "document.addEventListener('securitypolicyviolation', function (e) {"
    "  window.__cspViolations.push({directive: e.effectiveDirective, blocked: e.blockedURI,"
    "                               source: e.sourceFile, line: e.lineNumber});"
    "});"
)


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    absent = [name for name in (CHROMIUM, CHROMEDRIVER) if shutil.which(name) is None]
    if absent:
        return f"{' and '.join(absent)} not installed: apt-get install {APT_PACKAGES}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (the dev extra: pip install -e '.[dev]')"
    return None


@contextlib.contextmanager
def offline_chromium(width: int = 1280, height: int = 1400) -> Iterator:
    """A headless Chromium WebDriver that reaches loopback only; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which(CHROMIUM)
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", *OFFLINE_ARGS]:
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which(CHROMEDRIVER)), options=options)
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_CSP})
        yield driver
    finally:
        driver.quit()


def requests_made(driver) -> list[tuple[str, str | None]]:
    """(URL, why it was blocked or None) of each request the pages made since the last call (the
    driver's performance log): a request refused by the page's Content-Security-Policy reads "csp"."""
    sent: dict[str, str] = {}
    blocked: dict[str, str] = {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message["params"]
        if message["method"] == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            blocked[params["requestId"]] = params["blockedReason"]
    return [(url, blocked.get(request_id)) for request_id, url in sent.items()]


def csp_violations(driver) -> list[dict]:
    return driver.execute_script("return window.__cspViolations || []")


def screenshot(driver, path: Path) -> Path:
    """The whole page as a PNG at ``path``."""
    driver.save_screenshot(str(path))
    return path
