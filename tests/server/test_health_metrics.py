"""grpc.health.v1, server reflection and Prometheus metrics, checked against known traffic."""

from __future__ import annotations

import contextlib
import urllib.request

import grpc
import numpy as np
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from processes import ServerProcess
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException


def scrape(worker: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(worker.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def test_health_service(worker: ServerProcess) -> None:
    with grpc.insecure_channel(worker.grpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert stub.Check(health_pb2.HealthCheckRequest(service="")).status == serving
        assert stub.Check(health_pb2.HealthCheckRequest(service="mlp")).status == serving
        assert stub.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")).status == serving
        try:
            stub.Check(health_pb2.HealthCheckRequest(service="no-such-model"))
            raise AssertionError("expected NOT_FOUND")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_services(worker: ServerProcess) -> None:
    with grpc.insecure_channel(worker.grpc) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
        ]
        listed, described = list(stub.ServerReflectionInfo(iter(requests)))
    names = {s.name for s in listed.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto


def test_metrics_count_known_traffic(worker: ServerProcess) -> None:
    client = tc.InferenceServerClient(worker.grpc)
    before = scrape(worker)
    good = tc.InferInput("x", [3, 4], "FP32")
    good.set_data_from_numpy(np.zeros((3, 4), np.float32))
    for _ in range(5):
        client.infer("mlp", [good], model_version="1")
    bad = tc.InferInput("x", [1, 5], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 5), np.float32))
    for _ in range(2):
        with contextlib.suppress(InferenceServerException):  # the status is checked through the counter
            client.infer("mlp", [bad], model_version="1")
    after = scrape(worker)
    mv = {"model": "mlp", "version": "1"}

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **mv, **labels) - sample(before, name, **mv, **labels)

    assert delta("lmaas_inference_requests_total", code="OK") == 5
    assert delta("lmaas_inference_requests_total", code="INVALID_ARGUMENT") == 2
    assert delta("lmaas_inferences_total") == 15
    assert delta("lmaas_inference_executions_total") == 5
    assert delta("lmaas_inference_request_duration_seconds_count") == 5
    assert delta("lmaas_inference_queue_duration_seconds_count") == 5
    assert delta("lmaas_inference_compute_duration_seconds_count") == 5
    assert delta("lmaas_inference_batch_size_sum") == 15
    assert sample(after, "lmaas_inference_pending_requests", **mv) == 0
    assert sample(after, "lmaas_model_loaded", **mv) == 1
    assert sample(after, "lmaas_model_load_duration_seconds_count", model="mlp") == 2  # versions 1 and 2
    client.close()
