"""The dynamic batcher on real ONNX Runtime models: results, isolation, queue limits, deadlines."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lmaas.protos.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from lmaas.server.backends.onnx import OnnxBackend
from lmaas.server.batching import Batcher, BatchPolicy
from lmaas.server.metrics import WorkerMetrics
from models import write_identity_onnx, write_mlp_onnx
from prometheus_client import CollectorRegistry


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> OnnxBackend:
    path = tmp_path_factory.mktemp("b") / "mlp.onnx"
    write_mlp_onnx(path)
    return OnnxBackend(path, {})


@pytest.fixture(scope="module")
def strings(tmp_path_factory: pytest.TempPathFactory) -> OnnxBackend:
    path = tmp_path_factory.mktemp("b") / "strings.onnx"
    write_identity_onnx(path, ("BYTES", "INT32"))
    return OnnxBackend(path, {})


class Harness:
    def __init__(self, backend: OnnxBackend, policy: BatchPolicy, gate: threading.Event | None = None) -> None:
        self.registry = CollectorRegistry()
        self.metrics = WorkerMetrics(self.registry).for_model("m", 1)
        self.backend, self.gate = backend, gate
        self.executor = ThreadPoolExecutor(policy.instances)
        self.batcher = Batcher(self.run, policy, self.executor, self.metrics)
        self.batch_sizes: list[int] = []
        self.running = self.max_running = 0
        self._lock = threading.Lock()

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                self.gate.wait(10)
            self.batch_sizes.append(len(next(iter(inputs.values()))))
            return self.backend.run(inputs, [s.name for s in self.backend.outputs])
        finally:
            with self._lock:
                self.running -= 1

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, {"model": "m", "version": "1", **labels}) or 0.0

    async def __aenter__(self) -> Harness:
        self.batcher.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.batcher.stop()
        self.executor.shutdown()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition`` (a loaded CI machine may take a while to start a thread), failing after 10 s."""
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.005)
    assert condition(), what


async def test_batched_results_equal_unbatched_with_mixed_sizes(mlp: OnnxBackend) -> None:
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((int(rng.integers(1, 6)), 4), dtype=np.float32) for _ in range(40)]
    async with Harness(mlp, BatchPolicy(max_batch_size=16, max_delay=0.02)) as h:
        results = await asyncio.gather(*(h.batcher.submit({"x": x}, len(x), None) for x in xs))
    for x, out in zip(xs, results, strict=True):
        np.testing.assert_array_equal(out["y"], mlp.run({"x": x}, ["y"])["y"])
    assert max(h.batch_sizes) > 5, "requests were never batched together"
    assert max(h.batch_sizes) <= 16
    assert h.value("lmaas_inference_executions_total") == len(h.batch_sizes) < len(xs)
    assert h.value("lmaas_inferences_total") == sum(len(x) for x in xs)
    assert h.value("lmaas_inference_batch_size_count") == len(h.batch_sizes)


async def test_bytes_requests_batch_and_split(strings: OnnxBackend) -> None:
    words = [[f"w{i}-{j}".encode() for j in range(3)] for i in range(10)]
    async with Harness(strings, BatchPolicy(max_batch_size=8, max_delay=0.02)) as h:
        outs = await asyncio.gather(
            *(
                h.batcher.submit(
                    {"in_BYTES": np.array([w], dtype=object), "in_INT32": np.full((1, 3), i, np.int32)}, 1, None
                )
                for i, w in enumerate(words)
            )
        )
    for i, out in enumerate(outs):
        assert [s.encode() if isinstance(s, str) else s for s in out["out_BYTES"][0]] == words[i]
        assert out["out_INT32"].tolist() == [[i] * 3]
    assert max(h.batch_sizes) > 1


async def test_a_bad_request_fails_alone(strings: OnnxBackend) -> None:
    def request(word: bytes) -> dict[str, Any]:
        return {"in_BYTES": np.array([[word] * 3], dtype=object), "in_INT32": np.zeros((1, 3), np.int32)}

    async with Harness(strings, BatchPolicy(max_batch_size=8, max_delay=0.05)) as h:
        results = await asyncio.gather(
            *(h.batcher.submit(request(b"\xff" if i == 3 else b"ok"), 1, None) for i in range(6)),
            return_exceptions=True,
        )
    assert isinstance(results[3], InvalidArgument) and "not UTF-8" in str(results[3])
    assert all(isinstance(r, dict) for i, r in enumerate(results) if i != 3)


