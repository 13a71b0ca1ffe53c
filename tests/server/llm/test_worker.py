"""A real worker serving SmolLM2 from ``REPO/smollm2/1/`` (recognised by its files), driven by stock tritonclient.grpc:
decoupled streaming, multiplexing, errors that keep the stream open, cancellation, unary ModelInfer, bad input."""

from __future__ import annotations

import json
import os
import queue
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc
from llm_support import smollm2_repository
from lmaas.server.llm.engine import LLMEngine
from lmaas.server.llm.types import SamplingParams
from processes import ServerProcess, start_worker
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

MODEL = "smollm2"
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def llm_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = smollm2_repository(tmp_path_factory.mktemp("llm-repo"))
    (repo / MODEL / "config.yaml").write_text(
        "parameters: {context_length: 256, max_new_tokens: 128, kv_cache_mb: 64}\n"
    )
    # A version directory without its tokenizer: recognised as an LLM, refused at load with the reason.
    broken = repo / "broken" / "1"
    broken.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        os.link(repo / MODEL / "1" / f, broken / f)
    # A version whose KV budget cannot fit in this machine's memory: refused before its weights are read.
    huge = repo / "huge" / "1"
    huge.mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        os.link(repo / MODEL / "1" / f, huge / f)
    (repo / "huge" / "config.yaml").write_text("parameters: {kv_cache_mb: 100000000}\n")
    proc = start_worker(repo, env={"HF_HUB_OFFLINE": "1"})
    yield proc
    proc.stop()


@pytest.fixture()
def client(llm_worker: ServerProcess) -> Iterator[tc.InferenceServerClient]:
    c = tc.InferenceServerClient(llm_worker.grpc)
    yield c
    c.close()


def inputs(
    prompt: str | bytes,
    params: dict[str, Any] | str | None = None,
    stream: bool | None = None,
    exclude: bool | None = None,
) -> list[tc.InferInput]:
    text = tc.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode() if isinstance(prompt, str) else prompt], dtype=object))
    out = [text]
    if params is not None:
        p = tc.InferInput("sampling_parameters", [1], "BYTES")
        p.set_data_from_numpy(np.array([params if isinstance(params, str) else json.dumps(params)], dtype=object))
        out.append(p)
    for name, value in (("stream", stream), ("exclude_input_in_output", exclude)):
        if value is not None:
            t = tc.InferInput(name, [1], "BOOL")
            t.set_data_from_numpy(np.array([value], dtype=bool))
            out.append(t)
    return out


def greedy(n: int) -> dict[str, Any]:
    return {"max_tokens": n, "temperature": 0, "ignore_eos": True}


class Stream:
    """tritonclient's callback stream, collected into a queue of (result, error)."""

    def __init__(self, client: tc.InferenceServerClient) -> None:
        self.client = client
        self.events: queue.Queue[tuple[Any, Any]] = queue.Queue()
        client.start_stream(callback=lambda result, error: self.events.put((result, error)))

    def send(self, request_id: str, ins: list[tc.InferInput], empty_final: bool = True) -> None:
        self.client.async_stream_infer(MODEL, ins, request_id=request_id, enable_empty_final_response=empty_final)

    def until_final(self, ids: set[str], timeout: float = 120) -> tuple[dict[str, list[Any]], list[Any]]:
        """Responses by id until each id got its final one; errors apart."""
        got: dict[str, list[Any]] = {i: [] for i in ids}
        errors: list[Any] = []
        open_ids = set(ids)
        end = time.monotonic() + timeout
        while open_ids:
            result, error = self.events.get(timeout=max(end - time.monotonic(), 0.1))
            if error is not None:
                errors.append(error)
                continue
            r = result.get_response()
            got[r.id].append(result)
            if r.parameters["triton_final_response"].bool_param:
                open_ids.discard(r.id)
        return got, errors


def text_of(results: list[Any]) -> str:
    return "".join(r.as_numpy("text_output")[0].decode() for r in results if r.as_numpy("text_output") is not None)


