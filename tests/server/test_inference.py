"""tritonclient against a real worker process: health, metadata, config and results."""

from __future__ import annotations

import grpc
import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as tc
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.inference import grpc_service_pb2_grpc as pb_grpc
from models import ALL_DATATYPES, TORCH_DATATYPES, mlp_reference
from processes import ServerProcess


def _infer_mlp(client: tc.InferenceServerClient, model: str, x: np.ndarray, version: str = "") -> tc.InferResult:
    inp = tc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], model_version=version, outputs=[tc.InferRequestedOutput("y")])


def test_server_health_and_metadata(triton: tc.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta.name == "lmaas"
    assert "model_repository" in meta.extensions


def test_model_metadata_and_config(triton: tc.InferenceServerClient) -> None:
    assert triton.is_model_ready("mlp")
    assert triton.is_model_ready("mlp", "1") and triton.is_model_ready("mlp", "2")
    assert not triton.is_model_ready("mlp", "3")
    assert not triton.is_model_ready("nope")
    meta = triton.get_model_metadata("mlp")
    assert sorted(meta.versions) == ["1", "2"]
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("y", "FP32", [-1, 3])]
    config = triton.get_model_config("mlp").config
    assert config.max_batch_size > 0
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [4])]
    ts = triton.get_model_config("mlp_ts").config
    assert ts.platform == "pytorch_libtorch" and ts.max_batch_size == 16
    fixed = triton.get_model_config("fixed").config
    assert fixed.max_batch_size == 0 and list(fixed.input[0].dims) == [2, 2]


@pytest.mark.parametrize("model", ["mlp", "mlp_ts", "mlp_export"])
@pytest.mark.parametrize("batch", [1, 5])
def test_results_equal_the_model_run_directly(triton: tc.InferenceServerClient, model: str, batch: int) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, 4), dtype=np.float32)
    version = "1"
    result = _infer_mlp(triton, model, x, version)
    assert result.get_response().model_version == "1"
    np.testing.assert_allclose(result.as_numpy("y"), mlp_reference(x, seed=0), rtol=1e-5, atol=1e-6)


def test_empty_version_means_highest_loaded(triton: tc.InferenceServerClient) -> None:
    x = np.ones((2, 4), dtype=np.float32)
    result = _infer_mlp(triton, "mlp", x)
    assert result.get_response().model_version == "2"
    np.testing.assert_allclose(result.as_numpy("y"), mlp_reference(x, seed=1), rtol=1e-5, atol=1e-6)


def test_non_batching_model(triton: tc.InferenceServerClient) -> None:
    a = np.arange(4, dtype=np.float32).reshape(2, 2)
    ins = []
    for name in ("a", "b"):
        t = tc.InferInput(name, [2, 2], "FP32")
        t.set_data_from_numpy(a)
        ins.append(t)
    np.testing.assert_array_equal(triton.infer("fixed", ins).as_numpy("sum"), a + a)


def _sample(dt: str) -> np.ndarray:
    if dt == "BYTES":
        words = [["a", "bc", ""], ["héllo wörld", "x" * 100, "z"]]
        return np.array([[w.encode() for w in row] for row in words], dtype=object)
    if dt == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if dt == "BF16":
        return np.array([[1.5, 2, 3], [4, 5, -6]], dtype=ml_dtypes.bfloat16)
    info = np.iinfo(tc.triton_to_np_dtype(dt)) if dt[0] in "UI" else None
    base = np.array([[0, 1, 2], [3, 4, 5]])
    if info is not None:  # include the extremes of the type
        return np.array([[info.min, 1, 2], [3, 4, info.max]], dtype=tc.triton_to_np_dtype(dt))
    return (base / 3).astype(tc.triton_to_np_dtype(dt))


