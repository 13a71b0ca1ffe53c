"""OpenAI-compatible routes on the worker's HTTP port: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``,
``/v1/embeddings``.

Thin, like every transport: read and check the JSON, look the model up through the DataPlane, call
:meth:`LLMModel.generate`, write OpenAI's objects. Wire details that clients rely on:

* ``stream: true`` answers server-sent events: one ``chat.completion.chunk`` (or ``text_completion``) per engine
  chunk, the first carrying ``role``, the last ``finish_reason``; with ``stream_options.include_usage`` every chunk
  has ``"usage": null`` and one more chunk with ``"choices": []`` and the totals comes before ``data: [DONE]``.
* The HTTP status is fixed before the first event: the engine's first chunk is awaited before answering, so an
  unknown model, a prompt over the context or a full queue get their own status. Later failures are in-band
  events ``{"error": {...}}`` (the ``openai`` package raises ``APIError`` on them).
* ``system_fingerprint`` (and the ``X-LMaaS-Model-Version`` header) name the version and digest that answered.
* A client that disconnects mid-stream closes the event generator, which closes the engine's iterator: the
  sequence is cancelled at the next engine step. A non-streaming request (or one still queued) watches the
  connection while it waits (:func:`~lmaas.server.http._llm.unless_disconnected`): leaving cancels it too.
* Errors are OpenAI's object ``{"error": {"message", "type", "param", "code"}}``; ``code`` is the HTTP status
  (as vLLM sends it), ``param`` names the offending field. 400 invalid, 401 no/bad API key (from the app's key
  check, in OIP's shape), 404 unknown model, 429 queue full, 503 draining.
* ``/v1/embeddings`` answers for a sentence-embedding version (backend ``sentence_transformers``): the texts go
  through the DataPlane's ordinary ``infer`` (validation, dynamic batching, metrics), ``float`` or ``base64``.
* The conversation key (``user``, or the ``X-LMaaS-Session`` header) keeps a conversation on one version during a
  canary (:func:`lmaas.server.routing.sticky_draw`).
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
from lmaas.protos.errors import Internal, InvalidArgument, LMaaSError, ModelNotFound, Unavailable
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.tensors import decode_raw, encode_raw
from lmaas.server.backends.embedding import PLATFORM as EMBEDDING_PLATFORM
from lmaas.server.dataplane import DataPlane
from lmaas.server.http._llm import (
    FieldError,
    close_stream,
    fingerprint,
    list_llms,
    lookup,
    opt_bool,
    opt_int,
    opt_str,
    param_of,
    sampling_params,
    unless_disconnected,
)
from lmaas.server.http.asgi import Request, Response, Route, StreamingResponse, json_response, sse_event
from lmaas.server.llm.types import ChatMessage, GenerationChunk, LLMModel

__all__ = ["build_routes", "openai_error"]

_DONE = b"data: [DONE]\n\n"
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}
_COMPLETIONS_DEFAULT = 16  # OpenAI's default for /v1/completions
_SESSION_HEADER = "x-lmaas-session"


def openai_error(exc: LMaaSError) -> dict[str, Any]:
    """OpenAI's error object for an LMaaS error."""
    status = exc.http_status
    code = "model_not_found" if isinstance(exc, ModelNotFound) else status
    param = "model" if isinstance(exc, ModelNotFound) else param_of(exc)
    return {
        "error": {
            "message": exc.message,
            "type": _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def _errors(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """OpenAI's error shape instead of OIP's for everything a route raises."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except LMaaSError as exc:
            return json_response(openai_error(exc), exc.http_status)

    return wrapped


async def _object(request: Request) -> dict[str, Any]:
    body = await request.json()
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return body


def _model_name(body: dict[str, Any]) -> str:
    name = opt_str(body, "model")
    if not name:
        raise FieldError("model", "'model' is required: the name of a model this worker serves (GET /v1/models)")
    return name


def _reject_unsupported(body: dict[str, Any]) -> None:
    n = opt_int(body, "n", minimum=1)
    if n is not None and n != 1:
        raise FieldError("n", f"'n' must be 1 (one choice per request), got {n}")
    best_of = opt_int(body, "best_of", minimum=1)
    if best_of is not None and best_of != 1:
        raise FieldError("best_of", f"'best_of' must be 1, got {best_of}")
    if body.get("logprobs") not in (None, False, 0):
        raise FieldError("logprobs", "'logprobs' is not supported by this server")
    if body.get("tools"):
        raise FieldError("tools", "'tools' (function calling) is not supported by this server")
    if body.get("logit_bias"):
        raise FieldError("logit_bias", "'logit_bias' is not supported by this server")
    response_format = body.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict) or response_format.get("type") != "text"):
        raise FieldError("response_format", "only 'response_format' {\"type\": \"text\"} is supported")
    if body.get("suffix"):
        raise FieldError("suffix", "'suffix' is not supported by this server")


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = bool(opt_bool(body, "stream"))
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise FieldError("stream_options", "'stream_options' must be an object")
    if not stream:
        raise FieldError("stream_options", "'stream_options' is only allowed with 'stream': true")
    return stream, bool(opt_bool(options, "include_usage", where="stream_options."))


def _max_tokens(body: dict[str, Any]) -> int | None:
    value = opt_int(body, "max_completion_tokens", minimum=1)
    return value if value is not None else opt_int(body, "max_tokens", minimum=1)


def _content(message: dict[str, Any], where: str) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise FieldError(f"{where}.content[{j}]", f"'{where}.content[{j}]' must be a text part "
                                                          "{\"type\": \"text\", \"text\": ...}; only text is supported")
            texts.append(part["text"])
        return "".join(texts)
    raise FieldError(f"{where}.content", f"'{where}.content' must be a string or an array of text parts")


def _messages(body: dict[str, Any]) -> list[ChatMessage]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise FieldError("messages", "'messages' must be a non-empty array of {role, content} objects")
    out = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise FieldError(where, f"'{where}' must be an object")
        role = message.get("role")
        if role not in _ROLES:
            raise FieldError(f"{where}.role", f"'{where}.role' must be one of {', '.join(_ROLES)}, got {role!r}")
        out.append(ChatMessage(_ROLES[role], _content(message, where)))
    return out


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise FieldError("prompt", "'prompt' must be a string (or an array holding one string)")
    if not prompt:
        raise FieldError("prompt", "'prompt' must not be empty")
    return prompt


_MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit per request


def _embedding_inputs(body: dict[str, Any]) -> list[str]:
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise FieldError("input", "'input' must be a string or a non-empty array of strings (token arrays are not "
                                  "supported)")
    if len(texts) > _MAX_EMBEDDING_INPUTS:
        raise FieldError("input", f"'input' has {len(texts)} items; at most {_MAX_EMBEDDING_INPUTS} are allowed")
    if any(not t for t in texts):
        raise FieldError("input", "'input' strings must not be empty")
    return texts


def _conversation_key(body: dict[str, Any], request: Request) -> str:
    return opt_str(body, "user") or request.headers.get(_SESSION_HEADER, "")


async def _first(chunks: AsyncIterator[GenerationChunk]) -> GenerationChunk | None:
    """The engine's first chunk: its errors (context, queue full) come before any byte is sent."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None
    except BaseException:
        await close_stream(chunks)
        raise


def _fail_reason(chunk: GenerationChunk) -> LMaaSError | None:
    if chunk.finish_reason == "error":
        return Internal(chunk.error or "generation failed")
    if chunk.finish_reason == "cancelled":
        return Unavailable(chunk.error or "generation was cancelled by the server (draining)")
    return None


class _Completion:
    """One request's identity and bookkeeping, shared by the JSON and SSE writers."""

    def __init__(self, llm: LLMModel, kind: str, include_usage: bool) -> None:
        self.llm = llm
        self.kind = kind  # "chat" | "text"
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.fingerprint = fingerprint(llm)
        self.include_usage = include_usage
        self.prompt_tokens = self.completion_tokens = 0

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("x-lmaas-model-version", str(self.llm.version)), ("x-request-id", self.id)]

    def count(self, chunk: GenerationChunk) -> None:
        self.prompt_tokens = chunk.prompt_tokens or self.prompt_tokens
        self.completion_tokens = max(self.completion_tokens, chunk.completion_tokens)

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.llm.name,
                "system_fingerprint": self.fingerprint, "choices": choices}

    def chunk(self, text: str | None, finish: str | None, *, first: bool = False) -> bytes:
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": text or ""} if first else (
                {"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            event = self.envelope("chat.completion.chunk", [choice])
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            event = self.envelope("text_completion", [choice])
        if self.include_usage:
            event["usage"] = None
        return sse_event(event)

    def usage_chunk(self) -> bytes:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return sse_event({**self.envelope(obj, []), "usage": self.usage()})


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


async def _events(c: _Completion, first: GenerationChunk | None, chunks: AsyncIterator[GenerationChunk],
                  echo: str = "") -> AsyncIterator[bytes]:
    """The SSE body; closing it (client gone) closes ``chunks``, which cancels the sequence."""
    try:
        if c.kind == "chat":
            yield c.chunk("", None, first=True)
        elif echo:
            yield c.chunk(echo, None)
        chunk = first
        while chunk is not None:
            c.count(chunk)
            failure = _fail_reason(chunk)
            if failure is not None:
                yield sse_event(openai_error(failure))
                break
            if chunk.finish_reason is not None:
                yield c.chunk(chunk.text or None, _finish(chunk.finish_reason))
                break
            if chunk.text:
                yield c.chunk(chunk.text, None)
            chunk = await anext(chunks, None)
        else:
            yield c.chunk(None, "stop")  # the engine ended without a finish reason: treat it as a stop
        if c.include_usage:
            yield c.usage_chunk()
        yield _DONE
    finally:
        await close_stream(chunks)


async def _collect(c: _Completion, first: GenerationChunk | None,
                   chunks: AsyncIterator[GenerationChunk]) -> tuple[str, str]:
    """The whole completion text and finish reason (non-streaming answers)."""
    parts: list[str] = []
    finish: str | None = None
    try:
        chunk = first
        while chunk is not None:
            c.count(chunk)
            failure = _fail_reason(chunk)
            if failure is not None:
                raise failure
            parts.append(chunk.text)
            if chunk.finish_reason is not None:
                finish = chunk.finish_reason
                break
            chunk = await anext(chunks, None)
    finally:
        await close_stream(chunks)
    return "".join(parts), _finish(finish)


class _Routes:
    def __init__(self, dp: DataPlane) -> None:
        self.dp = dp

    async def _start(self, body: dict[str, Any], request: Request, prompt_of: Callable[[LLMModel], str],
                     default_max_tokens: Callable[[LLMModel, str], int], kind: str
                     ) -> tuple[_Completion, bool, GenerationChunk | None, AsyncIterator[GenerationChunk], str]:
        name = _model_name(body)
        _reject_unsupported(body)
        stream, include_usage = _stream_flags(body)
        max_tokens = _max_tokens(body)
        llm = lookup(self.dp, name, "", _conversation_key(body, request))
        prompt = prompt_of(llm)
        default = default_max_tokens(llm, prompt) if max_tokens is None else 0
        params = sampling_params(body, max_tokens, default_max_tokens=default)
        c = _Completion(llm, kind, include_usage)
        chunks = llm.generate(prompt, params, c.id)
        first = await unless_disconnected(request, _first(chunks))  # a client may leave while queued
        return c, stream, first, chunks, prompt

    async def chat(self, request: Request) -> Response:
        body = await _object(request)
        messages = _messages(body)

        def room(llm: LLMModel, prompt: str) -> int:
            # Without max_tokens a chat reply may use the rest of the context (vLLM does the same).
            return max(1, min(llm.max_new_tokens, llm.context_length - llm.count_tokens(prompt)))

        c, stream, first, chunks, _ = await self._start(
            body, request, lambda llm: llm.chat_prompt(messages), room, "chat")
        if stream:
            return StreamingResponse(_events(c, first, chunks), headers=c.headers)
        text, finish = await unless_disconnected(request, _collect(c, first, chunks))
        message = {"role": "assistant", "content": text}
        answer = c.envelope("chat.completion", [{"index": 0, "message": message, "logprobs": None,
                                                 "finish_reason": finish}])
        return json_response({**answer, "usage": c.usage()}, headers=c.headers)

    async def completions(self, request: Request) -> Response:
        body = await _object(request)
        prompt = _prompt(body)
        echo = bool(opt_bool(body, "echo"))
        c, stream, first, chunks, _ = await self._start(
            body, request, lambda llm: prompt, lambda llm, p: min(_COMPLETIONS_DEFAULT, llm.max_new_tokens), "text")
        if stream:
            return StreamingResponse(_events(c, first, chunks, prompt if echo else ""), headers=c.headers)
        text, finish = await unless_disconnected(request, _collect(c, first, chunks))
        choice = {"index": 0, "text": (prompt if echo else "") + text, "logprobs": None, "finish_reason": finish}
        return json_response({**c.envelope("text_completion", [choice]), "usage": c.usage()}, headers=c.headers)

    async def embeddings(self, request: Request) -> Response:
        body = await _object(request)
        name = _model_name(body)
        texts = _embedding_inputs(body)
        encoding = opt_str(body, "encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise FieldError("encoding_format", f"'encoding_format' must be 'float' or 'base64', got {encoding!r}")
        dimensions = opt_int(body, "dimensions", minimum=1)
        if self.dp.draining:
            raise Unavailable("worker is shutting down")
        mv = self.dp.manager.get(name, "", key=_conversation_key(body, request))
        if getattr(getattr(mv, "backend", None), "platform", "") != EMBEDDING_PLATFORM:
            raise FieldError("model", f"model '{name}' is not an embedding model")
        size = mv.outputs["embedding"].shape[-1]
        if dimensions is not None and dimensions != size:
            raise FieldError("dimensions", f"'dimensions' must be {size} for this model, got {dimensions}")
        array = np.array([t.encode() for t in texts], dtype=object)
        infer = pb.ModelInferRequest(model_name=name, model_version=str(mv.version))
        infer.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
        infer.raw_input_contents.append(encode_raw(array))
        answer = await self.dp.infer(infer, None)
        out = {t.name: decode_raw(t.name, t.datatype, list(t.shape), raw, role="output")
               for t, raw in zip(answer.outputs, answer.raw_output_contents, strict=True)}
        vectors = np.ascontiguousarray(out["embedding"], dtype="<f4")
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.tobytes()).decode() if encoding == "base64" else v.tolist()}
                for i, v in enumerate(vectors)]
        tokens = int(out["num_tokens"].sum())
        return json_response({"object": "list", "data": data, "model": name,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                             headers=[("x-lmaas-model-version", str(mv.version))])

    def _card(self, llm: LLMModel) -> dict[str, Any]:
        return {"id": llm.name, "object": "model", "created": 0, "owned_by": "lmaas", "root": llm.name,
                "max_model_len": llm.context_length, "version": str(llm.version),
                "system_fingerprint": fingerprint(llm)}

    def _embedding_cards(self) -> list[dict[str, Any]]:
        return [{"id": mv.name, "object": "model", "created": 0, "owned_by": "lmaas", "root": mv.name,
                 "version": str(mv.version)}
                for mv in self.dp.manager.loaded()
                if getattr(getattr(mv, "backend", None), "platform", "") == EMBEDDING_PLATFORM]

    async def models(self, request: Request) -> Response:
        cards = [self._card(llm) for llm in list_llms(self.dp)] + self._embedding_cards()
        return json_response({"object": "list", "data": cards})

    async def model(self, request: Request) -> Response:
        name = request.params["model"]
        for llm in list_llms(self.dp):
            if llm.name == name:
                return json_response(self._card(llm))
        raise ModelNotFound(name)


def build_routes(dp: DataPlane) -> list[Route]:
    routes = _Routes(dp)
    return [
        Route("POST", "/v1/chat/completions", _errors(routes.chat)),
        Route("POST", "/v1/completions", _errors(routes.completions)),
        Route("POST", "/v1/embeddings", _errors(routes.embeddings)),
        Route("GET", "/v1/models", _errors(routes.models)),
        Route("GET", "/v1/models/{model}", _errors(routes.model)),
    ]
