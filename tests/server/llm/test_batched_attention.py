"""The batched attention over the block-paged KV pool (``lmaas.server.llm.model``): a sequence's logits are
bit-identical alone and batched with others of other lengths (fp32 and int8, prefill and decode, across block
boundaries), blocks go back to the pool, and the scheduler reserves whole blocks and prefills bursts together."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import torch
from llm_support import smollm2_int8_dir
from lmaas.server.llm.engine import EngineSettings, LLMEngine, default_torch_threads
from lmaas.server.llm.model import BLOCK, Llama, SeqInput
from lmaas.server.llm.scheduler import Entry, Scheduler, Work
from lmaas.server.llm.types import SamplingParams

#: Prompt lengths on both sides of block boundaries (BLOCK = 32), one over a prefill chunk of 64.
LENGTHS = (1, 5, 31, 32, 33, 63, 64, 65, 100)
DECODES = 4  # decode steps after the prompt: lengths 31/63 cross a block boundary on the way


@pytest.fixture(scope="module", params=["fp32", "int8"])
def model(request: pytest.FixtureRequest, smollm2: Path) -> Llama:
    torch.set_num_threads(default_torch_threads())  # what an engine runs with (LLMEngine sets it the same way)
    if request.param == "fp32":
        return Llama.load(smollm2)
    return Llama.load(smollm2_int8_dir(smollm2))


PROMPTS = [[random.Random(15 + n).randrange(100, 40_000) for _ in range(n)] for n in LENGTHS]


def _run(model: Llama, which: list[int]) -> list[list[torch.Tensor]]:
    """Prefill PROMPTS[which] in one forward, then DECODES batched decode steps: each step's logits per sequence.

    Decode inputs depend on the prompt only (never on the batch), as a sampled token would."""
    caches = [model.new_cache(len(PROMPTS[i]) + DECODES) for i in which]
    out: list[list[torch.Tensor]] = [[] for _ in which]
    step = [SeqInput(PROMPTS[i], c, True) for i, c in zip(which, caches, strict=True)]
    for t in range(DECODES + 1):
        for j, logits in enumerate(model.forward(step)):
            assert logits is not None
            out[j].append(logits)
        step = [SeqInput([1000 + 7 * t + i], c, True) for i, c in zip(which, caches, strict=True)]
    for c in caches:
        c.free()
    return out


def test_each_sequence_gives_the_same_bits_alone_and_in_any_batch(model: Llama) -> None:
    alone = [_run(model, [i])[0] for i in range(len(PROMPTS))]
    rng = random.Random(7)
    mixes = [list(range(len(PROMPTS))), [8, 0, 4], rng.sample(range(len(PROMPTS)), 5)]
    for mix in mixes:
        together = _run(model, mix)
        for j, i in enumerate(mix):
            for t, (a, b) in enumerate(zip(alone[i], together[j], strict=True)):
                assert torch.equal(a, b), f"length {LENGTHS[i]} step {t} in batch {mix}"
    # Different sequences really give different logits (the comparison above can fail).
    assert not torch.equal(alone[0][0], alone[1][0])


def test_the_same_sequence_in_one_batch_twice_gives_identical_rows(model: Llama) -> None:
    """A group of equal shapes (one batched matmul) computes each member as it computes one alone."""
    prompt = PROMPTS[4]
    caches = [model.new_cache(len(prompt) + 1) for _ in range(5)]
    rows = model.forward([SeqInput(prompt, c, True) for c in caches])
    (alone,) = _run(model, [4])
    assert all(r is not None and torch.equal(r, alone[0]) for r in rows)
    for c in caches:
        c.free()


def test_blocks_return_to_the_pool_and_overflow_is_refused(model: Llama) -> None:
    pool = model.kv_pool
    model.new_cache(2 * BLOCK).free()  # the pool holds at least two blocks now
    free_before = pool.available()
    cache = model.new_cache(BLOCK + 1)
    assert len(cache.blocks) == 2 and cache.capacity == 2 * BLOCK
    assert pool.available() == free_before - 2
    with pytest.raises(ValueError, match="KV cache overflow"):
        model.forward([SeqInput(list(range(1, 2 * BLOCK + 2)), cache, False)])
    cache.free()
    cache.free()  # idempotent
    assert pool.available() == free_before


def test_scheduler_reserves_whole_blocks() -> None:
    s = Scheduler(128, block=32)
    s.add(Entry("a", 10, 33))  # 2 blocks
    s.add(Entry("b", 10, 64))  # 2 blocks: fits beside a (4 of 4)
    s.add(Entry("c", 10, 1))  # 1 block: waits
    assert [w.id for w in s.schedule()] == ["a", "b"]
    assert s.kv_usage() == 1.0 and s.counts() == (2, 1)
    assert s.finish("a") and s.kv_usage() == 0.5
    assert [w.id for w in s.schedule()] == ["b", "c"]


def test_a_burst_of_arrivals_prefills_in_one_step_but_not_beside_decodes() -> None:
    s = Scheduler(10_000, prefill_chunk=64, step_tokens=100, burst_tokens=300)
    for i in range(8):
        s.add(Entry(f"p{i}", 32, 40))
    first = s.schedule()  # nobody decodes: up to burst_tokens, all eight prompts (256 tokens) in one forward
    assert first == [Work(f"p{i}", 0, 32, False, True) for i in range(8)]
    s.add(Entry("late", 32, 40))
    second = s.schedule()  # 8 decode: step_tokens bounds their inter-token latency
    assert [w for w in second if w.decode] == [Work(f"p{i}", 32, 1, True, True) for i in range(8)]
    assert [w.id for w in second if not w.decode] == ["late"]  # 8 + 32 <= 100


async def test_engine_frees_every_block_and_keeps_results_under_a_burst(smollm2: Path) -> None:
    """16 arrivals at once: one burst prefill; each greedy text equals its solo run; all blocks come back."""
    eng = LLMEngine(smollm2, settings=EngineSettings(context_length=256, kv_cache_mb=64))
    try:
        pool = eng.model.kv_pool
        assert pool.available() == pool.blocks == eng.scheduler.kv_tokens // BLOCK
        params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
        prompts = [f"Item {i}: the {'quick ' * (i % 5)}brown fox" for i in range(16)]

        async def run(p: str) -> list[int]:
            return [t async for c in eng.generate(p, params) for t in c.token_ids]

        solo = [await run(p) for p in prompts[:4]]
        together = await asyncio.gather(*(run(p) for p in prompts))
        assert list(together[:4]) == solo
        assert all(len(t) == 6 for t in together)
        assert eng.active() == 0 and pool.available() == pool.blocks and eng.scheduler.kv_usage() == 0
    finally:
        eng.close()
