"""int8 LLM versions (``lmaas.server.llm.quant``): the format on disk, batch invariance of the integer GEMMs (model,
engine, a real worker streaming to stock tritonclient), closeness to the fp32 version, ``convert --quantize``."""

from __future__ import annotations

import json
import os
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as tc
from llm_support import smollm2_int8_dir
from lmaas.server.llm.engine import EngineSettings, LLMEngine
from lmaas.server.llm.model import Llama, SeqInput
from lmaas.server.llm.quant import METHOD, QLinear, qmm, quantize_weight
from lmaas.server.llm.types import SamplingParams
from processes import ServerProcess, start_worker
from safetensors import safe_open

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three laws of thermodynamics are",
    "List three colours:",
    "Water boils at",
    "The quick brown fox",
    "In 1969, the first humans",
]


@pytest.fixture(scope="session")
def int8_dir(smollm2: Path) -> Path:
    """SmolLM2 quantised once, cached beside the fp32 directory (``-int8``)."""
    return smollm2_int8_dir(smollm2)


@pytest.fixture(scope="module")
def fp32_model(smollm2: Path) -> Llama:
    return Llama.load(smollm2)


@pytest.fixture(scope="module")
def int8_model(int8_dir: Path) -> Llama:
    return Llama.load(int8_dir)


def test_the_format_records_int8_weights_with_per_channel_scales(smollm2: Path, int8_dir: Path,
                                                                  int8_model: Llama) -> None:
    config = json.loads((int8_dir / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == METHOD
    assert "down_proj" in config["quantization_config"]["modules"]
    with safe_open(str(int8_dir / "model.safetensors"), framework="pt") as f:
        w = f.get_tensor("model.layers.0.mlp.down_proj.weight")
        s = f.get_tensor("model.layers.0.mlp.down_proj.weight_scale")
        assert w.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (w.shape[0],)
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float32  # the lookup stays exact
        assert f.get_tensor("lm_head.weight").dtype == torch.int8  # the tied head, written as its own int8 copy
    assert {p.name for p in smollm2.iterdir()} - {p.name for p in int8_dir.iterdir()} == set()
    assert all(isinstance(w, QLinear) for layer in int8_model.layers for w in (layer[1], layer[2], layer[4], layer[5]))
    assert isinstance(int8_model.head, QLinear)
    assert (int8_dir / "model.safetensors").stat().st_size < 0.5 * (smollm2 / "model.safetensors").stat().st_size


def test_qmm_matches_the_float_product_and_each_row_ignores_the_others() -> None:
    torch.manual_seed(0)
    w, x = torch.randn(96, 64), torch.randn(19, 64)
    x[3] *= 1000  # an outlier row: with one scale per batch it would crush every other row's precision
    layer = QLinear(*quantize_weight(w))
    got = qmm(x, layer)
    rel = (got - x @ w.T).norm(dim=1) / (x @ w.T).norm(dim=1)
    assert float(rel.max()) < 0.02
    for rows in (slice(0, 1), slice(2, 4), slice(0, 16), slice(5, 19)):
        assert torch.equal(qmm(x[rows], layer), got[rows])


def test_a_sequence_gives_the_same_bits_alone_and_batched(int8_model: Llama) -> None:
    """Prefill and decode rows of several sequences in one forward = each sequence in a forward of its own."""
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7], [42] * 11, [100, 200]]
    alone = []
    for p in prompts:
        cache = int8_model.new_cache(32)
        first = int8_model.forward([SeqInput(p, cache, True)])[0]
        alone.append((first, int8_model.forward([SeqInput([7], cache, True)])[0]))
    caches = [int8_model.new_cache(32) for _ in prompts]
    firsts = int8_model.forward([SeqInput(p, c, True) for p, c in zip(prompts, caches, strict=True)])
    seconds = int8_model.forward([SeqInput([7], c, True) for c in caches])
    for (a1, a2), b1, b2 in zip(alone, firsts, seconds, strict=True):
        assert b1 is not None and b2 is not None and a1 is not None and a2 is not None
        assert torch.equal(a1, b1) and torch.equal(a2, b2)


def _teacher_forced(model: Llama, ids: list[int], continuation: list[int]) -> list[torch.Tensor]:
    cache = model.new_cache(len(ids) + len(continuation) + 1)
    out = [model.forward([SeqInput(ids, cache, True)])[0]]
    out += [model.forward([SeqInput([t], cache, True)])[0] for t in continuation[:-1]]
    return [t for t in out if t is not None]


