"""Where the batcher runs a request: on the event loop when it is alone, in the executor when others wait.

A measured model slower than INLINE_SECONDS (but under IDLE_INLINE_SECONDS) runs a lone request on the loop thread
(no executor hop); a burst of concurrent requests still goes to the executor and batches.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from lmaas.server.batching import IDLE_INLINE_SECONDS, INLINE_SECONDS, Batcher, BatchPolicy
from lmaas.server.metrics import WorkerMetrics
from prometheus_client import CollectorRegistry


class _Recorder:
    def __init__(self) -> None:
        self.threads: list[int] = []
        self.sizes: list[int] = []

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        self.threads.append(threading.get_ident())
        x = inputs["x"]
        self.sizes.append(len(x))
        return {"y": x * 2}


def _batcher(rec: _Recorder, executor: ThreadPoolExecutor, measured: float | None) -> Batcher:
    metrics = WorkerMetrics(CollectorRegistry()).for_model("m", 1)
    batcher = Batcher(rec.run, BatchPolicy(max_batch_size=64), executor, metrics)
    if measured is not None:
        batcher.estimate(measured)
    return batcher


async def test_a_lone_request_of_a_measured_model_runs_on_the_loop() -> None:
    rec, executor = _Recorder(), ThreadPoolExecutor(1)
    batcher = _batcher(rec, executor, (INLINE_SECONDS + IDLE_INLINE_SECONDS) / 2)
    batcher.start()
    try:
        assert not batcher.inline  # too slow for the always-inline rule: only the idle rule applies
        for i in range(3):
            out = await batcher.submit({"x": np.full((1, 2), i, np.float32)}, 1, None)
            np.testing.assert_array_equal(out["y"], np.full((1, 2), 2 * i, np.float32))
    finally:
        await batcher.stop()
        executor.shutdown()
    assert rec.threads == [threading.get_ident()] * 3


async def test_a_burst_goes_to_the_executor_and_batches() -> None:
    rec, executor = _Recorder(), ThreadPoolExecutor(1)
    batcher = _batcher(rec, executor, (INLINE_SECONDS + IDLE_INLINE_SECONDS) / 2)
    batcher.start()
    try:
        outs = await asyncio.gather(*(batcher.submit({"x": np.full((1, 2), i, np.float32)}, 1, None) for i in range(8)))
    finally:
        await batcher.stop()
        executor.shutdown()
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["y"], np.full((1, 2), 2 * i, np.float32))
    assert threading.get_ident() not in rec.threads  # the first saw the others queue behind it: executor
    assert rec.sizes == [1, 7]


async def test_unmeasured_and_slow_models_keep_the_executor() -> None:
    for measured in (None, IDLE_INLINE_SECONDS * 2):
        rec, executor = _Recorder(), ThreadPoolExecutor(1)
        batcher = _batcher(rec, executor, measured)
        batcher.start()
        try:
            await batcher.submit({"x": np.zeros((1, 2), np.float32)}, 1, None)
        finally:
            await batcher.stop()
            executor.shutdown()
        assert threading.get_ident() not in rec.threads, measured