def metric(worker: ServerProcess, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(worker.metrics_url, timeout=10) as response:
        page = response.read().decode()
    for family in text_string_to_metric_families(page):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def _engine_text(engine: LLMEngine, prompt: str, n: int) -> str:
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    return "".join([c.text async for c in engine.generate(prompt, params)])


def test_metadata_and_decoupled_config(client: tc.InferenceServerClient) -> None:
    meta = client.get_model_metadata(MODEL, as_json=True)
    assert {i["name"]: i["datatype"] for i in meta["inputs"]}["text_input"] == "BYTES"
    assert {o["name"] for o in meta["outputs"]} >= {"text_output"}
    config = client.get_model_config(MODEL, as_json=True)["config"]
    assert config["model_transaction_policy"] == {"decoupled": True}
    assert config["backend"] == "llm"


async def test_stream_tokens_equal_the_engine_in_process(client: tc.InferenceServerClient, engine: LLMEngine) -> None:
    expected = await _engine_text(engine, PROMPT, 12)
    s = Stream(client)
    try:
        s.send("r1", inputs(PROMPT, greedy(12), stream=True))
        got, errors = s.until_final({"r1"})
    finally:
        client.stop_stream()
    assert not errors
    results = got["r1"]
    assert len(results) >= 3  # one response per token chunk, then the empty final one
    final = results[-1].get_response()
    assert final.outputs == [] and final.parameters["triton_final_response"].bool_param
    last = results[-2].get_response()
    assert last.parameters["finish_reason"].string_param == "length"
    assert last.parameters["num_output_tokens"].int64_param == 12
    assert all(not r.get_response().parameters["triton_final_response"].bool_param for r in results[:-1])
    assert text_of(results) == expected


def test_multiplexed_requests_and_an_error_that_keeps_the_stream_open(client: tc.InferenceServerClient) -> None:
    s = Stream(client)
    try:
        s.send("a", inputs("Once upon a time", greedy(6), stream=True))
        s.send("bad", inputs("", greedy(6), stream=True))
        s.send("b", inputs("def fibonacci(n):", greedy(6), stream=True), empty_final=False)
        got, errors = s.until_final({"a", "b"})
        assert len(errors) == 1 and "prompt is empty" in str(errors[0])
        # the stream is still usable after the error
        s.send("c", inputs("1, 2, 3,", greedy(3), stream=False))
        got_c, errors_c = s.until_final({"c"})
    finally:
        client.stop_stream()
    assert not errors_c
    assert all(r.get_response().id == "a" for r in got["a"]) and text_of(got["a"])
    b_last = got["b"][-1].get_response()  # without the empty final: the last text response is final
    assert b_last.parameters["triton_final_response"].bool_param and b_last.outputs
    assert text_of(got_c["c"]).startswith("1, 2, 3,")  # not streamed: one response, prompt included


def test_cancel_requests_frees_the_sequences(client: tc.InferenceServerClient, llm_worker: ServerProcess) -> None:
    labels = {"model": MODEL, "version": "1"}
    s = Stream(client)
    for i in range(2):
        s.send(f"long{i}", inputs(PROMPT, greedy(120), stream=True))
    first, error = s.events.get(timeout=60)
    assert error is None and first.get_response().id.startswith("long")
    assert metric(llm_worker, "lmaas_llm_running_sequences", **labels) == 2
    client.stop_stream(cancel_requests=True)
    deadline = time.monotonic() + 30
    while metric(llm_worker, "lmaas_llm_running_sequences", **labels) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(llm_worker, "lmaas_llm_running_sequences", **labels) == 0
    assert metric(llm_worker, "lmaas_llm_kv_cache_usage_ratio", **labels) == 0
    generated = metric(llm_worker, "lmaas_llm_generation_tokens_total", **labels)
    time.sleep(0.5)
    assert metric(llm_worker, "lmaas_llm_generation_tokens_total", **labels) == generated  # nothing more for them
    assert (metric(llm_worker, "lmaas_llm_requests_finished_total", reason="cancelled", **labels) or 0) >= 2


def test_unary_infer_returns_the_whole_completion(client: tc.InferenceServerClient) -> None:
    whole = client.infer(MODEL, inputs(PROMPT, greedy(8)))
    text = whole.as_numpy("text_output")[0].decode()
    assert text.startswith(PROMPT) and len(text) > len(PROMPT)
    only = client.infer(MODEL, inputs(PROMPT, greedy(8), exclude=True))
    assert only.as_numpy("text_output")[0].decode() == text[len(PROMPT) :]
    params = only.get_response().parameters
    assert params["finish_reason"].string_param == "length" and params["num_output_tokens"].int64_param == 8


@pytest.mark.parametrize(
    ("ins", "message"),
    [
        (lambda: inputs("", greedy(4)), "prompt is empty"),
        (lambda: inputs(PROMPT, {"max_tokens": 0}), "max_tokens must be a positive integer"),
        (lambda: inputs(PROMPT, {"max_tokens": 129}), "over this model's limit of 128"),
        (lambda: inputs("word " * 300, greedy(4)), "over the context length of 256 tokens"),
        (lambda: inputs(PROMPT, "{not json"), "sampling_parameters is not valid JSON"),
        (lambda: inputs(PROMPT, {"temperature": "hot"}), "temperature must be a number"),
        (lambda: inputs(PROMPT, {"max_tokens": 1.5}), "max_tokens must be an integer"),
        (lambda: inputs(PROMPT, {"best_of": 2}), "unsupported key"),
        (lambda: inputs(b"\xff\xfe", greedy(4)), "not valid UTF-8"),
        (lambda: [_int_input("text_input")], "datatype INT32 given, model expects BYTES"),
        (lambda: inputs(PROMPT, greedy(2))[1:], "missing input 'text_input'"),
    ],
)
def test_bad_input_is_invalid_argument_and_the_worker_keeps_serving(
    client: tc.InferenceServerClient, ins: Any, message: str
) -> None:
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, ins())
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in err.value.message()
    assert client.infer(MODEL, inputs(PROMPT, greedy(1))).as_numpy("text_output") is not None


