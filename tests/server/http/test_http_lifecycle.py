"""The HTTP side of a worker's life: drain on SIGTERM, readiness while draining, several processes on one port."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from lmaas.server.app import Worker
from lmaas.server.settings import WorkerSettings
from models import write_mlp_onnx
from processes import ServerProcess, start_worker
from prometheus_client.parser import text_string_to_metric_families

GOOD = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


@pytest.fixture()
def slow_repo(tmp_path: Path) -> Path:
    """An MLP whose batcher holds each request 2 s: requests are surely in flight when SIGTERM comes."""
    write_mlp_onnx(tmp_path / "slow" / "1" / "model.onnx")
    (tmp_path / "slow" / "config.json").write_text(
        json.dumps({"max_batch_size": 64, "dynamic_batching": {"max_queue_delay_microseconds": 2_000_000}})
    )
    return tmp_path


def _pending(proc: ServerProcess, model: str) -> float:
    with urllib.request.urlopen(proc.metrics_url, timeout=10) as r:
        for family in text_string_to_metric_families(r.read().decode()):
            for s in family.samples:
                if s.name == "lmaas_inference_pending_requests" and s.labels.get("model") == model:
                    return s.value
    return 0.0


def test_sigterm_drains_in_flight_http_requests_and_exits_zero(slow_repo: Path) -> None:
    proc = start_worker(slow_repo, "--drain-timeout", "20")
    results: list[object] = []

    def call() -> None:
        try:
            r = httpx.post(f"{proc.http_url}/v2/models/slow/infer", json=GOOD, timeout=30)
            results.append((r.status_code, len(r.json()["outputs"][0]["data"])))
        except Exception as exc:  # recorded, so the assertion below shows it
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while _pending(proc, "slow") < 4:  # all four are queued in the batcher now
        assert time.monotonic() < deadline, proc.output()
        time.sleep(0.01)
    proc.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert proc.proc.wait(30) == 0, proc.output()
    assert results == [(200, 3)] * 4, results
    assert "draining" in proc.output() and "stopped" in proc.output()


async def test_readiness_and_inference_answer_503_once_draining(mlp_repository: Path) -> None:
    """What ``Worker.stop`` does first (``dataplane.draining``) turns HTTP readiness off before the drain."""
    settings = WorkerSettings(
        grpc_port=0, http_port=0, metrics_port=0, model_repository=mlp_repository, drain_timeout=5
    )
    worker = Worker(settings)
    await worker.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.http_port}") as client:
            assert (await client.get("/v2/health/ready")).status_code == 200
            assert (await client.get("/v2/models/mlp/ready")).status_code == 200
            worker.dataplane.draining = True
            r = await client.get("/v2/health/ready")
            assert (r.status_code, r.json()) == (503, {"ready": False})
            assert (await client.get("/v2/models/mlp/ready")).status_code == 503
            assert (await client.get("/v2/health/live")).status_code == 200
            r = await client.post("/v2/models/mlp/infer", json=GOOD)
            assert (r.status_code, r.json()) == (503, {"error": "worker is shutting down"})
    finally:
        await worker.stop()


def test_each_of_several_processes_serves_http(mlp_repository: Path) -> None:
    """``--processes 2``: one HTTP port, and both processes answer on it (per-process statistics tell them apart)."""
    proc = start_worker(mlp_repository, "--processes", "2")
    try:
        assert proc.http and "processes=2" in proc.output()
        sent = 21  # odd: the two processes' counts can never be equal
        for _ in range(sent):  # a new connection each: SO_REUSEPORT spreads connections, not requests
            assert httpx.post(f"{proc.http_url}/v2/models/mlp/infer", json=GOOD, timeout=10).status_code == 200
        counts: set[int] = set()
        for _ in range(200):
            stats = httpx.get(f"{proc.http_url}/v2/models/mlp/versions/2/stats", timeout=10).json()
            counts.add(stats["model_stats"][0]["inference_count"])
            if len(counts) == 2:
                break
        assert len(counts) == 2 and sum(counts) == sent and min(counts) > 0, counts
    finally:
        assert proc.stop() == 0
