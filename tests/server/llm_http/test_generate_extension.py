"""OIP / Triton generate extension over HTTP: generate and generate_stream, with their error shapes."""

from __future__ import annotations

import json

import httpx
import pytest
from llm_http_kit import MODEL

BODY = {"text_input": "The capital of France is", "parameters": {"max_tokens": 6, "temperature": 0}}


def _events(response: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]


def test_generate_and_stream_agree(base_url: str) -> None:
    whole = httpx.post(f"{base_url}/v2/models/{MODEL}/generate", json=BODY, timeout=60)
    assert whole.status_code == 200, whole.text
    answer = whole.json()
    assert answer["model_name"] == MODEL and answer["model_version"] == "1" and answer["done"] is True
    assert answer["text_output"] and answer["finish_reason"] in ("stop", "length")
    with httpx.stream("POST", f"{base_url}/v2/models/{MODEL}/versions/1/generate_stream", json=BODY,
                      timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
    assert all(e["model_name"] == MODEL and e["model_version"] == "1" for e in events)
    assert [e["done"] for e in events] == [False] * (len(events) - 1) + [True]
    assert "".join(str(e["text_output"]) for e in events) == answer["text_output"]
    assert events[-1]["num_output_tokens"] == answer["num_output_tokens"]


def test_sampling_parameters_string_and_top_level_keys(base_url: str) -> None:
    url = f"{base_url}/v2/models/{MODEL}/generate"
    a = httpx.post(url, json={"text_input": "Hi", "max_tokens": 3, "temperature": 0, "ignore_eos": True}).json()
    b = httpx.post(url, json={"text_input": "Hi", "sampling_parameters": json.dumps(
        {"max_tokens": 3, "temperature": 0, "ignore_eos": True})}).json()
    assert a["text_output"] == b["text_output"] and a["num_output_tokens"] == 3
    echoed = httpx.post(url, json={"text_input": "Hi", "parameters": {
        "max_tokens": 3, "temperature": 0, "ignore_eos": True, "exclude_input_in_output": False}}).json()
    assert echoed["text_output"] == "Hi" + a["text_output"]


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        (f"/v2/models/{MODEL}/generate", {"parameters": {"max_tokens": 2}}, 400, "text_input"),
        (f"/v2/models/{MODEL}/generate", {"text_input": ""}, 400, "empty"),
        (f"/v2/models/{MODEL}/generate", {"text_input": "x", "parameters": {"max_tokens": 0}}, 400, "max_tokens"),
        (f"/v2/models/{MODEL}/generate", {"text_input": "x", "sampling_parameters": "{oops"}, 400, "JSON"),
        (f"/v2/models/{MODEL}/generate", {"text_input": "x", "parameters": {"temperature": []}}, 400, "temperature"),
        (f"/v2/models/{MODEL}/generate_stream", {"text_input": "x " * 5000}, 400, "context length"),
        ("/v2/models/nope/generate", {"text_input": "x"}, 404, "nope"),
        (f"/v2/models/{MODEL}/versions/9/generate", {"text_input": "x"}, 404, "version 9"),
    ],
)
def test_generate_errors(base_url: str, path: str, body: object, status: int, words: str) -> None:
    response = httpx.post(base_url + path, json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and words.lower() in error.lower(), error
