"""Lazy models end to end (issue 12, item 4): a real control plane, real worker processes, tritonclient over gRPC.

``lmaas deploy NAME 1 --lazy``: the worker downloads the version but loads it on its first request; under a
memory limit it unloads the least recently used idle lazy version to make room, never one with a request in
flight; a request that waits longer than ``--lazy-load-wait`` gets UNAVAILABLE with a retry hint.

The worker's ``--memory-limit`` is 1 MiB, far below any RSS: every lazy load needs room, so the eviction rule is
exercised on every load, and which versions stay loaded follows from the rule alone (never from timing). The
request kept in flight waits in the dynamic batcher for a batch of two, which the test completes.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from cp_harness import ADMIN_TOKEN, lmaas, start_control_plane, write_scale_onnx
from lmaas.client.control import ControlPlaneClient
from processes import ServerProcess, start_worker, wait_for_workers
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

HOLD_CONFIG = {"max_batch_size": 2, "dynamic_batching": {"max_queue_delay_microseconds": 600_000_000}}
WAIT = 60.0


def wait_for(check, timeout: float = WAIT):  # type: ignore[no-untyped-def]
    """Poll a condition (a bound against hangs, never a measured time)."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess, ServerProcess]]:
    """A control plane, a worker that waits for lazy loads, one that never waits; three lazy models a, b, c."""
    tmp = tmp_path_factory.mktemp("lazy")
    control = start_control_plane(tmp)
    common = ("--control-plane", control.grpc, "--token", ADMIN_TOKEN, "--memory-limit", "1MiB", "--no-autotune")
    patient = start_worker(None, *common, "--worker-id", "w-patient", "--cache-dir", str(tmp / "c1"))
    hasty = start_worker(None, *common, "--worker-id", "w-hasty", "--cache-dir", str(tmp / "c2"),
                         "--lazy-load-wait", "0")
    try:
        wait_for_workers(control.grpc, 2)
        with ControlPlaneClient(control.grpc, token=ADMIN_TOKEN) as client:
            for name, scale in (("a", 2.0), ("b", 3.0), ("c", 4.0)):
                config = HOLD_CONFIG if name == "a" else None
                client.push(name, write_scale_onnx(tmp / f"{name}.onnx", scale), config=config)
        for name in ("a", "b", "c"):
            lmaas("deploy", name, "1", "--lazy", "--wait", address=control.grpc, env={"LMAAS_TOKEN": ADMIN_TOKEN})
        yield control, patient, hasty
    finally:
        hasty.stop()
        patient.stop()
        control.stop()


def ready(client: grpcclient.InferenceServerClient) -> set[str]:
    index = client.get_model_repository_index(as_json=True)
    return {m["name"] for m in index.get("models", []) if m.get("state") == "READY"}


def request(name: str) -> list[grpcclient.InferInput]:
    x = grpcclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    return [x]


def infer(client: grpcclient.InferenceServerClient, name: str) -> float:
    result = client.infer(name, request(name))
    return float(result.as_numpy("y")[0, 0])


def sample(worker: ServerProcess, metric: str, name: str) -> float:
    text = httpx.get(worker.metrics_url, timeout=10).text
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == metric and found.labels.get("model") == name:
                return found.value
    return 0.0


def pending(worker: ServerProcess, name: str) -> float:
    return sample(worker, "lmaas_inference_pending_requests", name)


def test_lazy_versions_load_on_first_request_and_the_lru_idle_one_makes_room(cluster) -> None:  # type: ignore[no-untyped-def]
    control, worker, _ = cluster
    client = grpcclient.InferenceServerClient(worker.grpc)
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert {n: index[n]["state"] for n in "abc"} == {"a": "UNAVAILABLE", "b": "UNAVAILABLE", "c": "UNAVAILABLE"}
    assert "lazy" in index["a"]["reason"] and not client.is_model_ready("a")

    assert infer(client, "b") == 3.0  # the first request waits for the load
    assert ready(client) == {"b"}
    assert infer(client, "c") == 4.0  # needs room: b is idle and least recently used, so it goes
    assert ready(client) == {"c"}
    assert infer(client, "b") == 3.0  # loaded again on demand; c goes
    assert ready(client) == {"b"}

    # A request in flight on a (waiting in its batcher for a second one) keeps a loaded through c's load.
    results: queue.Queue[object] = queue.Queue()
    client.async_infer("a", request("a"), lambda result, error: results.put(error or result))
    wait_for(lambda: pending(worker, "a") == 1)
    assert ready(client) == {"a"}  # a's load made room: b went
    assert infer(client, "c") == 4.0
    assert ready(client) == {"a", "c"}  # a was busy: not evicted
    second = client.infer("a", request("a"))  # completes the batch of two
    first = results.get(timeout=WAIT)
    assert not isinstance(first, InferenceServerException), first
    assert float(second.as_numpy("y")[0, 0]) == 2.0 and float(first.as_numpy("y")[0, 0]) == 2.0  # type: ignore[attr-defined]
    assert infer(client, "b") == 3.0  # now a and c are both idle: both give way (the limit is tiny)
    assert ready(client) == {"b"}
    loads = {n: sample(worker, "lmaas_model_lazy_loads_total", n) for n in "abc"}
    evictions = {n: sample(worker, "lmaas_model_evictions_total", n) for n in "abc"}
    assert (loads, evictions) == ({"a": 1, "b": 3, "c": 2}, {"a": 1, "b": 2, "c": 2})

    status = lmaas("status", address=control.grpc, env={"LMAAS_TOKEN": ADMIN_TOKEN}).stdout
    assert "w-patient" in status, status


def test_a_request_that_cannot_wait_gets_unavailable_with_a_retry_hint(cluster) -> None:  # type: ignore[no-untyped-def]
    _, _, worker = cluster
    client = grpcclient.InferenceServerClient(worker.grpc)
    with pytest.raises(InferenceServerException) as info:
        infer(client, "b")  # --lazy-load-wait 0: the load starts, the request does not wait for it
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    assert "loading" in info.value.message() and "retry" in info.value.message()
    wait_for(lambda: client.is_model_ready("b"))  # the load went on without the request
    assert infer(client, "b") == 3.0
    # Calls that cannot wait (metadata, config) answer the same for a lazy version not loaded, and start it;
    # a readiness probe never does.
    assert not client.is_model_ready("c") and not client.is_model_ready("c")
    assert "c" not in ready(client)
    with pytest.raises(InferenceServerException) as meta:
        client.get_model_metadata("c")
    assert meta.value.status() == "StatusCode.UNAVAILABLE" and "retry" in meta.value.message()
    wait_for(lambda: client.is_model_ready("c"))
    assert client.get_model_metadata("c", as_json=True)["inputs"][0]["name"] == "x"
    with pytest.raises(InferenceServerException) as missing:
        infer(client, "nope")
    assert missing.value.status() == "StatusCode.NOT_FOUND"
