"""The one place where exceptions become gRPC statuses (control-plane server).

:class:`ErrorInterceptor` wraps every handler: an
:class:`~lmaas.protos.errors.LMaaSError` aborts with its own code and message;
exceptions of third-party types named in ``translate`` (e.g. the metadata
store's ``StoreError`` → UNAVAILABLE) abort with the mapped code and their
message; anything else aborts with INTERNAL and a generic message, and its
traceback is logged. Cancellation and aborts raised by handlers pass through.

Written to be shared: it knows nothing of the control plane beyond the
``translate`` table it is given.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NoReturn

import grpc
import grpc.aio
from lmaas.protos.errors import LMaaSError

__all__ = ["ErrorInterceptor"]

log = logging.getLogger(__name__)

Translate = Mapping[type[BaseException], grpc.StatusCode]


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, translate: Translate | None = None) -> None:
        self._translate = dict(translate or {})

    async def _abort(self, exc: Exception, context: grpc.aio.ServicerContext[Any, Any], method: str) -> NoReturn:
        if isinstance(exc, LMaaSError):
            await context.abort(exc.code, exc.message)
        for cls, code in self._translate.items():
            if isinstance(exc, cls):
                log.warning("%s failed: %s: %s", method, type(exc).__name__, exc)
                await context.abort(code, str(exc) or type(exc).__name__)
        log.error("%s failed with an unexpected error", method, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error (logged by the server)")
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        abort = self._abort
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    return await inner_uu(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await abort(exc, context, method)

            return grpc.unary_unary_rpc_method_handler(unary_unary, **kwargs)
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    return await inner_su(requests, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await abort(exc, context, method)

            return grpc.stream_unary_rpc_method_handler(stream_unary, **kwargs)
        inner_stream = handler.unary_stream or handler.stream_stream

        async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            try:
                async for response in inner_stream(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await abort(exc, context, method)

        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
        return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)
