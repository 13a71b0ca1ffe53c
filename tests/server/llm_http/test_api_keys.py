"""The worker's API keys guard the LLM routes of the HTTP port as they guard gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from llm_http_kit import MODEL
from lmaas.client import LLMClient, Unauthenticated
from processes import ServerProcess, start_worker

KEY = "llm-test-key"


@pytest.fixture(scope="module")
def locked_worker(llm_repository: Path) -> Iterator[ServerProcess]:
    proc = start_worker(llm_repository, "--require-api-key", env={"LMAAS_API_KEYS": KEY, "HF_HUB_OFFLINE": "1"})
    yield proc
    proc.stop()


@pytest.mark.parametrize("path", ["/v1/models", "/v1/completions", "/v1/chat/completions",
                                  f"/v2/models/{MODEL}/generate", f"/v2/models/{MODEL}/generate_stream"])
def test_no_key_is_401(locked_worker: ServerProcess, path: str) -> None:
    method = "GET" if path == "/v1/models" else "POST"
    response = httpx.request(method, locked_worker.http_url + path, json={}, timeout=30)
    assert response.status_code == 401
    wrong = httpx.request(method, locked_worker.http_url + path, json={}, timeout=30,
                          headers={"authorization": "Bearer wrong"})
    assert wrong.status_code == 401


def test_the_key_opens_openai_and_grpc(locked_worker: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{locked_worker.http_url}/v1", api_key=KEY, max_retries=0)
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices[0].text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{locked_worker.http_url}/v1", api_key="wrong", max_retries=0).models.list()
    with LLMClient(locked_worker.grpc, api_key=KEY) as sdk:
        assert "".join(sdk.generate(MODEL, "Hi", max_tokens=2))
    with LLMClient(locked_worker.grpc) as anonymous, pytest.raises(Unauthenticated):
        list(anonymous.generate(MODEL, "Hi", max_tokens=2))
