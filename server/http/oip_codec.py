"""The OIP v2 REST infer body ↔ the gRPC messages: JSON tensors and Triton's binary tensor data extension.

:func:`decode_infer_request` turns an HTTP infer body into the
``ModelInferRequest`` the gRPC path gets; inputs always become
``raw_input_contents`` (binary parts as they are; JSON ``data`` encoded with
:mod:`lmaas.protos.tensors`), so the core validates and batches both alike.
:func:`encode_infer_response` turns the answer back, each output binary or
JSON ``data``.

Binary extension: the body is the JSON header (``Inference-Header-Content-Length``
bytes) followed by each binary input's bytes in input order, sized by its
``parameters.binary_data_size``. Outputs come back binary when the output asks
(``parameters.binary_data``) or the request does (``parameters.binary_data_output``),
else as JSON ``data``.

Large JSON tensors are the cost (measured: a 12,288-float body spent 9 ms in
``json.loads`` and 9 ms in per-element ``isinstance`` checks). JSON is therefore
parsed and written by orjson (measured on that body: 0.63 ms to parse against the
stdlib's 3.8 ms; 0.4 ms to write 12,288 floats against 18 ms), numeric outputs go
to it as numpy arrays (as float64, so each value reads back exactly as the
stdlib's text did), elements are checked by the *set* of their types
(``set(map(type, flat))`` runs in C) and nested lists flattened a level at a time
with ``chain``; :func:`json_header_size` and :func:`json_output_bytes` let the
route move the big ones off the event loop.

orjson is strict JSON: ``NaN`` / ``Infinity`` in a request are malformed JSON
(400), as in Triton. Outputs holding non-finite values are written by the stdlib
encoder (``NaN``, which Python's and Triton's clients read), not as ``null``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from itertools import chain
from typing import Any

import numpy as np
import orjson
from lmaas.protos.errors import InvalidArgument
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.tensors import DTYPES, decode_raw, element_count, encode_bytes, encode_raw

__all__ = [
    "BinaryOutputs",
    "decode_infer_request",
    "encode_infer_response",
    "encode_json_data",
    "json_header_size",
    "json_output_bytes",
]

# Parameters the HTTP layer consumes (the binary extension's); the rest travel on to the core.
_HTTP_PARAMETERS = frozenset({"binary_data_output", "binary_data_size", "binary_data"})
_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})
# The JSON parser makes exact types, so a set of types answers each isinstance question for all elements at once.
_NUMBERS = frozenset({int, float})
_INTS = frozenset({int})
_BOOLS = frozenset({bool})
_STRINGS = frozenset({str})

BinaryOutputs = tuple[bool, frozenset[str], frozenset[str]]  # (all by default, asked binary, asked JSON)
# One compact encoder: json.dumps(..., separators=...) builds a new JSONEncoder on every call (measured: half
# the cost of encoding a small answer).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def json_header_size(body_size: int, header_length: str | None) -> int:
    """How many bytes of the body are JSON (the whole body unless the binary extension's header says less)."""
    if header_length is not None and header_length.strip().isdigit():
        return min(int(header_length), body_size)
    return body_size


def json_output_bytes(response: pb.ModelInferResponse, binary: BinaryOutputs) -> int:
    """Raw bytes of the outputs that :func:`encode_infer_response` will write as JSON ``data``."""
    default, asked_binary, asked_json = binary
    if default and not asked_json:
        return 0  # all binary: the common perf_analyzer case costs nothing here
    total = 0
    for i, tensor in enumerate(response.outputs):
        if tensor.name in asked_binary or (default and tensor.name not in asked_json):
            continue
        if "shared_memory_region" in tensor.parameters:
            continue
        if tensor.datatype in DTYPES and tensor.datatype != "BYTES":
            # from the shape: reading raw_output_contents[i] would copy the bytes just to count them
            total += element_count(tensor.shape) * DTYPES[tensor.datatype].itemsize
        elif i < len(response.raw_output_contents):
            total += len(response.raw_output_contents[i])
    return total


# ------------------------------------------------------------------------------------------------ decode
def decode_infer_request(
    body: bytes, header_length: str | None, model: str, version: str
) -> tuple[pb.ModelInferRequest, BinaryOutputs, float | None]:
    """The gRPC request for an HTTP infer body; which outputs go back binary; Triton's ``timeout`` (µs)."""
    if header_length is not None:
        if not header_length.strip().isdigit():
            raise InvalidArgument(f"Inference-Header-Content-Length '{header_length}' is not a byte count")
        split = int(header_length)
        if split > len(body):
            raise InvalidArgument(
                f"Inference-Header-Content-Length {split} is longer than the {len(body)}-byte body"
            )
        header, blob = body[:split], memoryview(body)[split:]
    else:
        header, blob = body, memoryview(b"")
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"malformed JSON inference header: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("the inference request must be a JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgument("'inputs' must be a non-empty list of tensors")
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("'id' must be a string")
    request.id = request_id
    params = _parameters(doc.get("parameters"), "request")
    binary_default = params.pop("binary_data_output", False) is True
    timeout = params.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0):
        raise InvalidArgument("parameter 'timeout' must be a non-negative number of microseconds")
    _set_parameters(request.parameters, params)
    offset = 0
    for i, spec in enumerate(inputs):
        offset = _add_input(request, spec, i, blob, offset)
    if offset != len(blob):
        raise InvalidArgument(f"{len(blob) - offset} bytes of binary data follow the inputs that no input claims")
    asked_binary, asked_json = set(), set()
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InvalidArgument("'outputs' must be a list")
        for spec in outputs:
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise InvalidArgument("each requested output must be an object with a 'name'")
            name = spec["name"]
            out_params = _parameters(spec.get("parameters"), f"output '{name}'")
            if out_params.get("classification"):
                raise InvalidArgument(f"output '{name}': the classification extension is not served")
            binary = out_params.pop("binary_data", None)
            if binary is True:
                asked_binary.add(name)
            elif binary is False:
                asked_json.add(name)
            out = request.outputs.add(name=name)
            _set_parameters(out.parameters, out_params)
    return (
        request,
        (binary_default, frozenset(asked_binary), frozenset(asked_json)),
        float(timeout) if timeout is not None else None,
    )


