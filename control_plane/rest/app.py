"""The REST API's ASGI application: routers under ``/api/v1``, problem handlers, body limit, OpenAPI 3.1.

:func:`create_app` takes the running :class:`~lmaas.control_plane.app.ControlPlane` (or anything with its
``models``, ``artifacts``, ``deployments``, ``watcher``, ``store``, ``tokens``, ``audit`` and ``auth``
attributes): routes reach the core objects through ``request.app.state.plane``.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from lmaas.control_plane import console as console_ui
from lmaas.control_plane.rest import admin, console, deployments, models, optimize, problems
from lmaas.control_plane.rest.problems import PROBLEM, problem_response
from lmaas.control_plane.rest.schemas import Problem
from lmaas.protos.errors import PayloadTooLarge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["API_PREFIX", "MAX_JSON_BYTES", "TITLE", "create_app", "openapi_document"]

API_PREFIX = "/api/v1"
TITLE = "LMaaS control plane"
MAX_JSON_BYTES = 2 << 20  # a JSON body (model configs are at most 1 MiB); uploads are bounded by --max-artifact-bytes
_UPLOADS = ((("POST",), re.compile(rf"^{API_PREFIX}/models/[^/]+/versions/?$")),
            (("PUT",), re.compile(rf"^{API_PREFIX}/artifacts/[^/]+/?$")))

_STATUSES = {
    400: "Invalid request (INVALID_ARGUMENT), a body that is not JSON, or an artifact digest mismatch (DATA_LOSS).",
    401: "No valid bearer token (UNAUTHENTICATED).",
    403: "The token's role lacks the permission this operation needs (PERMISSION_DENIED).",
    404: "No such model, version, deployment or token (NOT_FOUND).",
    409: "Conflict: ALREADY_EXISTS, FAILED_PRECONDITION, or ABORTED (a concurrent change: re-read and retry).",
    413: "The body is larger than allowed.",
    415: "The body's media type is not the one the operation takes.",
    422: "The JSON body or a parameter does not match the schema (INVALID_ARGUMENT).",
    429: "RESOURCE_EXHAUSTED.",
    500: "Internal error (INTERNAL).",
    503: "The metadata store is unreachable (UNAVAILABLE).",
}
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {PROBLEM: {"schema": _PROBLEM_REF}}} for status, text in _STATUSES.items()
}

_DESCRIPTION = """\
Model storage, versions and deployments of LMaaS over HTTP: the same core objects, bearer tokens, roles
(one method→permission table) and audit trail as the gRPC API `lmaas.control.v1`.

* **Auth**: `Authorization: Bearer lmaas_<id>_<secret>` on every call (`--no-auth` opens everything). Each
  operation's `x-lmaas-rpc` names the gRPC method whose permission (`x-lmaas-permission`) it needs:
  reader → read, deployer → read + deploy, admin → everything.
* **Errors**: RFC 9457 `application/problem+json` with `code`, LMaaS's error code (the gRPC status name); the
  HTTP status comes from the same error table as the worker's. A body that is not JSON answers 400, JSON
  that does not match the schema 422.
* **Uploads**: `POST /api/v1/models/{name}/versions` with the artifact as the body,
  `X-LMaaS-Format` and `X-LMaaS-Sha256`; resume an interrupted upload from `GET /api/v1/uploads/{digest}`'s
  `offset` with `X-LMaaS-Offset`.
* **Rollouts**: `GET /api/v1/deployments/{name}/rollout/events` streams progress as server-sent events.
"""


class BodyLimit:
    """Refuses JSON bodies over ``limit`` bytes with 413 (the upload routes stream, bounded by their own limit)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_JSON_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(scope["method"] in verbs and path.match(scope["path"])
                                          for verbs, path in _UPLOADS):
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                response = problem_response(413, PayloadTooLarge.code.name,
                                            f"a body of {int(value)} bytes exceeds the limit of {self.limit} bytes",
                                            scope["path"])
                await response(scope, receive, send)
                return
        received = 0
        limit = self.limit

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, counted, send)


def create_app(plane: Any, *, sse_keepalive: float = 15.0) -> FastAPI:
    app = FastAPI(
        title=TITLE, version="1", description=_DESCRIPTION, openapi_url="/openapi.json", docs_url="/docs",
        redoc_url=None, swagger_ui_oauth2_redirect_url=None,
        generate_unique_id_function=lambda route: route.name,  # operationId = the handler's name
    )
    app.state.plane = plane
    app.state.auth = plane.auth
    app.state.sse_keepalive = sse_keepalive  # seconds between keep-alive comments of an idle event stream
    for router in (models.router, optimize.router, deployments.router, admin.router, console.router):
        app.include_router(router, prefix=API_PREFIX, responses=PROBLEM_RESPONSES)
    problems.install(app)
    console_ui.install(app)  # the web console at / (static files; it calls the routes above)
    app.add_middleware(BodyLimit)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        app.openapi_schema = openapi_document(app)
    return app.openapi_schema


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``: FastAPI's, plus the Problem schema and bearer security."""
    doc = get_openapi(title=app.title, version=app.version, openapi_version="3.1.0", description=app.description,
                      routes=app.routes, tags=_TAGS)
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {})["Problem"] = Problem.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "lmaas_<id>_<secret>",
                   "description": "A control-plane token (lmaas token create; lmaas up's STATE/admin.token)."}
    }
    doc["security"] = [{"bearer": []}]
    return doc


_TAGS = [
    {"name": "models", "description": "Models, their immutable versions, artifact uploads and downloads."},
    {"name": "deployments", "description": "What serves: deploy, canary, rollback, history, rollout progress."},
    {"name": "workers", "description": "The connected data plane."},
    {"name": "tokens", "description": "Bearer tokens (admin)."},
    {"name": "audit", "description": "The audit trail of mutations and denied attempts (admin)."},
]
