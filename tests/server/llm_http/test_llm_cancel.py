"""A client that drops a *non-streaming* generation cancels it: HTTP (OpenAI, OIP generate) and unary gRPC.

The request asks for far more tokens than could be generated while the test waits (``ignore_eos``), the client
leaves once the sequence is running, and the worker must take it out of the batch: the running gauge drops to 0,
one more request finishes with reason ``cancelled``, and the generated-token counter stays far below
``max_tokens``. Every wait is on a condition, never on a clock.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from llm_http_kit import MODEL, eventually, metric
from processes import ServerProcess

LONG = 400  # tokens asked for; running to the end would show in the counter

_LABELS = {"model": MODEL, "version": "1"}


def _gauge(worker: ServerProcess) -> float:
    return metric(worker, "lmaas_llm_running_sequences", **_LABELS)


def _counters(worker: ServerProcess) -> tuple[float, float]:
    return (metric(worker, "lmaas_llm_generation_tokens_total", **_LABELS),
            metric(worker, "lmaas_llm_requests_finished_total", **_LABELS, reason="cancelled"))


def _assert_cancelled(worker: ServerProcess, before: tuple[float, float]) -> None:
    generated, cancelled = before
    assert eventually(lambda: _gauge(worker) == 0), "the sequence is still running after its client left"
    assert eventually(lambda: _counters(worker)[1] == cancelled + 1), "no request finished as cancelled"
    spent = _counters(worker)[0] - generated
    assert spent < LONG / 2, f"{spent} of {LONG} tokens were generated for a request whose client had left"


def _post_and_drop(worker: ServerProcess, path: str, body: dict[str, Any]) -> None:
    """Send one request on a raw socket, wait until its sequence runs, then close the socket unread."""
    host, port = worker.http.rsplit(":", 1)
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {worker.http}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + payload)
        assert eventually(lambda: _gauge(worker) >= 1), "the request never started generating"
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)  # nothing answered yet: the generation is still under way when the client leaves


_SAMPLING = {"max_tokens": LONG, "ignore_eos": True, "temperature": 0}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": MODEL, "prompt": "Count to a thousand:", **_SAMPLING}),
        ("/v1/chat/completions", {"model": MODEL, **_SAMPLING,
                                  "messages": [{"role": "user", "content": "Count to a thousand."}]}),
        (f"/v2/models/{MODEL}/generate", {"text_input": "Count to a thousand:", "parameters": _SAMPLING}),
    ],
    ids=["completions", "chat", "generate"],
)
def test_dropped_non_streaming_request_is_cancelled(llm_worker: ServerProcess, path: str,
                                                    body: dict[str, Any]) -> None:
    before = _counters(llm_worker)
    _post_and_drop(llm_worker, path, body)
    _assert_cancelled(llm_worker, before)


def test_the_worker_keeps_answering_after_a_dropped_request(llm_worker: ServerProcess) -> None:
    import httpx

    before = _counters(llm_worker)
    _post_and_drop(llm_worker, "/v1/completions", {"model": MODEL, "prompt": "Count:", **_SAMPLING})
    _assert_cancelled(llm_worker, before)
    answer = httpx.post(f"{llm_worker.http_url}/v1/completions", timeout=60,
                        json={"model": MODEL, "prompt": "Hello", "max_tokens": 3, "temperature": 0,
                              "ignore_eos": True})
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] == 3


def test_cancelled_unary_grpc_infer_is_cancelled(llm_worker: ServerProcess) -> None:
    """Stock tritonclient: ``async_infer`` then ``cancel()`` on its call context."""
    before = _counters(llm_worker)
    inputs = [grpcclient.InferInput("text_input", [1], "BYTES"),
              grpcclient.InferInput("sampling_parameters", [1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([b"Count to a thousand:"], dtype=object))
    inputs[1].set_data_from_numpy(np.array([json.dumps(_SAMPLING).encode()], dtype=object))
    results: list[Any] = []
    client = grpcclient.InferenceServerClient(llm_worker.grpc)
    try:
        call = client.async_infer(MODEL, inputs, lambda result, error: results.append((result, error)))
        assert eventually(lambda: _gauge(llm_worker) >= 1), "the request never started generating"
        assert not results, "the generation finished before the client could cancel it"
        call.cancel()
        _assert_cancelled(llm_worker, before)
        assert eventually(lambda: bool(results))
        result, error = results[0]
        assert result is None and error is not None  # the client sees its own cancellation
    finally:
        client.close()