def _add_input(request: pb.ModelInferRequest, spec: Any, i: int, blob: memoryview, offset: int) -> int:
    if not isinstance(spec, dict):
        raise InvalidArgument(f"input {i} must be an object")
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"input {i} has no 'name'")
    if not isinstance(datatype, str):
        raise InvalidArgument(f"input '{name}' has no 'datatype'")
    if datatype not in DTYPES:
        raise InvalidArgument(f"input '{name}': unknown datatype '{datatype}'")
    if not isinstance(shape, list) or not set(map(type, shape)) <= _INTS:
        raise InvalidArgument(f"input '{name}': 'shape' must be a list of integers")
    if shape and (min(shape) < 0 or max(shape) >= 1 << 62):
        raise InvalidArgument(f"input '{name}': shape {shape} has a negative or impossible dimension")
    params = _parameters(spec.get("parameters"), f"input '{name}'")
    size = params.pop("binary_data_size", None)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    _set_parameters(tensor.parameters, params)
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"input '{name}': binary_data_size must be a non-negative integer")
        if "data" in spec:
            raise InvalidArgument(f"input '{name}' has both 'data' and binary_data_size")
        if offset + size > len(blob):
            raise InvalidArgument(
                f"input '{name}': binary_data_size {size} but only {len(blob) - offset} bytes of binary data are left"
            )
        request.raw_input_contents.append(blob[offset : offset + size].tobytes())
        return offset + size
    if "shared_memory_region" in params:  # the core reads it from the region (lmaas.server.shm)
        if "data" in spec:
            raise InvalidArgument(f"input '{name}' has both 'data' and shared_memory_region")
        return offset
    if "data" not in spec:
        raise InvalidArgument(f"input '{name}' has neither 'data' nor binary_data_size")
    request.raw_input_contents.append(encode_json_data(name, datatype, shape, spec["data"]))
    return offset


def encode_json_data(name: str, datatype: str, shape: list[int], data: Any) -> bytes:
    """JSON ``data`` (flat or nested, row-major) as the raw bytes the gRPC path would carry."""
    flat, types = _flatten(data) if isinstance(data, list) else ([data], {type(data)})
    count = element_count(shape)
    if len(flat) != count:
        raise InvalidArgument(f"input '{name}': 'data' holds {len(flat)} elements but shape {shape} needs {count}")
    if datatype == "BYTES":
        if not types <= _STRINGS:
            raise InvalidArgument(f"input '{name}': BYTES data must be strings")
        return encode_bytes(np.array(flat, dtype=np.object_))
    if datatype == "BOOL":
        if not types <= _BOOLS:
            raise InvalidArgument(f"input '{name}': BOOL data must be true or false")
    elif not types <= _NUMBERS:
        raise InvalidArgument(f"input '{name}': {datatype} data must be numbers")
    elif datatype not in _FLOAT_TYPES and not types <= _INTS:
        if any(type(v) is float and v.is_integer() and abs(v) >= 1 << 63 for v in flat):
            # orjson reads an integer beyond 64 bits as a float: say what the stdlib's big int made us say
            info = np.iinfo(DTYPES[datatype])
            raise InvalidArgument(f"input '{name}': a value does not fit {datatype}: outside [{info.min}, {info.max}]")
        raise InvalidArgument(f"input '{name}': {datatype} data must be integers")
    dtype = DTYPES[datatype]
    try:
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            if flat and (min(flat) < info.min or max(flat) > info.max):
                raise OverflowError(f"outside [{info.min}, {info.max}]")
        array = np.array(flat, dtype=dtype)
    except (OverflowError, ValueError) as exc:
        raise InvalidArgument(f"input '{name}': a value does not fit {datatype}: {exc}") from None
    return encode_raw(array)


