"""API-key check for the worker's inference port (``--require-api-key``).

Clients send ``authorization: Bearer <key>`` (or ``x-api-key: <key>``), as gRPC
metadata or HTTP headers. Keys are kept as sha256 digests and compared in
constant time. Health checks and reflection stay open (HTTP: the
``/v2/health/*`` routes): Kubernetes' probes cannot send headers.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc
from lmaas.protos.errors import Unauthenticated

__all__ = ["ApiKeyInterceptor", "ApiKeys", "read_api_keys"]

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def read_api_keys(text: str) -> list[str]:
    """Keys from a file or variable: one per line or comma-separated; blank lines and # comments skipped."""
    keys = []
    for line in text.replace(",", "\n").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            keys.append(line)
    return keys


def _presented_key(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str) and value.lower().startswith("bearer "):
            return value[7:].strip()
        if name == "x-api-key" and isinstance(value, str):
            return value.strip()
    return None


def _reject(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def abort_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    args = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    kind = (handler.request_streaming, handler.response_streaming)
    if kind == (False, False):
        return grpc.unary_unary_rpc_method_handler(abort_unary, **args)
    if kind == (True, False):
        return grpc.stream_unary_rpc_method_handler(abort_unary, **args)
    if kind == (False, True):
        return grpc.unary_stream_rpc_method_handler(abort_stream, **args)
    return grpc.stream_stream_rpc_method_handler(abort_stream, **args)


class ApiKeys:
    """The accepted keys, as digests; one check for both transports."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(k) for k in keys]
        if not self._digests:
            raise ValueError("--require-api-key needs at least one key (--api-key-file or LMAAS_API_KEYS)")

    def allowed(self, key: str | None) -> bool:
        if key is None:
            return False
        presented = _digest(key)
        return any(hmac.compare_digest(presented, d) for d in self._digests)

    def check_headers(self, headers: Mapping[str, str]) -> None:
        """HTTP: raise :class:`Unauthenticated` unless lower-case ``headers`` carry an accepted key."""
        key = _presented_key(headers.items())
        if key is None:
            raise Unauthenticated("an API key is required (Authorization: Bearer KEY)")
        if not self.allowed(key):
            raise Unauthenticated("the API key is not valid")


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = ApiKeys(keys)

    def allowed(self, key: str | None) -> bool:
        return self.keys.allowed(key)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_SERVICES):
            return handler
        key = _presented_key(handler_call_details.invocation_metadata)
        if key is None:
            return _reject(
                handler, grpc.StatusCode.UNAUTHENTICATED, "an API key is required (authorization: Bearer KEY)"
            )
        if not self.allowed(key):
            return _reject(handler, grpc.StatusCode.UNAUTHENTICATED, "the API key is not valid")
        return handler
