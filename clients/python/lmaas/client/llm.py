"""Streaming text generation over OIP v2 gRPC ``ModelStreamInfer`` (Triton's decoupled shape).

:class:`LLMClient` (blocking) and :class:`AsyncLLMClient` (asyncio) are the inference clients with
``generate``: text chunks as the model produces them::

    with LLMClient("127.0.0.1:8001") as client:
        for text in client.generate("smollm2", "The capital of France is", max_tokens=32, temperature=0):
            print(text, end="", flush=True)

Sampling keywords travel as the ``sampling_parameters`` JSON string (the name Triton's vLLM backend uses):
``max_tokens``, ``temperature`` (0 = greedy), ``top_p``, ``top_k``, ``seed``, ``stop`` (a string or a list),
``repetition_penalty``, ``frequency_penalty``, ``presence_penalty``, ``ignore_eos``. The server validates
them. :meth:`LLMClient.stream` yields :class:`TextChunk` objects instead, with the finish reason and the
version that answered. Leaving the loop early (``break``, closing the generator, cancelling the task)
cancels the RPC, and the server frees the sequence at its next step. An error the server reports in-band
(``error_message``) raises :class:`~lmaas.protos.errors.LMaaSError` (the class of its status when the server
names it in the response parameter ``error_code``); a failed RPC raises the class of its status.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from lmaas.client._grpc import Metadata, to_error
from lmaas.client._tensors import decode_output
from lmaas.client.inference import AsyncInferenceClient, InferenceClient, infer_request
from lmaas.protos.errors import LMaaSError, from_status
from lmaas.protos.inference import grpc_service_pb2 as pb

__all__ = ["AsyncLLMClient", "LLMClient", "TextChunk", "generate_request"]


@dataclass(frozen=True)
class TextChunk:
    """New text of one streamed response; ``finish_reason`` (stop | length | cancelled) only on the last."""

    text: str
    finish_reason: str = ""
    model_version: str = ""
    final: bool = False
    num_output_tokens: int = 0  # tokens in this response (the server may send it on the last one only)


def generate_request(model: str, prompt: str, sampling: Mapping[str, Any], *, version: str | int = "",
                     request_id: str = "") -> pb.ModelInferRequest:
    """The streaming request :meth:`LLMClient.generate` sends: ``text_input``, ``stream``, ``sampling_parameters``."""
    inputs: dict[str, Any] = {
        "text_input": np.array([prompt.encode()], dtype=object),
        "stream": np.array([True]),
    }
    if sampling:
        inputs["sampling_parameters"] = np.array([json.dumps(dict(sampling)).encode()], dtype=object)
    return infer_request(model, inputs, version=version, request_id=request_id)


def _text(value: Any) -> str:
    item = value.reshape(-1)[0] if value.size else b""
    return item.decode(errors="replace") if isinstance(item, bytes) else str(item)


def _chunk(message: pb.ModelStreamInferResponse) -> TextChunk:
    response = message.infer_response
    if message.error_message:
        # Triton's in-band error carries a message only; a server may name the status in ``error_code``.
        code = response.parameters["error_code"].string_param if "error_code" in response.parameters else ""
        status = getattr(grpc.StatusCode, code, None)
        raise from_status(status, message.error_message) if status else LMaaSError(message.error_message)
    raw = list(response.raw_output_contents)
    outputs = {t.name: decode_output(t, raw[i] if i < len(raw) else None) for i, t in enumerate(response.outputs)}
    params = response.parameters
    final = "triton_final_response" in params and params["triton_final_response"].bool_param
    finish = _text(outputs["finish_reason"]) if "finish_reason" in outputs else ""
    if not finish and "finish_reason" in params:
        finish = params["finish_reason"].string_param
    text = _text(outputs["text_output"]) if "text_output" in outputs else ""
    tokens = int(outputs["num_output_tokens"].reshape(-1)[0]) if "num_output_tokens" in outputs else 0
    if not tokens and "num_output_tokens" in params:
        tokens = int(params["num_output_tokens"].int64_param)
    return TextChunk(text, finish, response.model_version, bool(final), tokens)


class LLMClient(InferenceClient):
    """:class:`~lmaas.client.InferenceClient` plus streaming generation (same arguments)."""

    def __enter__(self) -> LLMClient:
        return self

    def stream(self, model: str, prompt: str, *, version: str | int = "", timeout: float | None = None,
               request_id: str = "", metadata: Metadata = (), **sampling: Any) -> Iterator[TextChunk]:
        """Stream the completion of ``prompt`` as :class:`TextChunk` objects, ending at the final response."""
        request = generate_request(model, prompt, sampling, version=version, request_id=request_id)
        # The request side stays open until the final response: closing it early would end the stream.
        done = _Latch()
        call = self._stub.ModelStreamInfer(done.requests(request), timeout=self._timeout(timeout),
                                           metadata=self._metadata(metadata) or None)
        try:
            for message in call:
                chunk = _chunk(message)
                if chunk.text or chunk.finish_reason:
                    yield chunk
                if chunk.final:
                    return
        except grpc.RpcError as exc:
            raise to_error(exc) from exc
        finally:
            done.set()
            call.cancel()  # a no-op after the final response; frees the server's sequence otherwise

    def generate(self, model: str, prompt: str, *, version: str | int = "", timeout: float | None = None,
                 request_id: str = "", metadata: Metadata = (), **sampling: Any) -> Iterator[str]:
        """Stream the completion of ``prompt`` as text chunks (see the module docstring for ``sampling``)."""
        for chunk in self.stream(model, prompt, version=version, timeout=timeout, request_id=request_id,
                                 metadata=metadata, **sampling):
            if chunk.text:
                yield chunk.text


class AsyncLLMClient(AsyncInferenceClient):
    """The asyncio twin of :class:`LLMClient`."""

    async def __aenter__(self) -> AsyncLLMClient:
        return self

    async def stream(self, model: str, prompt: str, *, version: str | int = "", timeout: float | None = None,
                     request_id: str = "", metadata: Metadata = (), **sampling: Any) -> AsyncIterator[TextChunk]:
        """Stream the completion of ``prompt`` as :class:`TextChunk` objects, ending at the final response."""
        request = generate_request(model, prompt, sampling, version=version, request_id=request_id)
        call = self._stub.ModelStreamInfer(timeout=self._timeout(timeout), metadata=self._metadata(metadata) or None)
        try:
            await call.write(request)
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    return
                chunk = _chunk(message)
                if chunk.text or chunk.finish_reason:
                    yield chunk
                if chunk.final:
                    return
        except grpc.RpcError as exc:
            raise to_error(exc) from exc
        finally:
            call.cancel()

    async def generate(self, model: str, prompt: str, *, version: str | int = "", timeout: float | None = None,
                       request_id: str = "", metadata: Metadata = (), **sampling: Any) -> AsyncIterator[str]:
        """Stream the completion of ``prompt`` as text chunks."""
        async for chunk in self.stream(model, prompt, version=version, timeout=timeout, request_id=request_id,
                                       metadata=metadata, **sampling):
            if chunk.text:
                yield chunk.text


class _Latch:
    """A request iterator that sends one request, then blocks until :meth:`set` (the stream's half-close)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def requests(self, request: pb.ModelInferRequest) -> Iterator[pb.ModelInferRequest]:
        yield request
        self._event.wait()
