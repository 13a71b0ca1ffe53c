"""OIP / Triton generate extension: ``POST /v2/models/{m}[/versions/{v}]/generate`` and ``/generate_stream``.

Request: ``{"text_input": str, "parameters": {...}}``; sampling fields (``max_tokens``, ``temperature``, ``top_p``,
``top_k``, ``seed``, ``stop``, ``repetition_penalty``, ``frequency_penalty``, ``presence_penalty``,
``ignore_eos``) may sit in ``parameters``, at the top level (Triton maps top-level keys to parameters), or in a
``sampling_parameters`` JSON string (the name Triton's vLLM backend uses). ``exclude_input_in_output: false``
prefixes the prompt to the output (default: the completion only).

``generate`` answers one JSON object ``{"model_name", "model_version", "text_output", "finish_reason",
"num_output_tokens", "done": true}``; ``generate_stream`` answers server-sent events, one such object per engine
chunk with ``text_output`` the new text, ``done`` true on the last. Errors are OIP's ``{"error": "message"}``
with the status of the error class (400, 404, 429, 503); in a stream the status is fixed by the first event, so
a later failure is an in-band ``{"error": ...}`` event. A client that disconnects (streaming or not, queued or
generating) cancels its sequence.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from lmaas.protos.errors import Internal, InvalidArgument, Unavailable
from lmaas.server.dataplane import DataPlane
from lmaas.server.http._llm import (
    SAMPLING_FIELDS,
    FieldError,
    close_stream,
    lookup,
    opt_bool,
    opt_int,
    sampling_params,
    unless_disconnected,
)
from lmaas.server.http.asgi import Request, Response, Route, StreamingResponse, json_response, sse_event
from lmaas.server.llm.types import GenerationChunk, LLMModel

__all__ = ["build_routes"]

_DEFAULT_MAX_TOKENS = 16
_READ = (*SAMPLING_FIELDS, "max_tokens", "exclude_input_in_output")


def _merged_parameters(body: dict[str, Any]) -> dict[str, Any]:
    """Sampling fields from the top level, ``sampling_parameters`` (JSON string) and ``parameters`` (wins)."""
    merged = {k: body[k] for k in _READ if k in body}
    raw = body.get("sampling_parameters")
    if raw is not None:
        if not isinstance(raw, str):
            raise FieldError("sampling_parameters", "'sampling_parameters' must be a JSON string")
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise FieldError("sampling_parameters", f"'sampling_parameters' is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise FieldError("sampling_parameters", "'sampling_parameters' must hold a JSON object")
        merged.update(parsed)
    params = body.get("parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise FieldError("parameters", "'parameters' must be an object")
        merged.update(params)
    return merged


class _Generate:
    def __init__(self, dp: DataPlane) -> None:
        self.dp = dp

    async def _start(self, request: Request) -> tuple[LLMModel, str, GenerationChunk | None,
                                                       AsyncIterator[GenerationChunk]]:
        body = await request.json()
        if not isinstance(body, dict):
            raise InvalidArgument("the request body must be a JSON object")
        prompt = body.get("text_input")
        if not isinstance(prompt, str):
            raise FieldError("text_input", "'text_input' is required and must be a string")
        if not prompt:
            raise FieldError("text_input", "'text_input' must not be empty")
        merged = _merged_parameters(body)
        max_tokens = opt_int(merged, "max_tokens", minimum=1)
        exclude = opt_bool(merged, "exclude_input_in_output")
        llm = lookup(self.dp, request.params["model"], request.params.get("version", ""),
                     request.headers.get("x-lmaas-session", ""))
        params = sampling_params(merged, max_tokens, default_max_tokens=min(_DEFAULT_MAX_TOKENS, llm.max_new_tokens))
        chunks = llm.generate(prompt, params, request.headers.get("x-request-id") or uuid.uuid4().hex)
        try:  # errors before any byte set the HTTP status; a client may leave while queued
            first = await unless_disconnected(request, anext(chunks, None))
        except BaseException:
            await close_stream(chunks)
            raise
        return llm, (prompt if exclude is False else ""), first, chunks

    @staticmethod
    def _event(llm: LLMModel, text: str, chunk: GenerationChunk | None) -> dict[str, Any]:
        done = chunk is None or chunk.finish_reason is not None
        event: dict[str, Any] = {"model_name": llm.name, "model_version": str(llm.version), "text_output": text,
                                 "done": done}
        if chunk is not None and chunk.finish_reason is not None:
            event["finish_reason"] = chunk.finish_reason
            event["num_output_tokens"] = chunk.completion_tokens
        return event

    @staticmethod
    def _failure(chunk: GenerationChunk) -> Exception | None:
        if chunk.finish_reason == "error":
            return Internal(chunk.error or "generation failed")
        if chunk.finish_reason == "cancelled":
            return Unavailable(chunk.error or "generation was cancelled by the server (draining)")
        return None

    async def generate(self, request: Request) -> Response:
        llm, echo, first, chunks = await self._start(request)

        async def collect() -> tuple[str, GenerationChunk | None]:
            parts = [echo]
            last = None
            chunk = first
            try:
                while chunk is not None:
                    failure = self._failure(chunk)
                    if failure is not None:
                        raise failure
                    parts.append(chunk.text)
                    last = chunk
                    if chunk.finish_reason is not None:
                        break
                    chunk = await anext(chunks, None)
            finally:
                await close_stream(chunks)
            return "".join(parts), last

        text, last = await unless_disconnected(request, collect())  # leaving cancels the generation
        event = self._event(llm, text, last)
        event.setdefault("finish_reason", "stop")
        return json_response(event, headers=[("x-lmaas-model-version", str(llm.version))])

    async def generate_stream(self, request: Request) -> Response:
        llm, echo, first, chunks = await self._start(request)

        async def events() -> AsyncIterator[bytes]:
            try:
                if echo:
                    yield sse_event(self._event(llm, echo, None) | {"done": False})
                chunk = first
                while chunk is not None:
                    failure = self._failure(chunk)
                    if failure is not None:
                        yield sse_event({"error": str(failure)})
                        return
                    yield sse_event(self._event(llm, chunk.text, chunk))
                    if chunk.finish_reason is not None:
                        return
                    chunk = await anext(chunks, None)
                yield sse_event(self._event(llm, "", None) | {"finish_reason": "stop"})
            finally:
                await close_stream(chunks)

        return StreamingResponse(events(), headers=[("x-lmaas-model-version", str(llm.version))])


def build_routes(dp: DataPlane) -> list[Route]:
    g = _Generate(dp)
    return [
        Route("POST", "/v2/models/{model}/generate", g.generate),
        Route("POST", "/v2/models/{model}/versions/{version}/generate", g.generate),
        Route("POST", "/v2/models/{model}/generate_stream", g.generate_stream),
        Route("POST", "/v2/models/{model}/versions/{version}/generate_stream", g.generate_stream),
    ]