async def test_zero_delay_runs_an_idle_request_at_once(mlp: OnnxBackend) -> None:
    async with Harness(mlp, BatchPolicy(max_batch_size=16)) as h:
        for _ in range(3):
            await h.batcher.submit({"x": np.zeros((1, 4), np.float32)}, 1, None)
    assert h.batch_sizes == [1, 1, 1]


async def test_zero_delay_takes_everything_waiting(mlp: OnnxBackend) -> None:
    gate = threading.Event()
    async with Harness(mlp, BatchPolicy(max_batch_size=16), gate) as h:
        first = asyncio.ensure_future(h.batcher.submit({"x": np.zeros((1, 4), np.float32)}, 1, None))
        await until(lambda: h.running == 1, "the first request is executing")  # the rest queue behind it
        rest = [asyncio.ensure_future(h.batcher.submit({"x": np.zeros((1, 4), np.float32)}, 1, None)) for _ in range(5)]
        await until(lambda: h.value("lmaas_inference_pending_requests") == 5, "five requests pending")
        gate.set()
        await asyncio.gather(first, *rest)
    assert h.batch_sizes == [1, 5]


async def test_queue_limit_rejects_at_once(mlp: OnnxBackend) -> None:
    gate = threading.Event()
    async with Harness(mlp, BatchPolicy(max_batch_size=1, max_queue_size=2), gate) as h:
        x = {"x": np.zeros((1, 4), np.float32)}
        running = asyncio.ensure_future(h.batcher.submit(x, 1, None))
        await until(lambda: h.running == 1, "the first request is executing")
        queued = [asyncio.ensure_future(h.batcher.submit(x, 1, None)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted, match="queue of 2 requests is full"):
            await h.batcher.submit(x, 1, None)
        gate.set()
        await asyncio.gather(running, *queued)
    assert h.value("lmaas_inference_rejected_total", reason="queue_full") == 1


async def test_expired_deadline_is_dropped_before_running(mlp: OnnxBackend) -> None:
    gate = threading.Event()
    async with Harness(mlp, BatchPolicy(max_batch_size=4), gate) as h:
        loop = asyncio.get_running_loop()
        x = {"x": np.zeros((1, 4), np.float32)}
        blocker = asyncio.ensure_future(h.batcher.submit(x, 1, None))
        await until(lambda: h.running == 1, "the blocker is executing")
        doomed = asyncio.ensure_future(h.batcher.submit(x, 1, loop.time() + 0.05))
        alive = asyncio.ensure_future(h.batcher.submit(x, 1, loop.time() + 30))
        await asyncio.sleep(0.15)  # the doomed request's deadline passes while it waits
        gate.set()
        await blocker
        with pytest.raises(DeadlineExceeded):
            await doomed
        await alive
    assert h.batch_sizes == [1, 1]
    assert h.value("lmaas_inference_rejected_total", reason="deadline") == 1


async def test_instances_run_concurrently(mlp: OnnxBackend) -> None:
    gate = threading.Event()
    async with Harness(mlp, BatchPolicy(max_batch_size=0, instances=3), gate) as h:
        tasks = [
            asyncio.ensure_future(h.batcher.submit({"x": np.zeros((1, 4), np.float32)}, 1, None)) for _ in range(6)
        ]
        await until(lambda: h.max_running == 3, "three instances ran at once")
        gate.set()
        await asyncio.gather(*tasks)
    assert h.batch_sizes == [1] * 6  # max_batch_size 0: never batched


async def test_requests_with_different_item_shapes_are_not_mixed(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "n"])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "neg", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "neg.onnx"))
    backend = OnnxBackend(tmp_path / "neg.onnx", {})
    async with Harness(backend, BatchPolicy(max_batch_size=8, max_delay=0.02)) as h:
        outs = await asyncio.gather(
            *(h.batcher.submit({"x": np.full((1, n), n, np.float32)}, 1, None) for n in (2, 2, 3, 3, 2))
        )
    assert [o["y"].tolist() for o in outs] == [[[-n] * n] for n in (2, 2, 3, 3, 2)]
