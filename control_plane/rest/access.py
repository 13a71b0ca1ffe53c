"""Authentication, authorization and audit of REST routes, through the gRPC API's one table.

Every route names the row of :data:`lmaas.control_plane.auth.METHODS` it needs (``rpc=`` of
:func:`route_options`: the RPC it mirrors, or its ``"VERB /path"`` row); :class:`AuthorizedRoute` checks
the caller before the body is read, so a caller without a token gets 401 whatever it sent. Calls of
:data:`~lmaas.control_plane.auth.AUDITED` methods, and denied attempts at them, are written to the same
audit trail as gRPC calls, under the RPC's name; a route describes its call by setting
``request.state.audit`` to the gRPC request message it is equivalent to.

A route that takes a JSON body also refuses other media types (415) before parsing, and every route refuses
query parameters it does not declare (422), so a misspelt one is not silently ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from lmaas.control_plane.auth import AUDITED, METHODS, AuthInterceptor, Principal
from lmaas.control_plane.rest.problems import UnsupportedMediaType, error_code
from lmaas.protos.errors import LMaaSError, PermissionDenied, Unauthenticated
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

__all__ = ["RPC_KEY", "AuthorizedRoute", "principal", "route_options"]

log = logging.getLogger("lmaas.rest")
RPC_KEY = "x-lmaas-rpc"


def route_options(rpc: str) -> dict[str, Any]:
    """``openapi_extra`` naming the access-table row of a route (also shown in the OpenAPI document)."""
    if rpc not in METHODS:
        raise KeyError(f"{rpc} is not in lmaas.control_plane.auth.METHODS")
    return {RPC_KEY: rpc, "x-lmaas-permission": METHODS[rpc].value}


def principal(request: Request) -> Principal:
    """The caller of the running route, as :class:`AuthorizedRoute` admitted it."""
    who: Principal = request.state.principal
    return who


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _peer(request: Request) -> str:
    client = request.client
    return f"http:{client.host}:{client.port}" if client else "http:"


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class AuthorizedRoute(APIRoute):
    """An APIRoute that admits the caller per the access table and audits mutations."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()
        rpc = (self.openapi_extra or {}).get(RPC_KEY)
        if rpc is None:
            raise KeyError(f"route {self.path} names no access-table row (openapi_extra=route_options(...))")
        permission = METHODS[rpc]
        audited = rpc in AUDITED
        takes_json = self.body_field is not None
        known_query = frozenset(p.alias for p in self.dependant.query_params)

        async def handler(request: Request) -> Response:
            auth: AuthInterceptor = request.app.state.auth
            try:
                who = await auth.principal_of(_bearer(request))
                auth.authorize(rpc, permission, who)
            except (Unauthenticated, PermissionDenied) as exc:
                log.warning("denied %s %s from %s: %s", request.method, request.url.path, _peer(request), exc.message)
                if audited:
                    try:
                        denied = await auth.principal_of(_bearer(request))
                    except LMaaSError:
                        denied = Principal("unauthenticated", pb.ROLE_UNSPECIFIED)
                    await auth.audit(rpc, denied, f"{request.method} {request.url.path}", exc.code.name,
                                     exc.message, _peer(request))
                raise
            request.state.principal = who
            unknown = [key for key in request.query_params if key not in known_query]
            if unknown:  # a misspelt parameter must not be silently ignored
                raise RequestValidationError([
                    {"loc": ("query", key), "msg": "unknown query parameter", "type": "extra_forbidden"}
                    for key in unknown
                ])
            content_type = request.headers.get("content-type")
            if takes_json and content_type and not _is_json(content_type):
                raise UnsupportedMediaType(f"the body must be application/json, not {content_type}")
            if not audited:
                return await inner(request)
            try:
                response = await inner(request)
            except BaseException as exc:
                message = _message(exc)
                await auth.audit(rpc, who, _described(request), error_code(exc), message, _peer(request))
                raise
            await auth.audit(rpc, who, _described(request), "OK", "", _peer(request))
            return response

        return handler


def _message(exc: BaseException) -> str:
    if isinstance(exc, LMaaSError):
        return exc.message
    if isinstance(exc, RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        return f"invalid request: {'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg', '')}"
    return type(exc).__name__


def _described(request: Request) -> object:
    return getattr(request.state, "audit", None) or f"{request.method} {request.url.path}"
