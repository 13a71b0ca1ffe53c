"""SDK generate (sync and async, gRPC ModelStreamInfer) and the CLI's ``lmaas generate`` / ``lmaas chat`` against a
real worker; greedy text is the same over every transport (one engine behind all of them)."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from llm_http_kit import MODEL
from lmaas.client import AsyncLLMClient, LLMClient, LMaaSError
from processes import ServerProcess

PROMPT = "The three primary colours are"
SAMPLING = {"max_tokens": 6, "temperature": 0}


@pytest.fixture(scope="module")
def http_text(base_url: str) -> str:
    body = {"model": MODEL, "prompt": PROMPT, **SAMPLING}
    return str(httpx.post(f"{base_url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"])


def test_sync_generate_streams_the_same_text(llm_worker: ServerProcess, http_text: str) -> None:
    with LLMClient(llm_worker.grpc) as client:
        pieces = list(client.generate(MODEL, PROMPT, **SAMPLING))
        chunks = list(client.stream(MODEL, PROMPT, **SAMPLING))
    assert len(pieces) > 1 and "".join(pieces) == http_text
    assert chunks[-1].finish_reason in ("stop", "length") and chunks[-1].model_version == "1"


async def test_async_generate_streams_the_same_text(llm_worker: ServerProcess, http_text: str) -> None:
    async with AsyncLLMClient(llm_worker.grpc) as client:
        pieces = [p async for p in client.generate(MODEL, PROMPT, **SAMPLING)]
        with pytest.raises(LMaaSError, match="not found"):  # in-band (Triton's error_message): the stream stays open
            async for _ in client.generate("no-such-model", PROMPT, max_tokens=2):
                pass
    assert "".join(pieces) == http_text


def test_leaving_the_loop_early_is_clean(llm_worker: ServerProcess) -> None:
    with LLMClient(llm_worker.grpc) as client:
        for _ in client.generate(MODEL, "Count to a thousand:", max_tokens=300, ignore_eos=True):
            break
        assert "".join(client.generate(MODEL, PROMPT, **SAMPLING))  # the client still works


def _lmaas(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lmaas.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)


def test_cli_generate(llm_worker: ServerProcess, http_text: str) -> None:
    done = _lmaas("generate", MODEL, PROMPT, "--worker", llm_worker.grpc, "--max-tokens", "6", "--temperature", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout == http_text + "\n"
    missing = _lmaas("generate", "no-such-model", PROMPT, "--worker", llm_worker.grpc)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_cli_chat_from_a_pipe_keeps_the_conversation(base_url: str) -> None:
    system = {"role": "system", "content": "You are a helpful assistant."}

    def reply(*messages: dict[str, str]) -> str:
        body = {"model": MODEL, "max_tokens": 12, "temperature": 0, "messages": list(messages)}
        return str(httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60).json()
                   ["choices"][0]["message"]["content"])

    done = _lmaas("chat", MODEL, "--http-url", base_url, "--max-tokens", "12", "--temperature", "0",
                  "--system", system["content"], stdin="My name is Ada.\n\nWhat is my name?\n")
    assert done.returncode == 0, done.stderr
    # Greedy, so the CLI's two replies are exactly what the API answers for the conversation so far:
    # the second turn was sent with the first turn and its reply before it.
    first = reply(system, {"role": "user", "content": "My name is Ada."})
    second = reply(system, {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": first},
                   {"role": "user", "content": "What is my name?"})
    assert done.stdout == f"{first}\n{second}\n"


def test_cli_chat_reports_an_unknown_model(base_url: str) -> None:
    done = _lmaas("chat", "no-such-model", "--http-url", base_url, stdin="hello\n")
    assert done.returncode == 1 and "not found" in done.stderr