def _int_input(name: str) -> tc.InferInput:
    t = tc.InferInput(name, [1], "INT32")
    t.set_data_from_numpy(np.array([1], dtype=np.int32))
    return t


def test_tensor_requests_to_a_generative_model_name_fail_precisely(client: tc.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as err:
        client.infer("no-such-model", inputs(PROMPT, greedy(1)))
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_version_directory_without_tokenizer_fails_to_load_with_the_reason(client: tc.InferenceServerClient) -> None:
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index["broken"]["state"] == "UNAVAILABLE"
    assert "lacks tokenizer.json" in index["broken"]["reason"]
    with pytest.raises(InferenceServerException) as err:
        client.load_model("broken")
    assert err.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert "lacks tokenizer.json" in err.value.message()
    assert client.is_model_ready(MODEL)


def test_version_that_does_not_fit_in_memory_fails_to_load(client: tc.InferenceServerClient) -> None:
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index["huge"]["state"] == "UNAVAILABLE"
    assert "does not fit in memory" in index["huge"]["reason"] and "kv_cache_mb=100000000" in index["huge"]["reason"]


async def test_eight_concurrent_streams_equal_each_prompt_alone(
    client: tc.InferenceServerClient, engine: LLMEngine
) -> None:
    """Batching never changes a result: 8 greedy generations multiplexed on one stream = each run alone."""
    prompts = [f"{word} is" for word in ("Paris", "Water", "Music", "Python", "Winter", "Gold", "A cat", "The sun")]
    alone = {f"p{i}": await _engine_text(engine, p, 8) for i, p in enumerate(prompts)}
    s = Stream(client)
    try:
        for i, p in enumerate(prompts):
            s.send(f"p{i}", inputs(p, greedy(8), stream=True))
        got, errors = s.until_final(set(alone))
    finally:
        client.stop_stream()
    assert not errors
    assert {rid: text_of(results) for rid, results in got.items()} == alone
