"""Stock tritonclient (gRPC and HTTP) against a real worker: system shared memory, LogSettings, TraceSetting."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
import tritonclient.utils.shared_memory as shm
from processes import ServerProcess, start_worker
from triton_compat_models import add_graph, onnx_bytes, write_model
from tritonclient.utils import InferenceServerException

X = np.arange(12, dtype=np.float32).reshape(3, 4)
NBYTES = X.nbytes


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("shm-repo")
    write_model(root, "add", add_graph())
    proc = start_worker(root)
    yield proc
    proc.stop()


@pytest.fixture()
def client(worker: ServerProcess) -> Iterator[tc.InferenceServerClient]:
    c = tc.InferenceServerClient(worker.grpc)
    yield c
    c.unregister_system_shared_memory()
    c.close()


@pytest.fixture()
def regions() -> Iterator[dict[str, tuple[str, object]]]:
    """An input region holding X and an output region, both owned (created and destroyed) by the test."""
    made = {}
    for role in ("in", "out"):
        key = f"/lmaas_test_{role}_{os.getpid()}"
        handle = shm.create_shared_memory_region(f"{role}_region", key, NBYTES)
        made[role] = (key, handle)
    shm.set_shared_memory_region(made["in"][1], [X])
    yield made
    for _, handle in made.values():
        shm.destroy_shared_memory_region(handle)


def _inputs(region: str = "in", size: int = NBYTES, offset: int = 0) -> list[tc.InferInput]:
    inp = tc.InferInput("x", list(X.shape), "FP32")
    inp.set_shared_memory(region, size, offset)
    return [inp]


def test_grpc_inference_through_shared_memory_equals_the_plain_path(client: tc.InferenceServerClient, regions) -> None:
    client.register_system_shared_memory("in", regions["in"][0], NBYTES)
    client.register_system_shared_memory("out", regions["out"][0], NBYTES)
    status = client.get_system_shared_memory_status(as_json=True)["regions"]
    assert status["in"] == {"name": "in", "key": regions["in"][0], "byte_size": str(NBYTES)}
    out = tc.InferRequestedOutput("y")
    out.set_shared_memory("out", NBYTES)
    result = client.infer("add", _inputs(), outputs=[out])
    output = result.get_output("y")
    assert output.parameters["shared_memory_region"].string_param == "out"
    assert output.parameters["shared_memory_byte_size"].int64_param == NBYTES
    from_shm = shm.get_contents_as_numpy(regions["out"][1], np.float32, list(X.shape))
    plain = tc.InferInput("x", list(X.shape), "FP32")
    plain.set_data_from_numpy(X)
    np.testing.assert_array_equal(from_shm, client.infer("add", [plain]).as_numpy("y"))
    np.testing.assert_array_equal(from_shm, X + 1)
    # Shared-memory input, output over the socket.
    np.testing.assert_array_equal(client.infer("add", _inputs()).as_numpy("y"), X + 1)


def test_http_shared_memory(worker: ServerProcess, client: tc.InferenceServerClient, regions) -> None:
    http = th.InferenceServerClient(worker.http)
    try:
        http.register_system_shared_memory("in", regions["in"][0], NBYTES)
        http.register_system_shared_memory("out", regions["out"][0], NBYTES)
        assert {r["name"] for r in http.get_system_shared_memory_status()} == {"in", "out"}
        inp = th.InferInput("x", list(X.shape), "FP32")
        inp.set_shared_memory("in", NBYTES)
        out = th.InferRequestedOutput("y", binary_data=True)
        out.set_shared_memory("out", NBYTES)
        result = http.infer("add", [inp], outputs=[out])
        assert result.get_output("y")["parameters"]["shared_memory_region"] == "out"
        np.testing.assert_array_equal(shm.get_contents_as_numpy(regions["out"][1], np.float32, [3, 4]), X + 1)
        with pytest.raises(InferenceServerException, match="not supported: this worker has no GPU backend"):
            http.get_cuda_shared_memory_status()
        http.unregister_system_shared_memory("out")
        assert [r["name"] for r in http.get_system_shared_memory_status()] == ["in"]
    finally:
        http.close()


def _status_of(call) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(InferenceServerException) as err:
        call()
    return str(err.value.status()), str(err.value.message())


def test_bad_regions_get_the_stated_status(client: tc.InferenceServerClient, regions) -> None:
    key = regions["in"][0]
    status, message = _status_of(lambda: client.infer("add", _inputs("never_registered")))
    assert (
        status == "StatusCode.INVALID_ARGUMENT" and "Unable to find shared memory region: 'never_registered'" in message
    )
    client.register_system_shared_memory("in", key, NBYTES)
    status, message = _status_of(lambda: client.infer("add", _inputs(size=NBYTES, offset=8)))
    assert (
        status == "StatusCode.INVALID_ARGUMENT" and "past the end of the 48-byte shared-memory region 'in'" in message
    )
    status, message = _status_of(lambda: client.register_system_shared_memory("in", key, NBYTES))
    assert status == "StatusCode.ALREADY_EXISTS"
    status, message = _status_of(lambda: client.register_system_shared_memory("big", key, NBYTES, offset=4))
    assert status == "StatusCode.INVALID_ARGUMENT" and "exceeds the 48-byte object" in message
    status, message = _status_of(lambda: client.register_system_shared_memory("gone", "/lmaas_no_such_key", 16))
    assert status == "StatusCode.INVALID_ARGUMENT" and "no such object" in message
    status, message = _status_of(lambda: client.register_system_shared_memory("esc", "/../etc/passwd", 16))
    assert status == "StatusCode.INVALID_ARGUMENT" and "is not a POSIX shared-memory name" in message
    status, _ = _status_of(lambda: client.get_system_shared_memory_status("nope"))
    assert status == "StatusCode.NOT_FOUND"
    status, message = _status_of(lambda: client.register_cuda_shared_memory("c", base64.b64encode(b"handle"), 0, 16))
    assert status == "StatusCode.UNIMPLEMENTED" and "no GPU backend" in message
    # Unregistered: released, and a request naming it fails.
    client.unregister_system_shared_memory("in")
    assert client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}
    status, _ = _status_of(lambda: client.infer("add", _inputs()))
    assert status == "StatusCode.INVALID_ARGUMENT"


def test_log_settings_change_the_real_log_level(client: tc.InferenceServerClient, worker: ServerProcess) -> None:
    settings = client.get_log_settings(as_json=True)["settings"]
    assert settings["log_info"] == {"bool_param": True} and settings["log_verbose_level"] == {"uint32_param": 0}
    quiet = client.update_log_settings({"log_info": False}, as_json=True)["settings"]
    assert quiet["log_info"] == {"bool_param": False} and quiet["log_warning"] == {"bool_param": True}
    client.load_model("quiet_model", config="{}", files={"file:1/model.onnx": onnx_bytes(add_graph())})
    client.update_log_settings({"log_info": True})
    client.load_model("loud_model", config="{}", files={"file:1/model.onnx": onnx_bytes(add_graph())})
    while not any("model=loud_model" in line for line in worker.log):  # lines arrive in order
        time.sleep(0.05)
    assert not any("model=quiet_model" in line for line in worker.log)
    status, message = _status_of(lambda: client.update_log_settings({"log_file": "/tmp/x.log"}))
    assert status == "StatusCode.INVALID_ARGUMENT" and "cannot change at run time" in message
    status, message = _status_of(lambda: client.update_log_settings({"colour": True}))
    assert status == "StatusCode.INVALID_ARGUMENT" and "['colour']" in message
    http = th.InferenceServerClient(worker.http)
    try:
        assert http.get_log_settings()["log_info"] is True
        assert http.update_log_settings({"log_verbose_level": 1})["log_verbose_level"] == 1
        assert client.get_log_settings(as_json=True)["settings"]["log_verbose_level"] == {"uint32_param": 1}
        http.update_log_settings({"log_verbose_level": 0})
    finally:
        http.close()


def test_trace_setting_is_honest(client: tc.InferenceServerClient, worker: ServerProcess) -> None:
    """This worker has no --trace-file: tracing cannot be turned on (tracing itself: test_trace_settings.py)."""
    assert client.get_trace_settings(as_json=True)["settings"]["trace_level"] == {"value": ["OFF"]}
    status, message = _status_of(lambda: client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}))
    assert status == "StatusCode.FAILED_PRECONDITION" and "--trace-file" in message
    http = th.InferenceServerClient(worker.http)
    try:
        assert http.get_trace_settings()["trace_level"] == ["OFF"]
        with pytest.raises(InferenceServerException, match="cannot be changed through the API"):
            http.update_trace_settings(settings={"trace_file": "/tmp/elsewhere.json"})
    finally:
        http.close()
