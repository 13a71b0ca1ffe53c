"""Worker side of LLM rollouts, in-process on the real manager: a stream finishes on the version it started on; an
unload waits for it (make before break); a stream still open at the drain timeout is cut and counted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from lmaas.protos.errors import InvalidArgument
from lmaas.server.config import ModelConfig
from lmaas.server.dataplane import DataPlane
from lmaas.server.llm.types import SamplingParams
from lmaas.server.manager import ModelManager
from lmaas.server.metrics import WorkerMetrics
from lmaas.server.models import LLMVersion
from lmaas.server.routing import Route
from models import write_mlp_onnx
from prometheus_client import CollectorRegistry

CONFIG = ModelConfig(parameters={"context_length": 256, "kv_cache_mb": 32})
PARAMS = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


async def test_rollout_and_unload_never_cut_an_open_stream(smollm2: Path) -> None:
    registry = CollectorRegistry()
    manager = ModelManager(WorkerMetrics(registry), drain_timeout=300)
    dp = DataPlane(manager)
    try:
        await manager.load("m", 1, smollm2, CONFIG, digest="d1")
        old = dp.llm("m")
        assert old.version == 1 and old.digest == "d1"
        stream = old.generate("Once upon a time", PARAMS)
        first = await anext(stream)
        # Roll out version 2 and unload version 1 while the stream is open.
        await manager.load("m", 2, smollm2, CONFIG, digest="d2")
        manager.set_routes({"m": Route(stable=2)})
        assert dp.llm("m").version == 2  # new requests go to the new version at once
        unload = asyncio.create_task(manager.unload("m", 1))
        await asyncio.sleep(0.2)
        assert not unload.done()  # waiting for our stream, which keeps going on version 1
        rest = [chunk async for chunk in stream]
        assert rest[-1].finish_reason == "length" and rest[-1].completion_tokens == 24
        assert first.completion_tokens >= 1
        await unload
        assert [mv.version for mv in manager.loaded()] == [2]
        labels = {"model": "m", "version": "1"}
        assert registry.get_sample_value("lmaas_llm_streams_cut_total", labels) == 0
        assert registry.get_sample_value("lmaas_llm_requests_finished_total", {**labels, "reason": "length"}) == 1
    finally:
        await manager.close()


async def test_a_stream_open_at_the_drain_timeout_is_cut_and_counted(smollm2: Path) -> None:
    registry = CollectorRegistry()
    manager = ModelManager(WorkerMetrics(registry), drain_timeout=0.5)
    dp = DataPlane(manager)
    try:
        await manager.load("m", 1, smollm2, CONFIG, digest="d1")
        stream = dp.llm("m").generate("Once upon a time", SamplingParams(max_tokens=200, ignore_eos=True))
        await anext(stream)
        await manager.unload("m", 1)
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].finish_reason == "cancelled"
        assert registry.get_sample_value("lmaas_llm_streams_cut_total", {"model": "m", "version": "1"}) == 1
    finally:
        await manager.close()


async def test_a_tensor_model_is_not_a_generative_model(smollm2: Path, tmp_path: Path) -> None:
    manager = ModelManager(WorkerMetrics(CollectorRegistry()))
    dp = DataPlane(manager)
    try:
        await manager.load("m", 1, smollm2, CONFIG, digest="d1")
        assert isinstance(manager.get("m"), LLMVersion)
        mlp = tmp_path / "model.onnx"
        write_mlp_onnx(mlp, seed=0)
        await manager.load("mlp", 1, mlp, ModelConfig())
        with pytest.raises(InvalidArgument, match="model 'mlp' is not a generative model"):
            dp.llm("mlp")
    finally:
        await manager.close()
