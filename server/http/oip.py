"""OIP v2 over HTTP/REST (KServe's REST protocol + Triton's binary tensor data extension).

A sibling of the gRPC servicer over the same :class:`DataPlane`: each route
turns the HTTP request into the gRPC request message, calls the core, and
turns the answer back, so validation, routing, batching and metrics are
literally the gRPC path's. Inference inputs always become
``raw_input_contents`` (binary parts as they are; JSON ``data`` encoded with
:mod:`lmaas.protos.tensors`).

Binary extension: the body is the JSON header (``Inference-Header-Content-Length``
bytes) followed by each binary input's bytes in input order, sized by its
``parameters.binary_data_size``. Outputs come back binary when the output asks
(``parameters.binary_data``) or the request does (``parameters.binary_data_output``),
else as JSON ``data``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from lmaas.protos.errors import InvalidArgument, Unavailable, Unimplemented
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.tensors import DTYPES, decode_raw, element_count, encode_bytes, encode_raw
from lmaas.server.dataplane import DataPlane
from lmaas.server.http.asgi import Request, Response, Route, json_response
from lmaas.server.logsettings import log_settings
from lmaas.server.uploads import FILE_PREFIX, check_parameters

__all__ = ["build_routes", "decode_infer_request", "encode_infer_response", "message_dict"]

_HEADER_LENGTH = "inference-header-content-length"
# Parameters the HTTP layer consumes (the binary extension's); the rest travel on to the core.
_HTTP_PARAMETERS = frozenset({"binary_data_output", "binary_data_size", "binary_data"})
_ACCEPTED_TYPES = frozenset({"", "application/json", "application/octet-stream"})


def build_routes(dp: DataPlane) -> list[Route]:
    """Every OIP / Triton route, for ``/v2/models/{model}`` and ``/v2/models/{model}/versions/{version}``."""
    h = _Handlers(dp)
    routes = [
        Route("GET", "/v2/health/live", h.live, public=True),
        Route("GET", "/v2/health/ready", h.ready, public=True),
        Route("GET", "/v2", h.server_metadata),
        Route("GET", "/v2/models/stats", h.statistics),
        Route("POST", "/v2/repository/index", h.repository_index),
        Route("POST", "/v2/repository/models/{model}/load", h.load),
        Route("POST", "/v2/repository/models/{model}/unload", h.unload),
        Route("GET", "/v2/systemsharedmemory/status", h.shm_status),
        Route("GET", "/v2/systemsharedmemory/region/{region}/status", h.shm_status),
        Route("POST", "/v2/systemsharedmemory/region/{region}/register", h.shm_register),
        Route("POST", "/v2/systemsharedmemory/unregister", h.shm_unregister),
        Route("POST", "/v2/systemsharedmemory/region/{region}/unregister", h.shm_unregister),
        Route("GET", "/v2/cudasharedmemory/status", h.no_cuda),
        Route("GET", "/v2/cudasharedmemory/region/{region}/status", h.no_cuda),
        Route("POST", "/v2/cudasharedmemory/region/{region}/register", h.no_cuda),
        Route("POST", "/v2/cudasharedmemory/unregister", h.no_cuda),
        Route("POST", "/v2/cudasharedmemory/region/{region}/unregister", h.no_cuda),
        Route("GET", "/v2/logging", h.logging),
        Route("POST", "/v2/logging", h.logging),
        Route("GET", "/v2/trace/setting", h.trace),
        Route("POST", "/v2/trace/setting", h.trace),
        Route("GET", "/v2/models/{model}/trace/setting", h.trace),
        Route("POST", "/v2/models/{model}/trace/setting", h.trace),
    ]
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [
            Route("GET", base, h.model_metadata),
            Route("GET", f"{base}/ready", h.model_ready, public=True),
            Route("GET", f"{base}/config", h.model_config),
            Route("GET", f"{base}/stats", h.statistics),
            Route("POST", f"{base}/infer", h.infer),
        ]
    return routes


class _Handlers:
    def __init__(self, dp: DataPlane) -> None:
        self.dp = dp

    async def live(self, request: Request) -> Response:
        return json_response({"live": self.dp.live()})

    async def ready(self, request: Request) -> Response:
        # 503 while draining: Kubernetes' httpGet probe takes the pod out of the Service first.
        ready = self.dp.ready()
        return json_response({"ready": ready}, 200 if ready else 503)

    async def model_ready(self, request: Request) -> Response:
        ready = self.dp.model_ready(request.params["model"], request.params.get("version", ""))
        return json_response({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        md = self.dp.server_metadata()
        return json_response({"name": md.name, "version": md.version, "extensions": list(md.extensions)})

    async def model_metadata(self, request: Request) -> Response:
        md = self.dp.model_metadata(request.params["model"], request.params.get("version", ""))

        def tensors(ts: Any) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts]

        return json_response(
            {
                "name": md.name,
                "versions": list(md.versions),
                "platform": md.platform,
                "inputs": tensors(md.inputs),
                "outputs": tensors(md.outputs),
            }
        )

    async def model_config(self, request: Request) -> Response:
        # Triton answers the ModelConfig itself (not wrapped), field names as in the proto.
        config = self.dp.model_config(request.params["model"], request.params.get("version", "")).config
        return json_response(message_dict(config))

    async def statistics(self, request: Request) -> Response:
        stats = self.dp.statistics(request.params.get("model", ""), request.params.get("version", ""))
        return json_response(message_dict(stats))

    async def repository_index(self, request: Request) -> Response:
        body = await _json_object(request, allow_empty=True)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgument("'ready' must be true or false")
        index = self.dp.repository_index(ready)
        rows = []
        for m in index.models:
            row = {"name": m.name, "state": m.state, "reason": m.reason}
            if m.version:
                row["version"] = m.version
            rows.append(row)
        return json_response(rows)

    async def load(self, request: Request) -> Response:
        body = await _json_object(request, allow_empty=True)
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidArgument("'parameters' must be an object")
        check_parameters(list(params))
        config = params.get("config")
        if config is not None and not isinstance(config, str):
            raise InvalidArgument("parameters.config must be a JSON string")
        files = {}
        for key, value in params.items():
            if key.startswith(FILE_PREFIX):
                if not isinstance(value, str):
                    raise InvalidArgument(f"parameters['{key}'] must be a base64 string")
                try:  # Triton's HTTP form: the file's bytes in base64
                    files[key] = base64.b64decode(value, validate=True)
                except binascii.Error:
                    raise InvalidArgument(f"parameters['{key}'] is not valid base64") from None
        await self.dp.load_model(request.params["model"], config, files)
        return Response(b"", media_type=None)

    async def shm_status(self, request: Request) -> Response:
        regions = self.dp.shm.status(request.params.get("region", ""))
        return json_response(
            [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size} for r in regions]
        )

    async def shm_register(self, request: Request) -> Response:
        body = await _json_object(request)
        key, offset, size = body.get("key"), body.get("offset", 0), body.get("byte_size")
        if not isinstance(key, str):
            raise InvalidArgument("'key' must be a string")
        for field, value in (("offset", offset), ("byte_size", size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgument(f"'{field}' must be a non-negative integer")
        assert isinstance(offset, int) and isinstance(size, int)
        await asyncio.to_thread(self.dp.shm.register, request.params["region"], key, offset, size)
        return Response(b"", media_type=None)

    async def shm_unregister(self, request: Request) -> Response:
        self.dp.shm.unregister(request.params.get("region", ""))
        return Response(b"", media_type=None)

    async def no_cuda(self, request: Request) -> Response:
        raise Unimplemented(
            "CUDA shared memory is not supported: this worker has no GPU backend (use system shared memory)"
        )

    async def logging(self, request: Request) -> Response:
        updates = await _json_object(request, allow_empty=True) if request.method == "POST" else {}
        return json_response(log_settings(updates))

    async def trace(self, request: Request) -> Response:
        updates = await _json_object(request, allow_empty=True) if request.method == "POST" else {}
        values = {k: [] if v is None else v if isinstance(v, list) else [v] for k, v in updates.items()}  # null clears
        strings = {k: [str(x) for x in v] for k, v in values.items()}
        settings = self.dp.tracer.settings(strings, request.params.get("model", ""))
        # Triton's JSON: trace_level is a list, the other settings single strings.
        return json_response({k: v if k == "trace_level" else (v[0] if v else "") for k, v in settings.items()})

    async def unload(self, request: Request) -> Response:
        await _json_object(request, allow_empty=True)
        await self.dp.unload_model(request.params["model"])
        return Response(b"", media_type=None)

    async def infer(self, request: Request) -> Response:
        if request.content_type not in _ACCEPTED_TYPES and not request.content_type.endswith("+json"):
            raise InvalidArgument(
                f"Content-Type '{request.content_type}' is not accepted: send application/json "
                "(with binary tensors: application/octet-stream and Inference-Header-Content-Length)"
            )
        if self.dp.draining:
            raise Unavailable("worker is shutting down")
        body = await request.body()
        pb_request, binary_outputs, timeout_us = decode_infer_request(
            body, request.headers.get(_HEADER_LENGTH), request.params["model"], request.params.get("version", "")
        )
        deadline = None if timeout_us is None else asyncio.get_running_loop().time() + timeout_us / 1e6
        pb_response = await self.dp.infer(pb_request, deadline)
        payload, header_length = encode_infer_response(pb_response, binary_outputs)
        if header_length is None:
            return Response(payload)
        return Response(
            payload, headers=[("inference-header-content-length", str(header_length))],
            media_type="application/octet-stream",
        )


async def _json_object(request: Request, *, allow_empty: bool = False) -> dict[str, Any]:
    body = await request.body()
    if allow_empty and not body.strip():
        return {}
    value = await request.json()
    if not isinstance(value, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return value


# ------------------------------------------------------------------------------------------ infer: decode
BinaryOutputs = tuple[bool, frozenset[str], frozenset[str]]  # (all by default, asked binary, asked JSON)


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
        doc = json.loads(header)
    except (ValueError, UnicodeDecodeError) as exc:
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
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidArgument(f"input '{name}': 'shape' must be a list of integers")
    if any(d < 0 or d >= 1 << 62 for d in shape):
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
        request.raw_input_contents.append(bytes(blob[offset : offset + size]))
        return offset + size
    if "shared_memory_region" in params:  # the core reads it from the region (lmaas.server.shm)
        if "data" in spec:
            raise InvalidArgument(f"input '{name}' has both 'data' and shared_memory_region")
        return offset
    if "data" not in spec:
        raise InvalidArgument(f"input '{name}' has neither 'data' nor binary_data_size")
    request.raw_input_contents.append(_encode_json_data(name, datatype, shape, spec["data"]))
    return offset


def _encode_json_data(name: str, datatype: str, shape: list[int], data: Any) -> bytes:
    """JSON ``data`` (flat or nested, row-major) as the raw bytes the gRPC path would carry."""
    flat = _flatten(data) if isinstance(data, list) else [data]
    count = element_count(shape)
    if len(flat) != count:
        raise InvalidArgument(f"input '{name}': 'data' holds {len(flat)} elements but shape {shape} needs {count}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise InvalidArgument(f"input '{name}': BYTES data must be strings")
        return encode_bytes(np.array(flat, dtype=np.object_))
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise InvalidArgument(f"input '{name}': BOOL data must be true or false")
    elif not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
        raise InvalidArgument(f"input '{name}': {datatype} data must be numbers")
    elif datatype not in ("FP16", "FP32", "FP64", "BF16") and not all(isinstance(v, int) for v in flat):
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


def _flatten(data: list[Any]) -> list[Any]:
    if not any(isinstance(v, list) for v in data):
        return data
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


# ------------------------------------------------------------------------------------------ infer: encode
def encode_infer_response(response: pb.ModelInferResponse, binary: BinaryOutputs) -> tuple[bytes, int | None]:
    """The HTTP body, and the JSON header's length when binary parts follow it (else None)."""
    default, asked_binary, asked_json = binary
    outputs = []
    blobs: list[bytes] = []
    for i, tensor in enumerate(response.outputs):
        raw = response.raw_output_contents[i]
        out: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        params = {k: _parameter_value(v) for k, v in tensor.parameters.items()}
        wanted_binary = tensor.name in asked_binary or (default and tensor.name not in asked_json)
        if "shared_memory_region" in tensor.parameters:
            pass  # the data is in the client's region; the parameters say where
        elif wanted_binary:
            params["binary_data_size"] = len(raw)
            blobs.append(raw)
        else:
            out["data"] = _json_data(tensor.name, tensor.datatype, list(tensor.shape), raw)
        if params:
            out["parameters"] = params
        outputs.append(out)
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = {k: _parameter_value(v) for k, v in response.parameters.items()}
    doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _json_data(name: str, datatype: str, shape: list[int], raw: bytes) -> list[Any]:
    array = decode_raw(name, datatype, shape, raw, "output").reshape(-1)
    if datatype == "BYTES":
        try:
            return [bytes(v).decode() for v in array]
        except UnicodeDecodeError:
            raise InvalidArgument(
                f"output '{name}' holds BYTES that are not UTF-8: request it with binary_data true"
            ) from None
    if datatype in ("FP16", "BF16"):
        array = array.astype(np.float32)
    result: list[Any] = array.tolist()
    return result


def _parameter_value(p: pb.InferParameter) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


# ------------------------------------------------------------------------------------------- proto → JSON
_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def message_dict(message: Message) -> dict[str, Any]:
    """A message as Triton's HTTP JSON: proto field names, 64-bit integers as numbers (``json_format`` makes
    them strings, which perf_analyzer cannot read), enums by name, scalars even when default, unset messages left out.
    """
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _field_value(value_field, v) for k, v in value.items()}
        elif field.label == FieldDescriptor.LABEL_REPEATED:
            out[field.name] = [_field_value(field, v) for v in value]
        elif field.message_type is not None:
            if message.HasField(field.name):
                out[field.name] = message_dict(value)
        elif field.containing_oneof is not None and not message.HasField(field.name):
            continue
        else:
            out[field.name] = _field_value(field, value)
    return out


def _field_value(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None:
        return message_dict(value)
    if field.enum_type is not None:
        enum = field.enum_type.values_by_number.get(value)
        return enum.name if enum is not None else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value.decode("latin-1")
    if field.type in _INTEGER_TYPES:
        return int(value)
    return value
