"""The generation engine in-process on SmolLM2: parity with a reference forward, batching invariance, sampling,
stop strings, cancellation and limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from lmaas.protos.errors import InvalidArgument, ResourceExhausted
from lmaas.server.llm.engine import EngineSettings, LLMEngine
from lmaas.server.llm.types import ChatMessage, GenerationChunk, LLMModel, SamplingParams
from lmaas.server.metrics import WorkerMetrics
from prometheus_client import CollectorRegistry

PROMPTS = (
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "List three colors:",
    "1, 2, 3, 4,",
    "Water boils at",
    "The quick brown fox",
    "In 1492,",
)
GREEDY = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)


async def collect(engine: LLMModel, prompt: str, params: SamplingParams = GREEDY) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(prompt, params)]


def text(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


def ids(chunks: list[GenerationChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def test_engine_is_an_llm_model(engine: LLMEngine) -> None:
    assert isinstance(engine, LLMModel)
    assert engine.context_length == 512
    assert "<|im_start|>assistant" in engine.chat_prompt([ChatMessage("user", "hi")])


async def test_greedy_equals_transformers_reference(engine: LLMEngine, smollm2: Path) -> None:
    """Our forward + greedy choice gives the tokens transformers' LlamaForCausalLM gives on the same directory."""
    import torch
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(str(smollm2), dtype=torch.float32).eval()
    for prompt in PROMPTS[:3]:
        prompt_ids = engine.codec.encode(prompt)
        with torch.no_grad():
            out = reference.generate(
                torch.tensor([prompt_ids]), max_new_tokens=16, do_sample=False, min_new_tokens=16, pad_token_id=2
            )
        expected = out[0, len(prompt_ids) :].tolist()
        chunks = await collect(engine, prompt)
        assert ids(chunks) == expected, prompt
        assert text(chunks) == engine.codec.decode(expected)


async def test_eight_concurrent_greedy_streams_equal_each_run_alone(engine: LLMEngine) -> None:
    alone = [ids(await collect(engine, p)) for p in PROMPTS]
    together = await asyncio.gather(*(collect(engine, p) for p in PROMPTS))
    assert [ids(c) for c in together] == alone
    assert all(len(a) == 16 for a in alone)


async def test_long_prompt_prefilled_in_chunks_while_others_decode(engine: LLMEngine) -> None:
    """A prompt over several prefill chunks joins running streams; every result equals its solo run."""
    long_prompt = " ".join(["The history of Paris spans many centuries."] * 30)  # ~270 tokens: 5 chunks of 64
    assert engine.count_tokens(long_prompt) > 3 * engine.settings.prefill_chunk
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    solo = [ids(await collect(engine, p, params)) for p in (long_prompt, *PROMPTS[:3])]
    mixed = await asyncio.gather(*(collect(engine, p, params) for p in (long_prompt, *PROMPTS[:3])))
    assert [ids(c) for c in mixed] == solo


async def test_seed_reproduces_sampled_text(engine: LLMEngine) -> None:
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, top_k=50, seed=1234, ignore_eos=True)
    first, second = await collect(engine, PROMPTS[1], params), await collect(engine, PROMPTS[1], params)
    assert ids(first) == ids(second)
    others = {
        tuple(ids(await collect(engine, PROMPTS[1], SamplingParams(**{**_fields(params), "seed": s}))))
        for s in (1, 2, 3)
    }
    assert len(others | {tuple(ids(first))}) > 1  # the seed matters


def _fields(p: SamplingParams) -> dict[str, object]:
    return {f: getattr(p, f) for f in p.__dataclass_fields__}


async def test_stop_string_ends_text_and_is_not_emitted(engine: LLMEngine) -> None:
    full = text(await collect(engine, PROMPTS[4]))  # " 5, 6, 7, 8, 9, ..."
    assert " 7," in full
    stopped = await collect(engine, PROMPTS[4], SamplingParams(max_tokens=16, temperature=0.0, stop=("7,",)))
    assert text(stopped) == full[: full.index("7,")]
    assert stopped[-1].finish_reason == "stop"
    # A stop string that spans two tokens (" 6" + ",") is caught before any of it is sent.
    split = await collect(engine, PROMPTS[4], SamplingParams(max_tokens=16, temperature=0.0, stop=("6, 7",)))
    assert text(split) == full[: full.index("6, 7")]
    assert all("6" not in c.text for c in split)