@pytest.mark.parametrize(("model", "dts"), [
    ("identity", [d for d in ALL_DATATYPES if d != "BF16"]),
    ("identity_bf16", ["BF16"]),
    ("identity_ts", list(TORCH_DATATYPES)),
    ("identity_export", list(TORCH_DATATYPES)),
])
def test_every_datatype_round_trips_raw(triton: tc.InferenceServerClient, model: str, dts: list[str]) -> None:
    if True:
        inputs = []
        for dt in dts:
            t = tc.InferInput(f"in_{dt}", [2, 3], dt)
            t.set_data_from_numpy(_sample(dt))
            inputs.append(t)
        result = triton.infer(model, inputs)
        for dt in dts:
            out = result.as_numpy(f"out_{dt}")
            assert out.dtype == _sample(dt).dtype, dt
            np.testing.assert_array_equal(out, _sample(dt), err_msg=dt)


_TYPED = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def test_every_typed_datatype_round_trips(worker: ServerProcess) -> None:
    """Typed ``contents`` (which tritonclient never sends) through our own stubs; answers come back raw."""
    with grpc.insecure_channel(worker.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="identity_typed")
        for dt, field in _TYPED.items():
            tensor = request.inputs.add(name=f"in_{dt}", datatype=dt, shape=[2, 3])
            getattr(tensor.contents, field).extend(_sample(dt).reshape(-1).tolist())
        response = stub.ModelInfer(request)
    assert len(response.raw_output_contents) == len(response.outputs)
    for out, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        dt = out.datatype
        if dt not in _TYPED:
            continue
        expected = _sample(dt)
        if dt == "BYTES":
            from lmaas.protos.tensors import decode_bytes

            got = decode_bytes(out.name, raw, 6).reshape(2, 3)
        else:
            got = np.frombuffer(raw, dtype=expected.dtype).reshape(list(out.shape))
        np.testing.assert_array_equal(got, expected, err_msg=dt)


def test_requested_output_filtering(worker: ServerProcess) -> None:
    with grpc.insecure_channel(worker.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="identity", id="req-7")
        for dt in (d for d in ALL_DATATYPES if d != "BF16"):
            t = request.inputs.add(name=f"in_{dt}", datatype=dt, shape=[1, 3])
            arr = _sample(dt)[:1]
            request.raw_input_contents.append(
                b"".join(len(b).to_bytes(4, "little") + b for b in arr.reshape(-1)) if dt == "BYTES" else arr.tobytes()
            )
            del t
        request.outputs.add(name="out_INT32")
        request.outputs.add(name="out_BYTES")
        response = stub.ModelInfer(request)
    assert response.id == "req-7"
    assert [o.name for o in response.outputs] == ["out_INT32", "out_BYTES"]
    assert np.frombuffer(response.raw_output_contents[0], np.int32).tolist() == _sample("INT32")[0].tolist()


def test_statistics_count_requests(triton: tc.InferenceServerClient) -> None:
    before = triton.get_inference_statistics("mlp", "1").model_stats[0]
    for batch in (1, 3):
        _infer_mlp(triton, "mlp", np.zeros((batch, 4), np.float32), "1")
    after = triton.get_inference_statistics("mlp", "1").model_stats[0]
    assert after.inference_stats.success.count - before.inference_stats.success.count == 2
    assert after.inference_count - before.inference_count == 4
    assert after.last_inference > 0


def test_stream_infer_answers_each_request(worker: ServerProcess) -> None:
    results: list[object] = []
    client = tc.InferenceServerClient(worker.grpc)
    client.start_stream(callback=lambda result, error: results.append(error or result))
    try:
        for batch in (1, 2):
            inp = tc.InferInput("x", [batch, 4], "FP32")
            inp.set_data_from_numpy(np.ones((batch, 4), np.float32))
            client.async_stream_infer("mlp", [inp], model_version="1")
        bad = tc.InferInput("x", [1, 5], "FP32")
        bad.set_data_from_numpy(np.ones((1, 5), np.float32))
        client.async_stream_infer("mlp", [bad], model_version="1")
    finally:
        client.stop_stream()
        client.close()
    assert len(results) == 3
    assert [r.as_numpy("y").shape for r in results[:2]] == [(1, 3), (2, 3)]  # type: ignore[attr-defined]
    assert "shape" in str(results[2])
