"""The one place where exceptions become gRPC statuses (STYLE: errors).

:class:`~lmaas.protos.errors.LMaaSError` subclasses carry their status code;
anything else is a bug: logged with its traceback, answered INTERNAL with a
generic message (no internals leak to clients).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from lmaas.protos.errors import LMaaSError

__all__ = ["ErrorInterceptor"]

log = logging.getLogger("lmaas.grpc")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], method: str, exc: Exception) -> None:
    if isinstance(exc, LMaaSError):
        await context.abort(exc.code, exc.message)
    log.error("unhandled error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.rsplit('/', 1)[-1]}; see server log")


def _wrap_unary(method: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await fn(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, method, exc)

    return handler


def _wrap_stream(method: str, fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for item in fn(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, method, exc)

    return handler


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        kind = (handler.request_streaming, handler.response_streaming)
        args = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if kind == (False, False):
            wrapped = grpc.unary_unary_rpc_method_handler(_wrap_unary(method, handler.unary_unary), **args)
        elif kind == (True, False):
            wrapped = grpc.stream_unary_rpc_method_handler(_wrap_unary(method, handler.stream_unary), **args)
        elif kind == (False, True):
            wrapped = grpc.unary_stream_rpc_method_handler(_wrap_stream(method, handler.unary_stream), **args)
        else:
            wrapped = grpc.stream_stream_rpc_method_handler(_wrap_stream(method, handler.stream_stream), **args)
        self._wrapped[method] = wrapped
        return wrapped