async def test_max_tokens_ends_with_length(engine: LLMEngine) -> None:
    chunks = await collect(engine, PROMPTS[0], SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 3 and len(ids(chunks)) == 3
    assert chunks[-1].prompt_tokens == engine.count_tokens(PROMPTS[0])


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ("", GREEDY, "prompt is empty"),
        ("hi", SamplingParams(max_tokens=0), "max_tokens must be a positive integer"),
        ("hi", SamplingParams(max_tokens=-3), "max_tokens must be a positive integer"),
        ("hi", SamplingParams(max_tokens=10_000), "over this model's limit of 511"),
        ("word " * 600, GREEDY, "over the context length of 512 tokens"),
        ("hi", SamplingParams(top_p=0.0), "top_p"),
        ("hi", SamplingParams(temperature=-1.0), "temperature"),
    ],
)
async def test_bad_requests_are_invalid_argument(
    engine: LLMEngine, prompt: str, params: SamplingParams, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await collect(engine, prompt, params)


async def test_cancel_frees_the_sequence_and_generates_no_more(smollm2: Path) -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    eng = LLMEngine(smollm2, name="m", version=1, metrics=metrics.for_llm("m", 1))
    try:
        labels = {"model": "m", "version": "1"}
        stream = eng.generate(PROMPTS[1], SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True))
        first = await anext(stream)
        assert first.completion_tokens >= 1
        assert registry.get_sample_value("lmaas_llm_running_sequences", labels) == 1
        await stream.aclose()  # the consumer leaves: the engine aborts at its next step
        for _ in range(200):
            if eng.active() == 0:
                break
            await asyncio.sleep(0.02)
        assert eng.active() == 0 and eng.running() == 0
        generated = registry.get_sample_value("lmaas_llm_generation_tokens_total", labels)
        assert registry.get_sample_value("lmaas_llm_running_sequences", labels) == 0
        assert registry.get_sample_value("lmaas_llm_kv_cache_usage_ratio", labels) == 0
        assert registry.get_sample_value("lmaas_llm_requests_finished_total", {**labels, "reason": "cancelled"}) == 1
        assert generated is not None and generated < 400
        await asyncio.sleep(0.3)  # several decode steps' worth: nothing more is generated for it
        assert registry.get_sample_value("lmaas_llm_generation_tokens_total", labels) == generated
        # The engine keeps serving.
        assert len(ids(await collect(eng, PROMPTS[0]))) == 16
        assert registry.get_sample_value("lmaas_llm_time_to_first_token_seconds_count", labels) == 2
    finally:
        eng.close()


async def test_waiting_queue_bound_is_resource_exhausted(smollm2: Path) -> None:
    """A KV budget for one request at a time and a queue of one: the third concurrent request is refused."""
    settings = EngineSettings(kv_cache_mb=3, max_waiting=1, context_length=128)  # 3 MiB = 68 tokens of KV
    eng = LLMEngine(smollm2, settings=settings)
    try:
        params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
        running = eng.generate(PROMPTS[0], params)
        await anext(running)
        waiting = eng.generate(PROMPTS[1], params)
        waiter = asyncio.ensure_future(anext(waiting))
        await asyncio.sleep(0)
        assert eng.scheduler.counts() == (1, 1)
        with pytest.raises(ResourceExhausted, match="queue is full"):
            await collect(eng, PROMPTS[2], params)
        with pytest.raises(InvalidArgument, match="KV budget holds"):
            await collect(eng, PROMPTS[2], SamplingParams(max_tokens=100))
        rest = [c async for c in running]
        assert rest[-1].finish_reason == "length"
        assert (await waiter).completion_tokens >= 1  # admitted once the first one freed its cache
        await waiting.aclose()
    finally:
        eng.close()


async def test_eos_ends_with_stop_unless_ignore_eos(engine: LLMEngine) -> None:
    prompt = engine.chat_prompt([ChatMessage("user", "What is the capital of France?")])
    answered = await collect(engine, prompt, SamplingParams(max_tokens=40, temperature=0.0))
    assert answered[-1].finish_reason == "stop" and answered[-1].completion_tokens < 40
    assert "Paris" in text(answered)
    assert "<|im_end|>" not in text(answered)  # the EOS token is not text
    ignored = await collect(engine, prompt, SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True))
    assert ignored[-1].finish_reason == "length" and ignored[-1].completion_tokens == 40


async def test_penalties_discourage_repeated_tokens(engine: LLMEngine) -> None:
    """Frequency (OpenAI: output tokens, per occurrence) and repetition (HF: prompt + output) penalties."""
    prompt = "1, 2, 3, 4,"
    plain = ids(await collect(engine, prompt))
    for params in (
        SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, frequency_penalty=2.0),
        SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, repetition_penalty=1.5),
    ):
        penalised = ids(await collect(engine, prompt, params))
        assert penalised != plain
        assert len(set(penalised)) > len(set(plain))  # "," and " " repeat less
