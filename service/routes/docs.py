"""The API contract and its viewers: /openapi.json, Swagger UI at /docs, ReDoc at /redoc, and /static.

The pages load only files this server serves from the package (service/static/: the vendored npm files
and the pages' own docs.js), under a Content-Security-Policy that allows no other origin, so they work on
a network without internet access (docs/service.md "API documentation"). The pages are open; the document
follows ``protect_docs``: with a scan key configured it needs one, which the page asks for.
"""

from __future__ import annotations

import html
import secrets
from dataclasses import dataclass

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from xscreen.service.auth import require_api_key

STATIC_PATH = "/static"
OPENAPI_PATH = "/openapi.json"
TITLE = "xscreen API"


@dataclass(frozen=True)
class Viewer:
    """One viewer's files under /static and what its page's Content-Security-Policy must allow of it."""

    script: str
    sheets: tuple[str, ...] = ()
    inline_styles: tuple[str, ...] = ()  # CSP sources for the <style> elements the script adds
    workers: str | None = None  # CSP worker-src, when the script starts workers


VIEWERS = {
    "swagger": Viewer("vendor/swagger_ui/swagger-ui-bundle.js", ("vendor/swagger_ui/swagger-ui.css",)),
    # ReDoc 2.5.4 (vendor/assets.json) adds <style> elements: styled-components' with the nonce docs.js
    # hands to Redoc.init, and, as the bundle loads (before any nonce can be set), an empty one and one
    # holding perfect-scrollbar's style sheet: allowed by their sha256 (test_docs_pages.py's browser test
    # fails, naming the style, when another ReDoc version adds another). Its search index runs in a
    # worker made from a blob: URL of the bundle's own code.
    "redoc": Viewer(
        "vendor/redoc/redoc.standalone.js",
        inline_styles=(
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='",  # the empty <style>
            "'sha256-QMIg+bpjm3JdElJ388KYke01izlUW0UoNOeKjpMxdgc='",  # perfect-scrollbar
        ),
        workers="blob:",
    ),
}

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" type="image/png" href="{static}/vendor/swagger_ui/favicon-32x32.png">
{styles}
</head>
<body>
<form id="key-form" hidden autocomplete="off">
<label for="key-input">Scan key</label>
<p>This service shows its API description to holders of a scan key (XSCREEN_API_KEYS). The key stays in
this page: it is not stored.</p>
<input id="key-input" type="password" required>
<button type="submit">Show the API</button>
<p id="key-message" role="alert" hidden></p>
</form>
<div id="api-viewer"></div>
<script src="{static}/{script}"></script>
<script src="{static}/docs/docs.js" data-viewer="{viewer}" data-openapi-url="{openapi}"
 data-style-nonce="{nonce}"></script>
</body>
</html>
"""


def content_security_policy(viewer: Viewer, nonce: str) -> str:
    """Scripts, styles, images, fonts and fetches from this origin only (images also from data: URLs, as
    the viewers' style sheets embed their icons so); styles the viewer adds itself by ``nonce`` or hash."""
    directives = [
        "default-src 'none'",
        "script-src 'self'",
        " ".join(["style-src 'self'", f"'nonce-{nonce}'", *viewer.inline_styles]),
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",  # the key form is read by docs.js, never sent as a query string
        "frame-ancestors 'none'",
    ]
    if viewer.workers:
        directives.append(f"worker-src {viewer.workers}")
    return "; ".join(directives)


def viewer_page(request: Request, viewer: str) -> HTMLResponse:
    """The page of one viewer, with a fresh nonce in the page and in its Content-Security-Policy."""
    root = html.escape(request.scope.get("root_path", "").rstrip("/"))
    spec = VIEWERS[viewer]
    static = root + STATIC_PATH
    sheets = [*spec.sheets, "docs/docs.css"]
    styles = [f'<link rel="stylesheet" href="{static}/{sheet}">' for sheet in sheets]
    nonce = secrets.token_urlsafe(18)
    body = PAGE.format(
        title=TITLE,
        static=static,
        styles="\n".join(styles),
        script=spec.script,
        viewer=viewer,
        openapi=root + OPENAPI_PATH,
        nonce=nonce,
    )
    headers = {
        "Content-Security-Policy": content_security_policy(spec, nonce),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
    return HTMLResponse(body, headers=headers)


class PackageFiles(StaticFiles):
    """service/static/ as installed (a wheel's site-packages or the checkout), with nosniff: a browser
    runs a file only as the type it is served as."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def static_files() -> PackageFiles:
    return PackageFiles(packages=[("xscreen.service", "static")])


def docs_router(protect_openapi: bool) -> APIRouter:
    """/openapi.json (behind the scan key when ``protect_openapi``; the request guard checks it), /docs
    and /redoc (always open: they hold no part of the contract; the document is fetched by the page)."""
    router = APIRouter(include_in_schema=False)
    guarded = [Depends(require_api_key)] if protect_openapi else []

    @router.get(OPENAPI_PATH, dependencies=guarded)
    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @router.get("/docs")
    async def docs(request: Request) -> HTMLResponse:
        return viewer_page(request, "swagger")

    @router.get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        return viewer_page(request, "redoc")

    return router
