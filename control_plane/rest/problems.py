"""Errors of the REST API as RFC 9457 ``application/problem+json``, in one place.

The status comes from ``http_status`` on the :mod:`lmaas.protos.errors` class (the table both transports
share), the ``code`` member is its gRPC status name. Store failures answer 503 UNAVAILABLE, as on gRPC;
anything unexpected is logged with its traceback and answers a generic 500.

Request validation by FastAPI: a body that is not JSON answers **400**; JSON (or a parameter) that does not
match the schema answers **422**; both carry code ``INVALID_ARGUMENT`` and the failing fields in ``errors``.
"""

from __future__ import annotations

import http
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from lmaas.control_plane.store import StoreError
from lmaas.protos.errors import InvalidArgument, LMaaSError, Unavailable, error_info
from starlette.exceptions import HTTPException

__all__ = [
    "PROBLEM",
    "RangeNotSatisfiable",
    "UnsupportedMediaType",
    "error_code",
    "install",
    "problem",
    "problem_response",
]

log = logging.getLogger("lmaas.rest")
PROBLEM = "application/problem+json"


class UnsupportedMediaType(InvalidArgument):
    """A body in a media type the route does not take (gRPC would say INVALID_ARGUMENT)."""

    http_status = 415


class RangeNotSatisfiable(InvalidArgument):
    """A ``Range`` outside the artifact."""

    http_status = 416


_BY_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
              405: "UNIMPLEMENTED", 406: "INVALID_ARGUMENT", 409: "FAILED_PRECONDITION", 413: "RESOURCE_EXHAUSTED",
              415: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}


def problem(status: int, code: str, detail: str, instance: str, **extra: Any) -> dict[str, Any]:
    return {"type": f"urn:lmaas:error:{code}", "title": http.HTTPStatus(status).phrase, "status": status,
            "detail": detail, "code": code, "instance": instance, **extra}


def problem_response(status: int, code: str, detail: str, instance: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="lmaas"'} if status == 401 else None
    return JSONResponse(problem(status, code, detail, instance, **extra), status_code=status, media_type=PROBLEM,
                        headers=headers)


def error_code(exc: BaseException) -> str:
    """The code an exception is recorded (audit) and answered with."""
    if isinstance(exc, LMaaSError):
        return str(exc.code.name)
    if isinstance(exc, StoreError):
        return str(Unavailable.code.name)
    if isinstance(exc, RequestValidationError):
        return str(InvalidArgument.code.name)
    if isinstance(exc, HTTPException):
        return _BY_STATUS.get(exc.status_code, "INTERNAL")
    return "INTERNAL"


def _lmaas(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LMaaSError)
    reason, metadata = error_info(exc)  # what gRPC's rich status carries, so both transports say the same
    extra = {"metadata": metadata} if metadata else {}
    return problem_response(exc.http_status, exc.code.name, exc.message, request.url.path, reason=reason, **extra)


def _store(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: metadata store failed: %s", request.method, request.url.path, exc)
    return problem_response(Unavailable.http_status, Unavailable.code.name, str(exc) or type(exc).__name__,
                            request.url.path)


def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type"))}
              for e in exc.errors()]
    not_json = any(e["type"] == "json_invalid" for e in errors)
    status = 400 if not_json else 422
    detail = "the body is not valid JSON" if not_json else _first_error(errors)
    return problem_response(status, "INVALID_ARGUMENT", detail, request.url.path, errors=errors)


def _first_error(errors: list[dict[str, Any]]) -> str:
    if not errors:
        return "invalid request"
    where = ".".join(errors[0]["loc"]) or "request"
    return f"invalid {where}: {errors[0]['msg']}"


def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    cause = exc.__cause__
    if isinstance(cause, LMaaSError):  # FastAPI wraps errors raised while it reads a body (a size limit)
        return _lmaas(request, cause)
    detail = exc.detail if isinstance(exc.detail, str) else http.HTTPStatus(exc.status_code).phrase
    if exc.status_code == 400 and "parsing the body" in detail:
        detail = "the body could not be read"
    return problem_response(exc.status_code, _BY_STATUS.get(exc.status_code, "INTERNAL"), detail, request.url.path)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed with an unexpected error", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "INTERNAL", "internal error; see the control plane's log", request.url.path)


def install(app: FastAPI) -> None:
    app.add_exception_handler(LMaaSError, _lmaas)
    app.add_exception_handler(StoreError, _store)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
