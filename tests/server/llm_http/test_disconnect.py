"""A client that leaves mid-stream cancels its generation: the sequence leaves the batch, no more tokens come."""

from __future__ import annotations

import httpx
import pytest
from llm_http_kit import MODEL, eventually, metric
from processes import ServerProcess

LONG = 400  # far more tokens than are read before leaving: running to the end would show in the counter


def _labels() -> dict[str, str]:
    return {"model": MODEL, "version": "1"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": MODEL, "prompt": "Count to a thousand:", "stream": True}),
        ("/v1/chat/completions", {"model": MODEL, "stream": True,
                                  "messages": [{"role": "user", "content": "Count to a thousand."}]}),
        (f"/v2/models/{MODEL}/generate_stream", {"text_input": "Count to a thousand:"}),
    ],
    ids=["completions", "chat", "generate_stream"],
)
def test_disconnect_cancels_the_generation(llm_worker: ServerProcess, base_url: str, path: str,
                                           body: dict[str, object]) -> None:
    sampling = {"max_tokens": LONG, "ignore_eos": True, "temperature": 0}
    body = {**body, "parameters": sampling} if path.startswith("/v2") else {**body, **sampling}
    generated = metric(llm_worker, "lmaas_llm_generation_tokens_total", **_labels())
    cancelled = metric(llm_worker, "lmaas_llm_requests_finished_total", **_labels(), reason="cancelled")
    with httpx.stream("POST", base_url + path, json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        events: list[str] = []
        for line in lines:
            if line.startswith("data:"):
                events.append(line)
            if len(events) == 3:
                break
        assert eventually(lambda: metric(llm_worker, "lmaas_llm_running_sequences", **_labels()) >= 1)
    # The connection is closed here, mid-stream.
    assert eventually(lambda: metric(llm_worker, "lmaas_llm_running_sequences", **_labels()) == 0), \
        "the sequence is still running after its client left"
    assert eventually(lambda: metric(llm_worker, "lmaas_llm_requests_finished_total", **_labels(),
                                     reason="cancelled") == cancelled + 1)
    spent = metric(llm_worker, "lmaas_llm_generation_tokens_total", **_labels()) - generated
    assert 0 < spent < LONG, f"{spent} tokens were generated for a stream left after 3 events"
