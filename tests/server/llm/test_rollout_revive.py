"""Background drains and revival, in-process on the real manager: an unloaded version drains while the caller moves
on; a re-deploy of it while it drains takes the same warm object back (no load, no cut); a different digest loads
anew and the draining one is still freed after its last stream; a tensor model revives the same way."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lmaas.server.config import ModelConfig
from lmaas.server.dataplane import DataPlane
from lmaas.server.llm.types import SamplingParams
from lmaas.server.manager import ModelManager
from lmaas.server.metrics import WorkerMetrics
from lmaas.server.routing import Route
from models import write_mlp_onnx
from prometheus_client import CollectorRegistry

CONFIG = ModelConfig(parameters={"context_length": 256, "kv_cache_mb": 32})
PARAMS = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


def loads(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value("lmaas_model_load_duration_seconds_count", {"model": name}) or 0.0


async def test_a_version_redeployed_while_it_drains_is_revived_not_reloaded(smollm2: Path) -> None:
    registry = CollectorRegistry()
    manager = ModelManager(WorkerMetrics(registry), drain_timeout=30)
    dp = DataPlane(manager)
    try:
        await manager.load("m", 1, smollm2, CONFIG, digest="d1")
        await manager.load("m", 2, smollm2, CONFIG, digest="d2")
        manager.set_routes({"m": Route(stable=1)})
        v1 = dp.llm("m")
        stream = v1.generate("Once upon a time", PARAMS)
        first = await anext(stream)
        # Roll out v2; unload v1 the way the sync does (a task), while our stream is open on it.
        manager.set_routes({"m": Route(stable=2)})
        unload = asyncio.create_task(manager.unload("m", 1))
        await asyncio.sleep(0)
        assert [mv.version for mv in manager.loaded()] == [2]  # gone from routing after the task's first step
        assert ("m", 1, "UNLOADING") in [(n, v, s.state) for n, v, s in manager.index()]
        before = loads(registry, "m")
        # Roll back: the draining v1 comes back as it is, without a load.
        assert await manager.load("m", 1, smollm2, CONFIG, digest="d1") is v1
        manager.set_routes({"m": Route(stable=1)})
        assert loads(registry, "m") == before
        assert dp.llm("m") is v1
        await unload  # the drain ended because of the revival, not the stream
        rest = [chunk async for chunk in stream]
        assert first.completion_tokens >= 1 and rest[-1].finish_reason == "length"
        # v1 still serves: a new stream on it runs to its end.
        again = [chunk async for chunk in dp.llm("m").generate("Once upon a time", PARAMS)]
        assert again[-1].finish_reason == "length"
        labels = {"model": "m", "version": "1"}
        assert registry.get_sample_value("lmaas_llm_streams_cut_total", labels) == 0
        assert registry.get_sample_value("lmaas_model_loaded", labels) == 1
        # Unloaded again, with nothing open: it closes this time.
        await manager.unload("m", 1)
        assert ("m", 1, "UNAVAILABLE") in [(n, v, s.state) for n, v, s in manager.index()]
    finally:
        await manager.close()


async def test_another_digest_loads_anew_and_the_old_one_still_drains_and_closes(smollm2: Path) -> None:
    registry = CollectorRegistry()
    manager = ModelManager(WorkerMetrics(registry), drain_timeout=30)
    dp = DataPlane(manager)
    try:
        await manager.load("m", 1, smollm2, CONFIG, digest="d1")
        old = dp.llm("m")
        stream = old.generate("Once upon a time", PARAMS)
        await anext(stream)
        unload = asyncio.create_task(manager.unload("m", 1))
        await asyncio.sleep(0)
        new = await manager.load("m", 1, smollm2, CONFIG, digest="other")
        assert new is not old and dp.llm("m") is new
        assert not unload.done()  # the old object still drains for our stream
        rest = [chunk async for chunk in stream]
        assert rest[-1].finish_reason == "length"
        await unload
        assert dp.llm("m") is new  # closing the old object left the new one serving
        assert [c async for c in new.generate("Hi", PARAMS)][-1].finish_reason == "length"
        assert registry.get_sample_value("lmaas_llm_streams_cut_total", {"model": "m", "version": "1"}) == 0
    finally:
        await manager.close()


async def test_a_tensor_version_revives_too(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    manager = ModelManager(WorkerMetrics(registry), drain_timeout=30)
    try:
        mlp = tmp_path / "model.onnx"
        write_mlp_onnx(mlp, seed=0)
        mv = await manager.load("mlp", 1, mlp, ModelConfig(), digest="d1")
        mv.enter()  # a request in flight keeps it draining
        unload = asyncio.create_task(manager.unload("mlp", 1))
        await asyncio.sleep(0)
        assert not manager.ready("mlp")
        assert await manager.load("mlp", 1, mlp, ModelConfig(), digest="d1") is mv
        assert manager.ready("mlp")
        await unload
        mv.leave()
        assert manager.get("mlp") is mv
    finally:
        await manager.close()