def _flatten(data: list[Any]) -> tuple[list[Any], set[type]]:
    """Row-major elements of nested lists, and the set of their types.

    Nesting of one depth throughout (what clients send) comes apart a level at a
    time in C; mixed depths (``[1, [2]]``) take the element-wise walk.
    """
    flat, types = data, set(map(type, data))
    while list in types:
        if len(types) != 1:
            flat = _walk(data)
            return flat, set(map(type, flat))
        flat = list(chain.from_iterable(flat))
        types = set(map(type, flat))
    return flat, types


def _walk(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: 'parameters' must be an object")
    return dict(value)


def _set_parameters(target: Any, params: Mapping[str, Any]) -> None:
    for key, value in params.items():
        if key in _HTTP_PARAMETERS:
            continue
        p = target[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            if not -(1 << 63) <= value < 1 << 63:
                raise InvalidArgument(f"parameter '{key}' does not fit in 64 bits")
            p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        elif isinstance(value, str):
            p.string_param = value
        else:
            raise InvalidArgument(f"parameter '{key}' must be a boolean, number or string")


# ------------------------------------------------------------------------------------------------ encode
def encode_infer_response(response: pb.ModelInferResponse, binary: BinaryOutputs) -> tuple[bytes, int | None]:
    """The HTTP body, and the JSON header's length when binary parts follow it (else None)."""
    default, asked_binary, asked_json = binary
    outputs = []
    blobs: list[bytes] = []
    finite = True
    for i, tensor in enumerate(response.outputs):
        raw = response.raw_output_contents[i]
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        # len() first: iterating even an empty protobuf map costs microseconds per output
        params = {k: _parameter_value(v) for k, v in tensor.parameters.items()} if len(tensor.parameters) else {}
        wanted_binary = tensor.name in asked_binary or (default and tensor.name not in asked_json)
        if "shared_memory_region" in params:
            pass  # the data is in the client's region; the parameters say where
        elif wanted_binary:
            params["binary_data_size"] = len(raw)
            blobs.append(raw)
        else:
            out["data"] = data = _json_data(tensor.name, tensor.datatype, list(tensor.shape), raw)
            finite = finite and (not isinstance(data, np.ndarray) or data.dtype.kind != "f" or
                                 bool(np.isfinite(data).all()))
        if params:
            out["parameters"] = params
        outputs.append(out)
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        doc["id"] = response.id
    if len(response.parameters):
        doc["parameters"] = {k: _parameter_value(v) for k, v in response.parameters.items()}
    doc["outputs"] = outputs
    if finite:
        header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    else:  # orjson would write NaN as null: the stdlib writes NaN / Infinity, which clients read back
        for out in outputs:
            if isinstance(out.get("data"), np.ndarray):
                out["data"] = out["data"].tolist()
        header = _ENCODER.encode(doc).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _json_data(name: str, datatype: str, shape: list[int], raw: bytes) -> list[Any] | np.ndarray:
    """An output's JSON ``data``: strings for BYTES, else a flat array orjson writes as it is."""
    array = decode_raw(name, datatype, shape, raw, "output").reshape(-1)
    if datatype == "BYTES":
        try:
            return [bytes(v).decode() for v in array]
        except UnicodeDecodeError:
            raise InvalidArgument(
                f"output '{name}' holds BYTES that are not UTF-8: request it with binary_data true"
            ) from None
    if datatype in _FLOAT_TYPES:  # float64 text reads back exactly (float32 text could round twice)
        return np.ascontiguousarray(array, dtype=np.float64)
    return np.ascontiguousarray(array)


def _parameter_value(p: pb.InferParameter) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None
