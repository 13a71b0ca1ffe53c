"""The ``openai`` package against a real worker serving SmolLM2: chat and completions, streamed and not."""

from __future__ import annotations

import re

import httpx
import openai
import pytest
from llm_http_kit import MODEL

FINGERPRINT = re.compile(rf"lmaas-{MODEL}-v1-[0-9a-f]{{12}}")
PROMPT = "The capital of France is"
GREEDY = {"temperature": 0, "max_tokens": 6}


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def test_models_lists_the_llm_with_its_fingerprint(client: openai.OpenAI, base_url: str) -> None:
    models = client.models.list()
    cards = {m.id: m for m in models.data}
    assert MODEL in cards
    raw = httpx.get(f"{base_url}/v1/models/{MODEL}").json()
    assert raw["object"] == "model" and raw["version"] == "1"
    assert FINGERPRINT.fullmatch(raw["system_fingerprint"])
    assert raw["max_model_len"] > 0
    missing = httpx.get(f"{base_url}/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], **GREEDY
    )
    assert reply.object == "chat.completion" and reply.model == MODEL
    assert FINGERPRINT.fullmatch(reply.system_fingerprint or "")
    (choice,) = reply.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens > 5
    assert 0 < usage.completion_tokens <= GREEDY["max_tokens"]
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_stream_with_usage_matches_the_whole_answer(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, **GREEDY)  # type: ignore[arg-type]
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}, **GREEDY  # type: ignore[arg-type]
    ))
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.system_fingerprint == whole.system_fingerprint for c in chunks)
    *content, last = chunks
    assert content[0].choices[0].delta.role == "assistant"
    assert content[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.usage is None for c in content)
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    text = "".join(c.choices[0].delta.content or "" for c in content)
    assert text == whole.choices[0].message.content  # greedy: streamed or not, the same text


def test_completion_stream_and_not(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt=PROMPT, **GREEDY)
    assert whole.object == "text_completion" and FINGERPRINT.fullmatch(whole.system_fingerprint or "")
    assert whole.choices[0].text and whole.usage is not None
    streamed = list(client.completions.create(model=MODEL, prompt=PROMPT, stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    assert streamed[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    echoed = client.completions.create(model=MODEL, prompt=PROMPT, echo=True, **GREEDY)
    assert echoed.choices[0].text == PROMPT + whole.choices[0].text


def test_ignore_eos_and_max_tokens_give_exactly_that_many_tokens(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="Hi", max_tokens=5, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    assert reply.choices[0].finish_reason == "length"


def test_seed_reproduces_a_sampled_completion(client: openai.OpenAI) -> None:
    def sample() -> str:
        reply = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=1.0,
                                          seed=1234, extra_body={"ignore_eos": True})
        return reply.choices[0].text

    assert sample() == sample()


def test_stop_string_ends_the_text_before_it(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=8, temperature=0,
                                      extra_body={"ignore_eos": True}).choices[0].text
    stop = whole.strip()[:1]  # the first non-blank character of the greedy continuation
    assert stop
    cut = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=8, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in cut.choices[0].text and whole.startswith(cut.choices[0].text)


def test_version_header_names_the_version(base_url: str) -> None:
    response = httpx.post(f"{base_url}/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 2})
    assert response.status_code == 200
    assert response.headers["x-lmaas-model-version"] == "1"