def test_int8_stays_close_to_fp32_on_fixed_prompts(fp32_model: Llama, int8_model: Llama, int8_dir: Path) -> None:
    """On fp32's own greedy continuation: the int8 top-1 agrees almost everywhere, top-5 sets mostly overlap."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(int8_dir / "tokenizer.json"))
    agree = overlap = steps = 0
    for prompt in PROMPTS[:4]:
        ids = tok.encode(prompt).ids
        cache, cont = fp32_model.new_cache(len(ids) + 17), []
        logits = fp32_model.forward([SeqInput(ids, cache, True)])[0]
        for _ in range(16):
            assert logits is not None
            cont.append(int(logits.argmax()))
            logits = fp32_model.forward([SeqInput([cont[-1]], cache, True)])[0]
        ref = _teacher_forced(fp32_model, ids, cont)
        got = _teacher_forced(int8_model, ids, cont)
        for r, g in zip(ref, got, strict=True):
            agree += int(r.argmax() == g.argmax())
            overlap += len(set(r.topk(5).indices.tolist()) & set(g.topk(5).indices.tolist()))
            steps += 1
    assert agree / steps >= 0.8, (agree, steps)
    assert overlap / (5 * steps) >= 0.7, (overlap, steps)


async def _collect(engine: LLMEngine, prompt: str, n: int = 12) -> tuple[int, ...]:
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    return tuple(t for c in [c async for c in engine.generate(prompt, params)] for t in c.token_ids)


async def test_eight_concurrent_int8_streams_equal_each_run_alone(int8_dir: Path) -> None:
    import asyncio

    engine = LLMEngine(int8_dir, name="smollm2-int8", version=1, digest="test",
                       settings=EngineSettings(context_length=512))
    try:
        alone = [await _collect(engine, p) for p in PROMPTS]
        together = await asyncio.gather(*(_collect(engine, p) for p in PROMPTS))
        assert list(together) == alone
        assert all(len(a) == 12 for a in alone)
    finally:
        engine.close()


@pytest.fixture(scope="module")
def int8_worker(tmp_path_factory: pytest.TempPathFactory, int8_dir: Path) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("int8-repo")
    dest = repo / "smol8" / "1"
    dest.mkdir(parents=True)
    for f in int8_dir.iterdir():
        if f.is_file():
            os.link(f, dest / f.name)
    (repo / "smol8" / "config.yaml").write_text("parameters: {context_length: 256, max_new_tokens: 64}\n")
    proc = start_worker(repo, env={"HF_HUB_OFFLINE": "1"})
    yield proc
    proc.stop()


def _ins(prompt: str, n: int) -> list[tc.InferInput]:
    text = tc.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=object))
    params = tc.InferInput("sampling_parameters", [1], "BYTES")
    params.set_data_from_numpy(np.array([json.dumps({"max_tokens": n, "temperature": 0, "ignore_eos": True})],
                                        dtype=object))
    stream = tc.InferInput("stream", [1], "BOOL")
    stream.set_data_from_numpy(np.array([True], dtype=bool))
    return [text, params, stream]


def test_a_worker_streams_the_int8_version_and_concurrent_streams_equal_each_alone(int8_worker: ServerProcess) -> None:
    client = tc.InferenceServerClient(int8_worker.grpc)
    events: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)))

    def run(ids: list[str]) -> dict[str, str]:
        for i in ids:
            client.async_stream_infer("smol8", _ins(PROMPTS[int(i)], 8), request_id=i,
                                      enable_empty_final_response=True)
        texts, chunks, open_ids = dict.fromkeys(ids, ""), dict.fromkeys(ids, 0), set(ids)
        while open_ids:
            result, error = events.get(timeout=120)
            assert error is None, error
            r = result.get_response()
            out = result.as_numpy("text_output")
            if out is not None:
                texts[r.id] += out[0].decode()
                chunks[r.id] += 1
            if r.parameters["triton_final_response"].bool_param:
                open_ids.discard(r.id)
        assert all(n >= 2 for n in chunks.values()), chunks  # streamed, not one block
        return texts

    try:
        alone = {i: t for n in range(8) for i, t in run([str(n)]).items()}
        together = run([str(n) for n in range(8)])
        assert together == alone
        assert all(alone.values())
    finally:
        client.stop_stream()
        client.close()


def test_convert_quantize_int8_writes_the_same_tensors_as_quantizing_the_fp32_directory(
        smollm2: Path, int8_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "v1"
    done = subprocess.run(
        [sys.executable, "-m", "lmaas.cli", "model", "convert", "--hf", str(smollm2), "--output", str(out),
         "--quantize", "int8", "-q"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == METHOD
    with safe_open(str(out / "model.safetensors"), framework="pt") as a, \
            safe_open(str(int8_dir / "model.safetensors"), framework="pt") as b:
        assert set(a.keys()) == set(b.keys())
        for name in ("model.layers.3.self_attn.q_proj.weight", "model.layers.3.self_attn.q_proj.weight_scale",
                     "lm_head.weight", "model.embed_tokens.weight"):
            assert torch.equal(a.get_tensor(name), b.get_tensor(name)), name
    bad = subprocess.run([sys.executable, "-m", "lmaas.cli", "model", "convert", "--hf", str(smollm2), "--output",
                          str(tmp_path / "v2"), "--quantize", "int4"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "int4" in bad.stderr
