"""Graceful shutdown and the model-repository RPCs, each on a worker of its own."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from models import write_mlp_onnx
from processes import start_worker
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException


def pending(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "lmaas_inference_pending_requests" and sample.labels.get("model") == "slow"
    )


@pytest.fixture()
def slow_repo(tmp_path: Path) -> Path:
    """An MLP whose batcher holds each request up to 2 s, so all eight requests are surely queued at SIGTERM."""
    write_mlp_onnx(tmp_path / "slow" / "1" / "model.onnx")
    (tmp_path / "slow" / "config.json").write_text(
        json.dumps({"max_batch_size": 64, "dynamic_batching": {"max_queue_delay_microseconds": 2_000_000}})
    )
    return tmp_path


def test_sigterm_finishes_in_flight_requests_and_exits_zero(slow_repo: Path) -> None:
    proc = start_worker(slow_repo, "--drain-timeout", "10")
    results: list[object] = []

    def call() -> None:
        client = tc.InferenceServerClient(proc.grpc)
        inp = tc.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), np.float32))
        try:
            results.append(client.infer("slow", [inp]).as_numpy("y").shape)
        except InferenceServerException as exc:
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while pending(proc.metrics_url) < 8:  # every request is queued in the batcher now
        assert time.monotonic() < deadline, f"requests never queued: {pending(proc.metrics_url)} pending"
        time.sleep(0.01)
    proc.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert proc.proc.wait(30) == 0, proc.output()
    assert results == [(1, 3)] * 8, results
    assert "draining" in proc.output() and "stopped" in proc.output()


def test_repository_index_load_unload(tmp_path: Path, model_repository: Path) -> None:
    shutil.copytree(model_repository / "mlp", tmp_path / "mlp")
    proc = start_worker(tmp_path)
    client = tc.InferenceServerClient(proc.grpc)
    try:
        index = {
            (m["name"], m.get("version", "")): m["state"]
            for m in client.get_model_repository_index(as_json=True)["models"]
        }
        assert index == {("mlp", "1"): "READY", ("mlp", "2"): "READY"}
        client.unload_model("mlp")
        assert not client.is_model_ready("mlp")
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):
            client.unload_model("mlp")
        shutil.rmtree(tmp_path / "mlp" / "2")  # a reload sees the repository as it is now
        client.load_model("mlp")
        assert client.is_model_ready("mlp", "1") and not client.is_model_ready("mlp", "2")
        with pytest.raises(InferenceServerException, match="no-such"):
            client.load_model("no-such")
        # a config override passed with the load request
        client.load_model("mlp", config=json.dumps({"max_batch_size": 2}))
        assert client.get_model_config("mlp").config.max_batch_size == 2
    finally:
        client.close()
        assert proc.stop() == 0


def test_broken_model_does_not_stop_the_others(tmp_path: Path, model_repository: Path) -> None:
    shutil.copytree(model_repository / "mlp", tmp_path / "mlp")
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    proc = start_worker(tmp_path)
    client = tc.InferenceServerClient(proc.grpc)
    try:
        assert client.is_model_ready("mlp")
        assert not client.is_model_ready("broken")
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index["broken"]["state"] == "UNAVAILABLE"
        assert "cannot load model.onnx" in index["broken"]["reason"]
    finally:
        client.close()
        assert proc.stop() == 0


def test_several_processes_share_one_port_and_one_metrics_endpoint(mlp_repository: Path) -> None:
    import urllib.request

    proc = start_worker(mlp_repository, "--processes", "2")
    clients = [tc.InferenceServerClient(proc.grpc) for _ in range(4)]  # separate channels: spread over processes
    try:
        for client in clients:
            for _ in range(5):
                inp = tc.InferInput("x", [1, 4], "FP32")
                inp.set_data_from_numpy(np.ones((1, 4), np.float32))
                assert client.infer("mlp", [inp]).as_numpy("y").shape == (1, 3)
        with urllib.request.urlopen(proc.metrics_url, timeout=10) as resp:
            text = resp.read().decode()
        line = next(
            ln
            for ln in text.splitlines()
            if ln.startswith("lmaas_inference_requests_total{")
            and 'model="mlp"' in ln
            and 'version="2"' in ln
            and 'code="OK"' in ln
        )
        assert float(line.rsplit(" ", 1)[1]) == 20  # summed over both processes
    finally:
        for client in clients:
            client.close()
        assert proc.stop() == 0
