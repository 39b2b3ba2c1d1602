"""The batches page, /ui: plain HTML, CSS and a little JavaScript, no build step (api/static/).

The page signs in with the tenant's API key and calls the same /v1 routes as any client (the batches list, each
batch's progress stream, file downloads), so it sees exactly what that key sees. The key stays in the tab's
session storage and travels only in the Authorization header. The headers below keep the page from running
anything but its own script and from being framed, and keep its address out of other sites' logs.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter(prefix="/ui", include_in_schema=False)
STATIC = Path(__file__).parent / "static"
FILES = {"": ("batches.html", "text/html; charset=utf-8"), "/batches.js": ("batches.js", "text/javascript"),
         "/batches.css": ("batches.css", "text/css")}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _serve(name: str, media_type: str):
    def serve() -> Response:
        return Response((STATIC / name).read_bytes(), media_type=media_type, headers=HEADERS)

    return serve


for suffix, (name, media_type) in FILES.items():
    router.add_api_route(suffix or "", _serve(name, media_type), methods=["GET"])
    if not suffix:
        router.add_api_route("/", _serve(name, media_type), methods=["GET"])
