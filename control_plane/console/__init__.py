"""The web console: plain JavaScript modules and CSS served at ``/`` of the control plane's HTTP port.

No build step and nothing from a CDN: the files beside this module are the console. They call the public REST
API under ``/api/v1`` with the bearer token the user typed (kept in ``sessionStorage``, sent in the
``Authorization`` header, so no cookie can be ridden cross-site). Every answer of these routes carries a strict
Content-Security-Policy: scripts and styles only from this origin, no inline script, no framing.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

__all__ = ["ASSETS", "CONTENT_SECURITY_POLICY", "install"]

ASSETS = Path(__file__).parent
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> Response:
    path = ASSETS / name
    media = _TYPES.get(path.suffix)
    # only our own files of the known types, never a path outside this folder
    if media is None or "/" in name or name.startswith(".") or not path.is_file():
        raise HTTPException(status_code=404, detail=f"no console asset {name!r}")
    return Response(path.read_bytes(), media_type=media, headers=_HEADERS)


def install(app: FastAPI) -> None:
    """Serve the console at ``/`` and its assets at ``/console/<file>`` (outside the OpenAPI document)."""

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return _asset("index.html")

    @app.get("/console/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        return _asset(name)
