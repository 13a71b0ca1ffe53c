"""Every bad request gets the stated status and a message naming what was wrong."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.inference import grpc_service_pb2_grpc as pb_grpc
from processes import ServerProcess, start_worker

Req = pb.ModelInferRequest
OK_X = np.ones((1, 4), np.float32).tobytes()


@pytest.fixture(scope="module")
def stub(worker: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(worker.grpc) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def mlp(
    shape: list[int] | None = None,
    datatype: str = "FP32",
    raw: bytes | None = OK_X,
    name: str = "x",
    version: str = "1",
) -> Req:
    req = Req(model_name="mlp", model_version=version)
    req.inputs.add(name=name, datatype=datatype, shape=shape or [1, 4])
    if raw is not None:
        req.raw_input_contents.append(raw)
    return req


def _with(req: Req, fn: Callable[[Req], object]) -> Req:
    fn(req)
    return req


CASES = {
    "unknown model": (Req(model_name="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
    "unknown version": (mlp(version="9"), grpc.StatusCode.NOT_FOUND, "version 9"),
    "non-integer version": (mlp(version="latest"), grpc.StatusCode.INVALID_ARGUMENT, "latest"),
    "missing input": (
        _with(
            Req(model_name="fixed"),
            lambda r: (r.inputs.add(name="a", datatype="FP32", shape=[2, 2]), r.raw_input_contents.append(bytes(16))),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "missing input(s) ['b']",
    ),
    "extra input": (
        _with(
            mlp(), lambda r: (r.inputs.add(name="z", datatype="FP32", shape=[1, 4]), r.raw_input_contents.append(OK_X))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unexpected input 'z'",
    ),
    "duplicate input": (
        _with(
            mlp(), lambda r: (r.inputs.add(name="x", datatype="FP32", shape=[1, 4]), r.raw_input_contents.append(OK_X))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "'x' is given twice",
    ),
    "wrong datatype": (
        mlp(datatype="FP64", raw=bytes(32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': datatype FP64 given, model expects FP32",
    ),
    "unknown datatype": (mlp(datatype="FLOAT"), grpc.StatusCode.INVALID_ARGUMENT, "unknown datatype 'FLOAT'"),
    "wrong rank": (mlp(shape=[4]), grpc.StatusCode.INVALID_ARGUMENT, "input 'x': shape [4] does not match"),
    "wrong dim": (mlp(shape=[1, 5], raw=bytes(20)), grpc.StatusCode.INVALID_ARGUMENT, "[-1, 4]"),
    "negative dim": (mlp(shape=[-1, 4]), grpc.StatusCode.INVALID_ARGUMENT, "negative"),
    "batch too large": (mlp(shape=[65, 4], raw=bytes(65 * 16)), grpc.StatusCode.INVALID_ARGUMENT, "max_batch_size"),
    "raw size mismatch": (
        mlp(raw=bytes(15)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': raw contents hold 15 bytes but shape [1, 4] of FP32 needs 16",
    ),
    "no data": (mlp(raw=None), grpc.StatusCode.INVALID_ARGUMENT, "has no data"),
    "raw count mismatch": (
        _with(mlp(), lambda r: r.raw_input_contents.append(OK_X)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "2 entries for 1 inputs",
    ),
    "typed and raw mixed": (
        _with(mlp(), lambda r: r.inputs[0].contents.fp32_contents.extend([1, 2, 3, 4])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "contents field must not be specified when using raw_input_contents for 'x' for model 'mlp'",
    ),
    "typed count mismatch": (
        _with(mlp(raw=None), lambda r: r.inputs[0].contents.fp32_contents.extend([1.0])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "fp32_contents holds 1 elements",
    ),
    "typed wrong field": (
        _with(mlp(raw=None), lambda r: r.inputs[0].contents.int_contents.extend([1, 2, 3, 4])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x'",
    ),
    "typed BF16": (
        _with(
            Req(model_name="identity_bf16"),
            lambda r: r.inputs.add(name="in_BF16", datatype="BF16", shape=[1, 3]).contents.fp32_contents.extend(
                [1, 2, 3]
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "send it in raw_input_contents",
    ),
    "unknown output": (
        _with(mlp(), lambda r: r.outputs.add(name="nope")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown output 'nope'",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_request_status(stub: pb_grpc.GRPCInferenceServiceStub, case: str) -> None:
    request, code, fragment = CASES[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == code, info.value.details()
    assert fragment in info.value.details()


def test_malformed_bytes_elements(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    def request(raw: bytes) -> Req:
        req = Req(model_name="identity_typed")
        for dt in ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64"):
            size = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "UINT32": 4, "INT32": 4, "FP32": 4}.get(
                dt, 8
            )
            req.inputs.add(name=f"in_{dt}", datatype=dt, shape=[1, 3])
            req.raw_input_contents.append(bytes(size * 3))
        req.inputs.add(name="in_BYTES", datatype="BYTES", shape=[1, 3])
        req.raw_input_contents.append(raw)
        return req

    def element(b: bytes) -> bytes:
        return len(b).to_bytes(4, "little") + b

    ok = stub.ModelInfer(request(element(b"a") + element(b"") + element(b"bc")))
    assert len(ok.outputs) == 12
    for raw, fragment in [
        (element(b"abcdef") + element(b"ghijkl"), "end after 2 of 3"),
        (element(b"a") + element(b"b"), "cannot hold 3 BYTES elements"),
        (element(b"a") + element(b"b") + (99).to_bytes(4, "little") + b"x", "claims 99 bytes"),
        (element(b"a") * 3 + b"\x00", "left over"),
        (element(b"\xff\xfe") * 3, "not UTF-8"),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request(raw))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in info.value.details()


def test_oversized_message_is_resource_exhausted(mlp_repository: Path) -> None:
    proc = start_worker(mlp_repository, "--max-message-bytes", "4096")
    try:
        with grpc.insecure_channel(proc.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(mlp(shape=[64, 4], raw=bytes(64 * 16 * 8)))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert stub.ModelInfer(mlp()).model_name == "mlp"  # still serving
    finally:
        assert proc.stop() == 0


def test_server_survives_bad_requests(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    for request, _, _ in CASES.values():
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(request)
    response = stub.ModelInfer(mlp())
    assert np.frombuffer(response.raw_output_contents[0], np.float32).shape == (3,)
