"""Triton's TraceSetting with stock tritonclient (gRPC and HTTP): sampled requests write Triton's JSON trace records
(REQUEST_START ... REQUEST_END, ns) to the file the worker was started with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from processes import ServerProcess, start_worker
from test_sequence_batching import _config, accumulator_graph
from triton_compat_models import add_graph, write_model
from tritonclient.utils import InferenceServerException

STAMPS = [
    "REQUEST_START",
    "QUEUE_START",
    "COMPUTE_START",
    "COMPUTE_INPUT_END",
    "COMPUTE_OUTPUT_START",
    "COMPUTE_END",
    "REQUEST_END",
]


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traces")


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, trace_dir: Path) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("trace-repo")
    write_model(root, "add", add_graph())
    write_model(root, "other", add_graph())
    write_model(root, "acc", accumulator_graph(), _config({"direct": {}}, slots=2))
    proc = start_worker(root, "--trace-file", str(trace_dir / "trace.json"))
    yield proc
    proc.stop()


@pytest.fixture
def client(worker: ServerProcess) -> Iterator[tc.InferenceServerClient]:
    c = tc.InferenceServerClient(worker.grpc)
    yield c
    c.update_trace_settings(
        settings={"trace_level": None, "trace_rate": None, "trace_count": None, "log_frequency": None}
    )
    for model in ("add", "other", "acc"):
        c.update_trace_settings(model_name=model, settings={"trace_level": None, "trace_rate": None})
    c.close()


def _infer(client: Any, model: str = "add", request_id: str = "") -> None:
    module = tc if isinstance(client, tc.InferenceServerClient) else th
    x = module.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.zeros((1, 4), np.float32))
    client.infer(model, [x], request_id=request_id)


def _records(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else []


def _settings(client: tc.InferenceServerClient, model: str = "") -> dict[str, list[str]]:
    raw = client.get_trace_settings(model_name=model or None, as_json=True)["settings"]
    return {k: v.get("value", []) for k, v in raw.items()}


def _check_record(record: dict[str, Any], model: str, request_id: str) -> None:
    assert record["model_name"] == model and record["model_version"] == 1 and record["request_id"] == request_id
    assert [t["name"] for t in record["timestamps"]] == STAMPS
    ns = [t["ns"] for t in record["timestamps"]]
    assert ns == sorted(ns) and ns[0] > 0


def test_defaults(client: tc.InferenceServerClient, trace_dir: Path) -> None:
    assert _settings(client) == {
        "trace_level": ["OFF"],
        "trace_rate": ["1000"],
        "trace_count": ["-1"],
        "log_frequency": ["0"],
        "trace_file": [str(trace_dir / "trace.json")],
    }


def test_timestamps_written_when_the_setting_changes(
    client: tc.InferenceServerClient, worker: ServerProcess, trace_dir: Path
) -> None:
    path = trace_dir / "trace.json"
    before = len(_records(path))
    got = client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"}, as_json=True)
    assert got["settings"]["trace_level"]["value"] == ["TIMESTAMPS"]
    for i in range(3):
        _infer(client, request_id=f"g{i}")
    http = th.InferenceServerClient(worker.http)
    try:
        _infer(http, request_id="h0")
        assert http.get_trace_settings()["trace_rate"] == "1"
    finally:
        http.close()
    assert len(_records(path)) == before  # log_frequency 0: nothing written yet
    client.update_trace_settings(settings={"trace_level": ["OFF"]})  # a change writes what was collected
    records = _records(path)[before:]
    assert [r["request_id"] for r in records] == ["g0", "g1", "g2", "h0"]
    for r in records:
        _check_record(r, "add", r["request_id"])
    assert len({r["id"] for r in records}) == 4
    _infer(client, request_id="off")  # tracing off: no record
    client.update_trace_settings(settings={"trace_rate": "1"})
    assert len(_records(path)) == before + 4


def test_rate_and_count(client: tc.InferenceServerClient, trace_dir: Path) -> None:
    path = trace_dir / "trace.json"
    before = len(_records(path))
    client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "2", "trace_count": "2"})
    for i in range(7):
        _infer(client, request_id=f"r{i}")
    # Every 2nd request from the first, 2 in all; the count running out writes them without a setting change.
    assert [r["request_id"] for r in _records(path)[before:]] == ["r0", "r2"]
    assert _settings(client)["trace_level"] == ["TIMESTAMPS"]


def test_log_frequency_writes_numbered_files(client: tc.InferenceServerClient, trace_dir: Path) -> None:
    client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "log_frequency": "2"})
    for i in range(4):
        _infer(client, request_id=f"f{i}")
    assert [r["request_id"] for r in _records(trace_dir / "trace.json.0")] == ["f0", "f1"]
    assert [r["request_id"] for r in _records(trace_dir / "trace.json.1")] == ["f2", "f3"]


def test_per_model_settings(client: tc.InferenceServerClient, trace_dir: Path) -> None:
    path = trace_dir / "trace.json"
    before = len(_records(path))
    client.update_trace_settings(model_name="other", settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"})
    assert _settings(client, "other")["trace_level"] == ["TIMESTAMPS"]
    assert _settings(client)["trace_level"] == ["OFF"]  # the global setting is untouched
    _infer(client, "add", "not-traced")
    _infer(client, "other", "traced")
    # Clearing the model's level falls back to the global OFF (and writes what was collected).
    client.update_trace_settings(model_name="other", settings={"trace_level": None})
    assert _settings(client, "other")["trace_level"] == ["OFF"]
    assert _settings(client, "other")["trace_rate"] == ["1"]  # still its own
    records = _records(path)[before:]
    assert [r["request_id"] for r in records] == ["traced"]
    _check_record(records[0], "other", "traced")


def test_sequence_requests_are_traced(client: tc.InferenceServerClient, trace_dir: Path) -> None:
    path = trace_dir / "trace.json"
    before = len(_records(path))
    client.update_trace_settings(model_name="acc", settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"})
    for i in range(2):
        x = tc.InferInput("INPUT", [1, 1], "FP32")
        x.set_data_from_numpy(np.ones((1, 1), np.float32))
        client.infer("acc", [x], request_id=f"s{i}", sequence_id=7, sequence_start=i == 0, sequence_end=i == 1)
    client.update_trace_settings(model_name="acc", settings={"trace_level": None})
    records = _records(path)[before:]
    assert [r["request_id"] for r in records] == ["s0", "s1"]
    for r in records:
        _check_record(r, "acc", r["request_id"])


@pytest.mark.parametrize(
    ("settings", "status", "text"),
    [
        ({"trace_file": "/tmp/elsewhere.json"}, "StatusCode.INVALID_ARGUMENT", "cannot be changed through the API"),
        ({"trace_level": ["TENSORS"]}, "StatusCode.UNIMPLEMENTED", "TENSORS is not supported"),
        ({"trace_level": ["LOUD"]}, "StatusCode.INVALID_ARGUMENT", "is not one of"),
        ({"trace_rate": "0"}, "StatusCode.INVALID_ARGUMENT", "'trace_rate' must be one integer >= 1"),
        ({"trace_count": "many"}, "StatusCode.INVALID_ARGUMENT", "'trace_count' must be one integer >= -1"),
        ({"colour": "1"}, "StatusCode.INVALID_ARGUMENT", "unknown trace setting 'colour'"),
    ],
)
def test_bad_settings_are_refused(
    client: tc.InferenceServerClient, settings: dict[str, Any], status: str, text: str
) -> None:
    with pytest.raises(InferenceServerException, match=text) as info:
        client.update_trace_settings(settings=settings)
    assert info.value.status() == status
    assert _settings(client)["trace_level"] == ["OFF"]  # nothing applied


def test_http_bad_setting_is_400(worker: ServerProcess) -> None:
    http = th.InferenceServerClient(worker.http)
    try:
        with pytest.raises(InferenceServerException, match="must be one integer") as info:
            http.update_trace_settings(settings={"log_frequency": "-1"})
        assert info.value.status() == "400"
    finally:
        http.close()


def test_shutdown_writes_collected_traces(tmp_path: Path) -> None:
    write_model(tmp_path / "repo", "add", add_graph())
    trace = tmp_path / "t.json"
    proc = start_worker(tmp_path / "repo", "--trace-file", str(trace))
    try:
        client = tc.InferenceServerClient(proc.grpc)
        client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"})
        _infer(client, request_id="last")
        client.close()
        assert not trace.exists()
    finally:
        assert proc.stop() == 0
    [record] = _records(trace)
    _check_record(record, "add", "last")
