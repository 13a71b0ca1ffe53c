"""Bad input over HTTP gets a precise status and an error naming the field; the worker keeps serving."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from llm_http_kit import MODEL

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
GOOD = {"model": MODEL, "prompt": "Hello", "max_tokens": 2}
USER = [{"role": "user", "content": "Hi"}]

# (route, body, status, the field OpenAI's "param" must name, words the message must hold)
CASES: list[tuple[str, Any, int, str | None, str]] = [
    (COMPLETIONS, {**GOOD, "prompt": ""}, 400, "prompt", "empty"),
    (COMPLETIONS, {**GOOD, "model": "no-such-model"}, 404, "model", "no-such-model"),
    (COMPLETIONS, {**GOOD, "model": ""}, 400, "model", "required"),
    (COMPLETIONS, {**GOOD, "max_tokens": 0}, 400, "max_tokens", "at least 1"),
    (COMPLETIONS, {**GOOD, "max_tokens": -3}, 400, "max_tokens", "at least 1"),
    (COMPLETIONS, {**GOOD, "max_tokens": 10**6}, 400, "max_tokens", "limit"),
    (COMPLETIONS, {**GOOD, "prompt": "word " * 5000}, 400, None, "context length"),
    (COMPLETIONS, {**GOOD, "max_tokens": "8"}, 400, "max_tokens", "integer"),
    (COMPLETIONS, {**GOOD, "temperature": "hot"}, 400, "temperature", "number"),
    (COMPLETIONS, {**GOOD, "temperature": 1000}, 400, "temperature", "temperature"),
    (COMPLETIONS, {**GOOD, "top_p": 0}, 400, "top_p", "top_p"),
    (COMPLETIONS, {**GOOD, "seed": 1.5}, 400, "seed", "integer"),
    (COMPLETIONS, {**GOOD, "stop": 7}, 400, "stop", "string"),
    (COMPLETIONS, {**GOOD, "stream": "yes"}, 400, "stream", "boolean"),
    (COMPLETIONS, {**GOOD, "n": 2}, 400, "n", "must be 1"),
    (COMPLETIONS, {**GOOD, "stream_options": {"include_usage": True}}, 400, "stream_options", "stream"),
    (COMPLETIONS, {**GOOD, "prompt": [1, 2, 3]}, 400, "prompt", "string"),
    (COMPLETIONS, ["not", "an", "object"], 400, None, "JSON object"),
    (CHAT, {"model": MODEL, "max_tokens": 2}, 400, "messages", "non-empty array"),
    (CHAT, {"model": MODEL, "messages": "hi", "max_tokens": 2}, 400, "messages", "non-empty array"),
    (CHAT, {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role", "robot"),
    (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", "string"),
    (CHAT, {"model": MODEL, "messages": USER, "max_completion_tokens": 0}, 400, "max_completion_tokens", "least"),
    (CHAT, {"model": MODEL, "messages": USER, "tools": [{"type": "function"}]}, 400, "tools", "not supported"),
    (CHAT, {"model": "nope", "messages": USER}, 404, "model", "nope"),
]


@pytest.mark.parametrize(("route", "body", "status", "param", "words"), CASES,
                         ids=[f"{c[0].rsplit('/', 1)[1]}-{i}" for i, c in enumerate(CASES)])
def test_bad_request(base_url: str, route: str, body: Any, status: int, param: str | None, words: str) -> None:
    response = httpx.post(base_url + route, json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    assert words.lower() in error["message"].lower(), error
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


def test_malformed_json_is_400(base_url: str) -> None:
    response = httpx.post(base_url + COMPLETIONS, content=b'{"model": "smollm2", "prompt": ',
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "malformed JSON" in response.json()["error"]["message"]


def test_openai_package_raises_the_matching_errors(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=10**6)  # type: ignore[arg-type]
    assert "max_tokens" in str(info.value)


def test_the_worker_keeps_serving_after_bad_input(base_url: str) -> None:
    for _, body, *_ in CASES[:6]:
        httpx.post(base_url + COMPLETIONS, json=body, timeout=60)
    response = httpx.post(base_url + COMPLETIONS, json=GOOD, timeout=60)
    assert response.status_code == 200 and response.json()["choices"][0]["text"]
