"""perf_analyzer --shared-memory system against a real worker serving the benchmark CNN (big inputs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as tc
from processes import ServerProcess, start_worker

from benchmarks.models import build_repository
from benchmarks.perf_analyzer import run_perf_analyzer


@pytest.fixture(scope="module")
def cnn_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo: Path = tmp_path_factory.mktemp("cnn-repo")
    build_repository(repo, ["cnn"])
    proc = start_worker(repo)
    yield proc
    proc.stop()


@pytest.mark.parametrize("batch", [1, 4])
def test_perf_analyzer_system_shared_memory(cnn_worker: ServerProcess, binary: str, batch: int) -> None:
    shm = ["--shared-memory", "system", "--output-shared-memory-size", "1024", "-b", str(batch)]
    result = run_perf_analyzer(cnn_worker.grpc, "cnn", measurement_ms=300, extra=shm, binary=binary, timeout=120)
    assert result["throughput"] > 0
    client = tc.InferenceServerClient(cnn_worker.grpc)
    try:  # perf_analyzer unregisters its regions when it ends: none is left mapped
        assert client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}
        stats = client.get_inference_statistics("cnn", as_json=True)["model_stats"][0]
        assert int(stats["inference_stats"]["fail"].get("count", 0)) == 0
    finally:
        client.close()
