"""Bad HTTP requests get a precise 4xx with OIP's error body, and the worker keeps serving; API keys."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as th
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.inference import grpc_service_pb2_grpc as pb_grpc
from processes import ServerProcess, start_worker

LIMIT = 4096
GOOD = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


@pytest.fixture(scope="module")
def small(mlp_repository: Path) -> Iterator[ServerProcess]:
    proc = start_worker(mlp_repository, "--max-message-bytes", str(LIMIT))
    yield proc
    assert proc.stop() == 0


@pytest.fixture()
def client(small: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=small.http_url, timeout=10) as c:
        yield c
        r = c.post("/v2/models/mlp/infer", json=GOOD)  # after every bad request: still serving
        assert r.status_code == 200 and len(r.json()["outputs"][0]["data"]) == 3


def _binary(header: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + blob, {"inference-header-content-length": str(len(text)), "content-type": "application/octet-stream"}


def _x_binary(size: int = 16) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": size}}]}


def _error(r: httpx.Response, status: int, *fragments: str) -> None:
    assert r.status_code == status, r.text
    message = r.json()["error"]
    assert set(r.json()) == {"error"}
    for fragment in fragments:
        assert fragment in message, message


def test_malformed_json(client: httpx.Client) -> None:
    _error(client.post("/v2/models/mlp/infer", content=b'{"inputs": [', headers={"content-type": "application/json"}),
           400, "malformed JSON")
    _error(client.post("/v2/models/mlp/infer", json=[1, 2]), 400, "must be a JSON object")
    _error(client.post("/v2/models/mlp/infer", json={"inputs": []}), 400, "'inputs' must be a non-empty list")
    _error(client.post("/v2/models/mlp/infer", content=b"\xff\xfe"), 400, "malformed JSON")
    _error(client.post("/v2/repository/index", content=b"{"), 400, "malformed JSON")


def test_wrong_content_type(client: httpx.Client) -> None:
    _error(client.post("/v2/models/mlp/infer", content=json.dumps(GOOD), headers={"content-type": "text/plain"}),
           400, "Content-Type 'text/plain' is not accepted")
    _error(client.post("/v2/models/mlp/infer", data={"inputs": "x"}), 400, "application/x-www-form-urlencoded")


def test_oversize_body_is_413(client: httpx.Client) -> None:
    body, headers = _binary(_x_binary(LIMIT), b"\0" * LIMIT)
    _error(client.post("/v2/models/mlp/infer", content=body, headers=headers), 413, f"limit of {LIMIT}")


def test_binary_part_shorter_than_its_header_says(client: httpx.Client) -> None:
    body, headers = _binary(_x_binary(16), struct.pack("<2f", 1, 2))
    _error(client.post("/v2/models/mlp/infer", content=body, headers=headers), 400,
           "binary_data_size 16 but only 8 bytes")
    body, headers = _binary(_x_binary(16), struct.pack("<6f", 1, 2, 3, 4, 5, 6))
    _error(client.post("/v2/models/mlp/infer", content=body, headers=headers), 400, "8 bytes of binary data follow")
    body, headers = _binary(_x_binary(8), struct.pack("<2f", 1, 2))  # sized consistently, but not [1, 4] FP32
    _error(client.post("/v2/models/mlp/infer", content=body, headers=headers), 400, "raw contents hold 8 bytes")
    body, _ = _binary(_x_binary(16), struct.pack("<4f", 1, 2, 3, 4))
    _error(client.post("/v2/models/mlp/infer", content=body, headers={"inference-header-content-length": "100000"}),
           400, "longer than the")
    _error(client.post("/v2/models/mlp/infer", content=body, headers={"inference-header-content-length": "-1"}),
           400, "not a byte count")


def test_unknown_model_and_version_are_404(client: httpx.Client) -> None:
    # Triton's wording (its clients match on it), the same text as over gRPC
    _error(client.post("/v2/models/nope/infer", json=GOOD), 404, "Request for unknown model: 'nope' is not found")
    _error(client.post("/v2/models/mlp/versions/9/infer", json=GOOD), 404,
           "Request for unknown model: 'mlp' version 9 is not found")
    _error(client.get("/v2/models/nope"), 404, "Request for unknown model: 'nope' is not found")
    _error(client.get("/v2/models/nope/config"), 404)
    _error(client.get("/v2/models/mlp/versions/1/nothing"), 404, "no route")


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"name": "x", "shape": [1, 4], "datatype": "INT32", "data": [1, 2, 3, 4]}, "datatype INT32 given"),
        ({"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}, "shape [1, 3] does not match"),
        ({"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}, "holds 3 elements"),
        ({"name": "x", "shape": [1, 4], "datatype": "FP99", "data": [1, 2, 3, 4]}, "unknown datatype 'FP99'"),
        ({"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ["a", 2, 3, 4]}, "must be numbers"),
        ({"name": "x", "shape": "1,4", "datatype": "FP32", "data": [1, 2, 3, 4]}, "list of integers"),
        ({"name": "x", "shape": [1, -4], "datatype": "FP32", "data": [1]}, "negative"),
        ({"name": "z", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}, "unexpected input 'z'"),
        ({"name": "x", "shape": [1, 4], "datatype": "FP32"}, "neither 'data' nor binary_data_size"),
    ],
)
def test_wrong_tensors_are_400(client: httpx.Client, tensor: dict[str, Any], message: str) -> None:
    _error(client.post("/v2/models/mlp/infer", json={"inputs": [tensor]}), 400, message)


def test_same_validation_message_as_grpc(client: httpx.Client, small: ServerProcess) -> None:
    r = client.post("/v2/models/mlp/infer", json={"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                                               "data": [1, 2, 3]}]})
    with grpc.insecure_channel(small.grpc) as channel:
        request = pb.ModelInferRequest(model_name="mlp")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
        request.raw_input_contents.append(np.ones(3, np.float32).tobytes())
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (r.status_code, r.json()["error"]) == (400, info.value.details())


def test_bad_requested_outputs_and_parameters(client: httpx.Client) -> None:
    _error(client.post("/v2/models/mlp/infer", json={**GOOD, "outputs": [{"name": "w"}]}), 400, "unknown output 'w'")
    _error(client.post("/v2/models/mlp/infer", json={**GOOD, "outputs": [{"name": "y", "parameters":
                                                                          {"classification": 2}}]}),
           400, "classification")
    _error(client.post("/v2/models/mlp/infer", json={**GOOD, "parameters": {"p": [1]}}), 400, "parameter 'p'")
    _error(client.post("/v2/models/mlp/infer", json={**GOOD, "parameters": {"timeout": "soon"}}), 400, "timeout")


def test_requests_with_unused_parameters_are_served(client: httpx.Client) -> None:
    r = client.post("/v2/models/mlp/infer", json={**GOOD, "id": "a", "parameters": {"priority": 1, "tag": "x"}})
    assert r.status_code == 200 and r.json()["id"] == "a"


def test_api_keys_guard_inference_and_metadata_but_not_health(mlp_repository: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("k-one\nk-two\n")
    proc = start_worker(mlp_repository, "--require-api-key", "--api-key-file", str(keys))
    try:
        with httpx.Client(base_url=proc.http_url, timeout=10) as c:
            for method, path, body in (("POST", "/v2/models/mlp/infer", GOOD), ("GET", "/v2", None),
                                       ("GET", "/v2/models/mlp", None), ("GET", "/v2/models/mlp/stats", None),
                                       ("POST", "/v2/repository/index", {})):
                _error(c.request(method, path, json=body), 401, "API key is required")
                _error(c.request(method, path, json=body, headers={"authorization": "Bearer wrong"}), 401,
                       "not valid")
                ok = c.request(method, path, json=body, headers={"authorization": "Bearer k-two"})
                assert ok.status_code == 200, (path, ok.text)
            for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/mlp/ready"):
                assert c.get(path).status_code == 200  # Kubernetes' httpGet probes send no header
        client = th.InferenceServerClient(proc.http)
        inp = th.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), np.float32))
        assert client.infer("mlp", [inp], headers={"Authorization": "Bearer k-one"}).as_numpy("y").shape == (1, 3)
        client.close()
    finally:
        assert proc.stop() == 0


def test_tls_and_mutual_tls_on_http(mlp_repository: Path, tmp_path: Path) -> None:
    """--tls-cert/--tls-key make the HTTP port HTTPS too; --tls-client-ca requires client certificates there."""
    import ssl

    from certs import TestCA

    ca = TestCA(tmp_path / "pki")
    server, client_cert = ca.issue("worker"), ca.issue("client")
    proc = start_worker(mlp_repository, "--tls-cert", str(server.cert), "--tls-key", str(server.key),
                        "--tls-client-ca", str(ca.cert))
    url = f"https://{proc.http}/v2/models/mlp/infer"
    try:
        trusted = ssl.create_default_context(cafile=str(ca.cert))
        trusted.load_cert_chain(str(client_cert.cert), str(client_cert.key))
        r = httpx.post(url, json=GOOD, verify=trusted, timeout=10)
        assert r.status_code == 200 and len(r.json()["outputs"][0]["data"]) == 3
        with pytest.raises(httpx.TransportError):  # no client certificate
            httpx.post(url, json=GOOD, verify=ssl.create_default_context(cafile=str(ca.cert)), timeout=10)
        with pytest.raises(httpx.TransportError):  # plaintext on the TLS port
            httpx.post(f"http://{proc.http}/v2/models/mlp/infer", json=GOOD, timeout=10)
    finally:
        assert proc.stop() == 0
