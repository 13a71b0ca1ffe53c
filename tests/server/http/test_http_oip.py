"""Stock tritonclient.http against a real worker process; every answer equals the gRPC path's on the same worker."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from models import ALL_DATATYPES, mlp_reference
from processes import ServerProcess, start_worker
from tritonclient.utils import InferenceServerException

ARRAYS: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 255], [7, 8, 9]], np.uint8),
    "UINT16": np.array([[0, 1, 65535], [7, 8, 9]], np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1], [7, 8, 9]], np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1], [7, 8, 9]], np.uint64),
    "INT8": np.array([[-128, 0, 127], [1, 2, 3]], np.int8),
    "INT16": np.array([[-(2**15), 0, 2**15 - 1], [1, 2, 3]], np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [1, 2, 3]], np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [1, 2, 3]], np.int64),
    "FP16": np.array([[0.5, -1.25, 65504], [1e-3, 2, 3]], np.float16),
    "FP32": np.array([[0.1, -1e30, 3.5], [1, 2, 3]], np.float32),
    "FP64": np.array([[0.1, -1e300, 3.5], [1, 2, 3]], np.float64),
    "BF16": np.array([[0.5, -2, 3.25], [1, 2, 256]], ml_dtypes.bfloat16),
    "BYTES": np.array([[b"a", b"", "ü".encode()], [b"xyz", b"1", b"2"]], np.object_),
}
assert set(ARRAYS) == set(ALL_DATATYPES)


@pytest.fixture(scope="module")
def clients(worker: ServerProcess) -> Iterator[tuple[th.InferenceServerClient, tg.InferenceServerClient]]:
    http = th.InferenceServerClient(worker.http)
    grpc = tg.InferenceServerClient(worker.grpc)
    yield http, grpc
    http.close()
    grpc.close()


MODELS = {"identity": [d for d in ALL_DATATYPES if d != "BF16"], "identity_bf16": ["BF16"]}


def _as_bytes(a: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode(), otypes=[object])(a)


def _infer_http(
    client: th.InferenceServerClient, model: str, *, binary_in: bool, binary_out: bool | None, **kwargs: Any
) -> dict[str, np.ndarray]:
    """Every input of ``model``; outputs named with ``binary_out`` (None: none named, the server's default)."""
    inputs = []
    for dt in MODELS[model]:
        inp = th.InferInput(f"in_{dt}", [2, 3], dt)
        inp.set_data_from_numpy(ARRAYS[dt], binary_data=binary_in)
        inputs.append(inp)
    outputs = None
    if binary_out is not None:
        outputs = [th.InferRequestedOutput(f"out_{dt}", binary_data=binary_out) for dt in MODELS[model]]
    result = client.infer(model, inputs, outputs=outputs, **kwargs)
    return {dt: result.as_numpy(f"out_{dt}") for dt in MODELS[model]}


def _infer_grpc(client: tg.InferenceServerClient, model: str) -> dict[str, np.ndarray]:
    inputs = []
    for dt in MODELS[model]:
        inp = tg.InferInput(f"in_{dt}", [2, 3], dt)
        inp.set_data_from_numpy(ARRAYS[dt])
        inputs.append(inp)
    result = client.infer(model, inputs)
    return {dt: result.as_numpy(f"out_{dt}") for dt in MODELS[model]}


def _equal(http: np.ndarray | None, grpc: np.ndarray | None, datatype: str) -> None:
    assert http is not None and grpc is not None, datatype
    if datatype == "BYTES":  # JSON answers strings, binary answers bytes: the same bytes either way
        assert _as_bytes(http).tolist() == _as_bytes(grpc).tolist()
    else:
        assert http.dtype == grpc.dtype and http.shape == grpc.shape, datatype
        assert http.tobytes() == grpc.tobytes(), datatype


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize(
    ("binary_in", "binary_out"), [(True, True), (False, False), (True, False), (False, True), (False, None)]
)
def test_every_datatype_equals_the_grpc_answer(
    clients: Any, model: str, binary_in: bool, binary_out: bool | None
) -> None:
    http, grpc = clients
    if model == "identity_bf16" and not (binary_in and binary_out):
        pytest.skip("tritonclient.http sends and reads BF16 only as binary data")
    expected = _infer_grpc(grpc, model)
    got = _infer_http(http, model, binary_in=binary_in, binary_out=binary_out)
    for dt in MODELS[model]:
        _equal(expected[dt], ARRAYS[dt], dt)  # the model echoes
        _equal(got[dt], expected[dt], dt)


@pytest.mark.parametrize("request_compression", [None, "gzip", "deflate"])
@pytest.mark.parametrize("response_compression", [None, "gzip", "deflate"])
def test_compressed_requests_and_responses(clients: Any, request_compression: str | None,
                                           response_compression: str | None) -> None:
    http, grpc = clients
    expected = _infer_grpc(grpc, "identity")
    for binary in (True, False):
        got = _infer_http(http, "identity", binary_in=binary, binary_out=binary,
                          request_compression_algorithm=request_compression,
                          response_compression_algorithm=response_compression)
        for dt in MODELS["identity"]:
            _equal(got[dt], expected[dt], dt)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_infer_answers_are_compressed_when_asked(worker: ServerProcess, encoding: str) -> None:
    import httpx

    body = {"inputs": [{"name": "x", "shape": [16, 4], "datatype": "FP32", "data": [0.5] * 64}]}
    r = httpx.post(f"{worker.http_url}/v2/models/mlp/infer", json=body, headers={"accept-encoding": encoding})
    assert r.status_code == 200 and r.headers["content-encoding"] == encoding
    assert len(r.json()["outputs"][0]["data"]) == 48  # httpx decoded it


def test_requested_outputs_and_default_outputs(clients: Any) -> None:
    http, _ = clients
    inputs = []
    for dt in ("INT32", "FP64", "BYTES"):
        inp = th.InferInput(f"in_{dt}", [2, 3], dt)
        inp.set_data_from_numpy(ARRAYS[dt], binary_data=dt != "BYTES")
        inputs.append(inp)
    # identity takes every datatype's input: fill the others
    for dt in ALL_DATATYPES:
        if dt in ("INT32", "FP64", "BYTES", "BF16"):
            continue
        inp = th.InferInput(f"in_{dt}", [2, 3], dt)
        inp.set_data_from_numpy(ARRAYS[dt])
        inputs.append(inp)
    asked = [th.InferRequestedOutput("out_FP64", binary_data=False), th.InferRequestedOutput("out_INT32")]
    result = http.infer("identity", inputs, outputs=asked, request_id="r-7")
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["out_FP64", "out_INT32"]
    assert "data" in response["outputs"][0] and "binary_data_size" in response["outputs"][1]["parameters"]
    assert response["id"] == "r-7" and response["model_name"] == "identity" and response["model_version"] == "1"
    np.testing.assert_array_equal(result.as_numpy("out_INT32"), ARRAYS["INT32"])
    np.testing.assert_array_equal(result.as_numpy("out_FP64"), ARRAYS["FP64"])
    everything = http.infer("identity", inputs)  # no outputs named: all of them, binary
    names = [o["name"] for o in everything.get_response()["outputs"]]
    assert sorted(names) == sorted(f"out_{dt}" for dt in ALL_DATATYPES if dt != "BF16")
    assert _as_bytes(everything.as_numpy("out_BYTES")).tolist() == ARRAYS["BYTES"].tolist()


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("version", ["", "1", "2"])
def test_mlp_results_equal_grpc_and_the_reference(clients: Any, binary: bool, version: str) -> None:
    http, grpc = clients
    x = np.random.default_rng(3).standard_normal((5, 4), dtype=np.float32)
    inp = th.InferInput("x", [5, 4], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    got = http.infer("mlp", [inp], model_version=version, outputs=[th.InferRequestedOutput("y", binary_data=binary)])
    ginp = tg.InferInput("x", [5, 4], "FP32")
    ginp.set_data_from_numpy(x)
    expected = grpc.infer("mlp", [ginp], model_version=version).as_numpy("y")
    assert got.as_numpy("y").tobytes() == expected.tobytes()
    seed = 0 if version == "1" else 1
    np.testing.assert_allclose(got.as_numpy("y"), mlp_reference(x, seed=seed), rtol=1e-5, atol=1e-6)


def test_health_and_metadata_equal_grpc(clients: Any) -> None:
    http, grpc = clients
    assert http.is_server_live() and http.is_server_ready()
    assert http.get_server_metadata() == {
        "name": "lmaas", "version": grpc.get_server_metadata().version,
        "extensions": list(grpc.get_server_metadata().extensions),
    }
    assert http.is_model_ready("mlp") and http.is_model_ready("mlp", "1")
    assert not http.is_model_ready("mlp", "3") and not http.is_model_ready("nope")
    for version in ("", "1"):
        meta = http.get_model_metadata("mlp", version)
        g = grpc.get_model_metadata("mlp", version, as_json=True)
        assert meta["name"] == g["name"] and sorted(meta["versions"]) == sorted(g["versions"]) == ["1", "2"]
        assert meta["platform"] == g["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    with pytest.raises(InferenceServerException, match="not found"):
        http.get_model_metadata("nope")


def test_config_and_statistics_in_tritons_json_shape(clients: Any) -> None:
    http, grpc = clients
    config = http.get_model_config("mlp")
    g = grpc.get_model_config("mlp", as_json=True)["config"]
    assert config["name"] == g["name"] == "mlp" and config["max_batch_size"] == int(g["max_batch_size"])
    assert config["input"][0]["data_type"] == "TYPE_FP32" and config["input"][0]["dims"] == [4]  # numbers
    fixed = http.get_model_config("fixed")
    assert fixed["max_batch_size"] == 0 and fixed["input"][0]["dims"] == [2, 2]
    _infer_http(http, "identity", binary_in=True, binary_out=True)
    stats = http.get_inference_statistics("identity")["model_stats"]
    gstats = grpc.get_inference_statistics("identity", as_json=True)["model_stats"]
    assert [s["name"] for s in stats] == [s["name"] for s in gstats] == ["identity"]
    assert isinstance(stats[0]["inference_count"], int) and stats[0]["inference_count"] >= 1
    assert stats[0]["inference_stats"]["success"]["count"] >= 1
    every = http.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in every} >= {"mlp", "identity", "fixed"}
    assert [s["version"] for s in http.get_inference_statistics("mlp", "2")["model_stats"]] == ["2"]
    with pytest.raises(InferenceServerException, match="not found"):
        http.get_inference_statistics("nope")


def test_repository_index_load_and_unload(tmp_path: Path, mlp_repository: Path) -> None:
    shutil.copytree(mlp_repository / "mlp", tmp_path / "mlp")
    proc = start_worker(tmp_path)
    client = th.InferenceServerClient(proc.http)
    try:
        index = client.get_model_repository_index()
        assert {(m["name"], m.get("version"), m["state"]) for m in index} == {("mlp", "1", "READY"),
                                                                               ("mlp", "2", "READY")}
        client.unload_model("mlp")
        assert not client.is_model_ready("mlp")
        assert {m["state"] for m in client.get_model_repository_index()} == {"UNAVAILABLE"}
        client.load_model("mlp")
        assert client.is_model_ready("mlp", "2")
        with pytest.raises(InferenceServerException, match="not found"):
            client.unload_model("nope")
    finally:
        client.close()
        assert proc.stop() == 0


def test_repository_load_is_refused_on_a_managed_worker(mlp_repository: Path) -> None:
    import httpx

    proc = start_worker(mlp_repository, "--control-plane", "127.0.0.1:1", env={"LMAAS_TOKEN": ""})
    try:
        for action in ("load", "unload"):
            r = httpx.post(f"{proc.http_url}/v2/repository/models/mlp/{action}", json={}, timeout=10)
            assert r.status_code == 409, r.text
            assert "managed by the control plane" in r.json()["error"]
        assert th.InferenceServerClient(proc.http).is_model_ready("mlp")  # still serving
    finally:
        assert proc.stop() == 0


def test_health_routes_with_curl(worker: ServerProcess) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/mlp/ready", "/v2/models/mlp/versions/1/ready"):
        out = subprocess.run(["curl", "-sf", f"{worker.http_url}{path}"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, (path, out.stderr)
        assert out.stdout in ('{"live":true}', '{"ready":true}')
    missing = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              f"{worker.http_url}/v2/models/nope/ready"], capture_output=True, text=True, timeout=30)
    assert missing.stdout == "503"
