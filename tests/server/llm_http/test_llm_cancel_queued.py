"""A non-streaming request that is still *waiting* for a batch slot when its client leaves never runs.

A worker with one running slot: a first request holds it, a second queues behind it; the second's client closes
its socket, and the second leaves the queue (waiting gauge back to 0, one more ``cancelled``) without a single
prompt token prefilled, while the first keeps running.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llm_http_kit import MODEL, eventually, metric
from llm_support import smollm2_repository
from processes import ServerProcess, start_worker

LONG = 400
_LABELS = {"model": MODEL, "version": "1"}
_BODY = {"model": MODEL, "prompt": "Count to a thousand:", "max_tokens": LONG, "ignore_eos": True,
         "temperature": 0}


@pytest.fixture(scope="module")
def one_slot_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = smollm2_repository(tmp_path_factory.mktemp("llm-one-slot"))
    (repo / MODEL / "config.yaml").write_text("parameters: {max_running: 1, context_length: 512, kv_cache_mb: 32}\n")
    proc = start_worker(Path(repo), env={"HF_HUB_OFFLINE": "1"})
    yield proc
    proc.stop()


def _value(worker: ServerProcess, name: str, **extra: str) -> float:
    return metric(worker, name, **_LABELS, **extra)


def _send(worker: ServerProcess, body: dict[str, Any]) -> socket.socket:
    host, port = worker.http.rsplit(":", 1)
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: {worker.http}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload)
    return sock


def test_a_queued_request_whose_client_left_never_runs(one_slot_worker: ServerProcess) -> None:
    w = one_slot_worker
    cancelled = _value(w, "lmaas_llm_requests_finished_total", reason="cancelled")
    first = _send(w, _BODY)
    try:
        assert eventually(lambda: _value(w, "lmaas_llm_running_sequences") == 1)
        generated = _value(w, "lmaas_llm_generation_tokens_total")
        assert eventually(lambda: _value(w, "lmaas_llm_generation_tokens_total") > generated)  # prefilled: decoding
        prompt_tokens = _value(w, "lmaas_llm_prompt_tokens_total")
        second = _send(w, {**_BODY, "prompt": "Name every country in the world:"})
        assert eventually(lambda: _value(w, "lmaas_llm_waiting_sequences") == 1), "the second request did not queue"
        second.close()
        assert eventually(lambda: _value(w, "lmaas_llm_waiting_sequences") == 0), "it is still queued"
        assert eventually(lambda: _value(w, "lmaas_llm_requests_finished_total", reason="cancelled") == cancelled + 1)
        assert _value(w, "lmaas_llm_running_sequences") == 1  # the first one still runs
        assert _value(w, "lmaas_llm_prompt_tokens_total") == prompt_tokens  # the second was never prefilled
    finally:
        first.close()
    assert eventually(lambda: _value(w, "lmaas_llm_running_sequences") == 0)
    assert eventually(lambda: _value(w, "lmaas_llm_requests_finished_total", reason="cancelled") == cancelled + 2)
