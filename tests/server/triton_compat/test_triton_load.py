"""Stock tritonclient against a real worker: warm-up, RepositoryModelLoad file overrides, Triton's error texts."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.http as th
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.inference import grpc_service_pb2_grpc as pb_grpc
from processes import ServerProcess, start_worker
from triton_compat_models import add_graph, div_graph, onnx_bytes, parse_graph, write_model
from tritonclient.utils import InferenceServerException

DIV_INPUTS = {"a": {"random_data": True}, "d": {"random_data": True}}


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("triton-repo")
    write_model(root, "parse", parse_graph())
    write_model(root, "div", div_graph())
    write_model(
        root,
        "div_warm",
        div_graph(),
        {"model_warmup": [{"name": "r", "batch_size": 4, "count": 2, "inputs": DIV_INPUTS}]},
    )
    write_model(root, "div_data", div_graph(), {"model_warmup": [{"inputs": {"a": {"data": [6]}, "d": {"data": [3]}}}]})
    # Zeros for 'd' (the default of a configured sample): a configured warm-up that fails must fail the load.
    write_model(
        root, "div_bad", div_graph(), {"model_warmup": [{"name": "zeros", "inputs": {"a": {"random_data": True}}}]}
    )
    proc = start_worker(root)
    yield proc
    proc.stop()


@pytest.fixture()
def client(worker: ServerProcess) -> Iterator[tc.InferenceServerClient]:
    c = tc.InferenceServerClient(worker.grpc)
    yield c
    c.close()


def _tensor(name: str, array: np.ndarray, datatype: str) -> tc.InferInput:
    t = tc.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def _divide(client: tc.InferenceServerClient, model: str, a: list[int], d: list[int]) -> np.ndarray:
    ins = [_tensor(n, np.array(v, np.int64).reshape(-1, 1), "INT64") for n, v in (("a", a), ("d", d))]
    return client.infer(model, ins).as_numpy("q")


def test_models_that_reject_zeros_load_and_answer(client: tc.InferenceServerClient) -> None:
    text = np.array([[b"1.5"], [b"-4"]], dtype=object)
    np.testing.assert_array_equal(
        client.infer("parse", [_tensor("text", text, "BYTES")]).as_numpy("value"), [[3.0], [-8.0]]
    )
    np.testing.assert_array_equal(_divide(client, "div", [7, 9], [2, 3]), [[3], [3]])
    for model in ("parse", "div"):
        warmup = client.get_model_config(model).config.parameters["warmup"].string_value
        assert warmup.startswith("synthetic zeros rejected by the model, loaded without warm-up"), warmup
        assert not client.get_model_config(model).config.model_warmup


def test_configured_warmup_runs_and_is_reported(client: tc.InferenceServerClient) -> None:
    config = client.get_model_config("div_warm").config
    assert config.parameters["warmup"].string_value == "configured: 2 request(s) of 1 sample(s) ran"
    (sample,) = config.model_warmup
    assert (sample.name, sample.batch_size, sample.count) == ("r", 4, 2)
    assert sample.inputs["a"].random_data and list(sample.inputs["a"].dims) == [1]
    assert client.get_model_config("div_data").config.parameters["warmup"].string_value.startswith("configured: 1")
    np.testing.assert_array_equal(_divide(client, "div_warm", [8], [2]), [[4]])


def test_failing_configured_warmup_fails_the_load(client: tc.InferenceServerClient) -> None:
    assert not client.is_model_ready("div_bad")
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index["div_bad"]["state"] == "UNAVAILABLE"
    assert "configured warm-up 'zeros' failed" in index["div_bad"]["reason"]
    with pytest.raises(InferenceServerException) as err:
        client.load_model("div_bad")
    assert err.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert (
        "failed to load 'div_bad' version 1: warm-up failed: configured warm-up 'zeros' failed" in err.value.message()
    )


def test_load_model_from_files_sent_by_the_client(client: tc.InferenceServerClient, worker: ServerProcess) -> None:
    config = json.dumps({"max_batch_size": 8})
    client.load_model("sent", config=config, files={"file:1/model.onnx": onnx_bytes(add_graph())})
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(client.infer("sent", [_tensor("x", x, "FP32")]).as_numpy("y"), x + 1)
    assert client.get_model_config("sent").config.max_batch_size == 8
    # The HTTP form (base64) replaces it: version 1 now divides.
    http = th.InferenceServerClient(worker.http)
    try:
        http.load_model("sent", config="{}", files={"file:1/model.onnx": onnx_bytes(div_graph())})
    finally:
        http.close()
    np.testing.assert_array_equal(_divide(client, "sent", [9], [3]), [[3]])


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("file:../escape/model.onnx", "must be relative and stay inside the model directory"),
        ("file:/etc/model.onnx", "must be relative and stay inside the model directory"),
        ("file:1/../../x.onnx", "must be relative and stay inside the model directory"),
        ("file:model.onnx", "files go under a version directory"),
    ],
)
def test_file_override_paths_are_confined(client: tc.InferenceServerClient, path: str, message: str) -> None:
    with pytest.raises(InferenceServerException) as err:
        client.load_model("escaper", config="{}", files={path: b"x"})
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in err.value.message()
    assert not client.is_model_ready("escaper")


def test_unknown_load_parameters_are_refused_by_name(worker: ServerProcess) -> None:
    with grpc.insecure_channel(worker.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.RepositoryModelLoadRequest(model_name="div")
        request.parameters["poll_repository"].bool_param = True
        with pytest.raises(grpc.RpcError) as err:
            stub.RepositoryModelLoad(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "['poll_repository']" in str(err.value.details())


def test_triton_error_texts(client: tc.InferenceServerClient, worker: ServerProcess) -> None:
    x = np.zeros((1, 1), np.int64)
    with pytest.raises(InferenceServerException) as err:
        client.infer("absent", [_tensor("a", x, "INT64")])
    assert (err.value.status(), err.value.message()) == (
        "StatusCode.NOT_FOUND",
        "Request for unknown model: 'absent' is not found",
    )
    with pytest.raises(InferenceServerException) as err:
        client.infer("div", [_tensor("a", x, "INT64")], model_version="7")
    assert err.value.message() == "Request for unknown model: 'div' version 7 is not found"
    with pytest.raises(InferenceServerException) as err:
        client.infer("div", [_tensor("a", x, "INT64")], model_version="one")
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert err.value.message().startswith("failed to get model version from specified version string 'one'")
    # Typed contents beside raw_input_contents: named before the (also wrong) input count is.
    with grpc.insecure_channel(worker.grpc) as channel:
        request = pb.ModelInferRequest(model_name="div")
        request.inputs.add(name="a", datatype="INT64", shape=[1, 1]).contents.int64_contents.append(1)
        request.inputs.add(name="d", datatype="INT64", shape=[1, 1])
        request.raw_input_contents.append(x.tobytes())
        with pytest.raises(grpc.RpcError) as rpc_err:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert rpc_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc_err.value.details() == (
        "contents field must not be specified when using raw_input_contents for 'a' for model 'div'"
    )


def test_server_metadata_lists_what_is_served(client: tc.InferenceServerClient, worker: ServerProcess) -> None:
    meta = client.get_server_metadata()
    assert meta.name == "lmaas"
    http = th.InferenceServerClient(worker.http)
    try:
        assert http.get_server_metadata()["extensions"] == list(meta.extensions)
    finally:
        http.close()
    assert "binary_tensor_data" in meta.extensions  # served on the HTTP port every worker binds
    served = ("model_repository", "model_configuration", "statistics", "system_shared_memory", "logging", "trace")
    for name in (*served, "sequence"):
        assert name in meta.extensions
    for absent in ("cuda_shared_memory", "classification"):
        assert absent not in meta.extensions
