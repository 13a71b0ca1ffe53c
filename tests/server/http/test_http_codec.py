"""The infer body codec in-process: JSON ``data`` of any nesting encodes to the bytes numpy makes; bad data's errors.

The type checks work on the set of element types and flatten nested lists a level at a time; these
properties pin that to the element-wise definition (row-major order, exact types: a JSON ``true`` is
never a number).
"""

from __future__ import annotations

import json
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lmaas.protos.errors import InvalidArgument
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.tensors import encode_bytes
from lmaas.server.http.oip_codec import decode_infer_request, encode_infer_response, encode_json_data

NUMPY = {
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BF16": ml_dtypes.bfloat16,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64, "BOOL": np.bool_,
}


def _values(datatype: str) -> st.SearchStrategy[Any]:
    if datatype == "BOOL":
        return st.booleans()
    if datatype == "BYTES":
        return st.text(max_size=5)
    if datatype in ("FP16", "FP32", "FP64", "BF16"):
        # JSON numbers are finite (NaN / Infinity are not JSON: see test_non_finite_request_values_are_malformed)
        return st.floats(allow_nan=False, allow_infinity=False, width=16) | st.integers(-1000, 1000)
    info = np.iinfo(NUMPY[datatype])
    return st.integers(int(info.min), int(info.max))


@st.composite
def tensors(draw: st.DrawFn) -> tuple[str, list[int], list[Any]]:
    datatype = draw(st.sampled_from([*NUMPY, "BYTES"]))
    shape = draw(st.lists(st.integers(0, 4), min_size=1, max_size=3))
    count = int(np.prod(shape))
    flat = draw(st.lists(_values(datatype), min_size=count, max_size=count))
    return datatype, shape, flat


def _nest(flat: list[Any], shape: list[int]) -> list[Any]:
    if len(shape) == 1:
        return list(flat)
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


@settings(max_examples=150, deadline=None)
@given(tensors(), st.booleans())
def test_json_data_encodes_like_numpy(tensor: tuple[str, list[int], list[Any]], nested: bool) -> None:
    datatype, shape, flat = tensor
    data = _nest(flat, shape) if nested else flat
    expected = (
        encode_bytes(np.array(flat, dtype=np.object_)) if datatype == "BYTES"
        else np.array(flat, dtype=NUMPY[datatype]).tobytes()
    )
    assert encode_json_data("x", datatype, shape, data) == expected
    # and through the whole body, as the route sees it
    body = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}).encode()
    request, _, _ = decode_infer_request(body, None, "m", "")
    assert request.raw_input_contents[0] == expected


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("FP32", [1.0, True], "FP32 data must be numbers"),
        ("FP32", [[1.0], [False]], "FP32 data must be numbers"),
        ("INT8", [1, 2.0], "INT8 data must be integers"),
        ("INT8", [[1], [128]], "a value does not fit INT8: outside [-128, 127]"),
        ("UINT16", [0, -1], "a value does not fit UINT16: outside [0, 65535]"),
        ("BOOL", [True, 0], "BOOL data must be true or false"),
        ("BYTES", ["a", None], "BYTES data must be strings"),
        ("FP32", [1.0, 2.0, 3.0], "'data' holds 3 elements but shape [2] needs 2"),
        ("FP32", [[1.0], [2.0, [3.0]]], "'data' holds 3 elements but shape [2] needs 2"),
        ("FP32", [10**400, 1.0], "a value does not fit FP32"),
    ],
)
def test_bad_data_errors_name_the_input_and_the_fault(datatype: str, data: list[Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        encode_json_data("x", datatype, [2], data)
    assert info.value.message.startswith(f"input 'x': {message}"), info.value.message


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_request_values_are_malformed(literal: str) -> None:
    """Strict JSON, as Triton parses it: the stdlib's NaN / Infinity extensions are a 400, not a tensor value."""
    body = f'{{"inputs": [{{"name": "x", "shape": [1], "datatype": "FP32", "data": [{literal}]}}]}}'.encode()
    with pytest.raises(InvalidArgument, match="malformed JSON inference header"):
        decode_infer_request(body, None, "m", "")


def test_big_integers_do_not_fit() -> None:
    """Integers beyond 64 bits (which the parser reads as floats) still say they do not fit."""
    body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "UINT64", "data": [18446744073709551616]}]}'
    with pytest.raises(InvalidArgument, match="a value does not fit UINT64"):
        decode_infer_request(body, None, "m", "")


def test_non_finite_outputs_are_written_as_python_reads_them() -> None:
    """orjson would write NaN as null; an output with NaN / Infinity keeps the stdlib's text, read back as is."""
    response = pb.ModelInferResponse(model_name="m", model_version="1")
    response.outputs.add(name="y", datatype="FP32", shape=[3])
    response.raw_output_contents.append(np.array([1.5, np.nan, -np.inf], np.float32).tobytes())
    body, _ = encode_infer_response(response, (False, frozenset(), frozenset()))
    data = json.loads(body)["outputs"][0]["data"]
    assert data[0] == 1.5 and np.isnan(data[1]) and data[2] == -np.inf


def test_scalar_data_is_one_element() -> None:
    assert encode_json_data("x", "FP64", [1], 2.5) == np.array([2.5]).tobytes()
    assert encode_json_data("x", "BYTES", [], "hi") == encode_bytes(np.array(["hi"], dtype=np.object_))
    with pytest.raises(InvalidArgument, match="INT32 data must be numbers"):
        encode_json_data("x", "INT32", [1], True)


def test_binary_inputs_and_outputs_round_trip() -> None:
    a = np.arange(6, dtype=np.float32)
    header = json.dumps({
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
    }).encode()
    request, binary, _ = decode_infer_request(header + a.tobytes(), str(len(header)), "m", "1")
    assert request.raw_input_contents[0] == a.tobytes()
    assert binary == (False, frozenset({"y"}), frozenset())
    response = pb.ModelInferResponse(model_name="m", model_version="1")
    for name in ("y", "z"):
        response.outputs.add(name=name, datatype="FP32", shape=[2, 3])
        response.raw_output_contents.append(a.tobytes())
    body, split = encode_infer_response(response, binary)
    assert split is not None and body[split:] == a.tobytes()
    doc = json.loads(body[:split])
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 24}
    assert doc["outputs"][1]["data"] == a.tolist()
