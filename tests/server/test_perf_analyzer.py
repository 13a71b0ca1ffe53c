"""Triton's perf_analyzer drives a short load against the worker without errors."""

from __future__ import annotations

import pytest
from processes import ServerProcess

from benchmarks.perf_analyzer import run_perf_analyzer


@pytest.mark.parametrize(
    ("model", "concurrency", "extra"),
    [
        ("mlp", 1, []),
        ("mlp", 4, ["-b", "2"]),
        ("mlp_ts", 2, []),
        ("identity", 2, ["--string-length", "8"]),
    ],
)
def test_perf_analyzer_short_load(
    worker: ServerProcess, binary: str, model: str, concurrency: int, extra: list[str]
) -> None:
    result = run_perf_analyzer(
        worker.grpc, model, concurrency=concurrency, measurement_ms=500, extra=extra, binary=binary, timeout=120
    )
    assert result["throughput"] > 0
    assert result["p99_us"] >= result["p50_us"] > 0
