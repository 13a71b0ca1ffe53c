"""OIP v2 over HTTP/REST (KServe's REST protocol + Triton's binary tensor data extension): the routes.

A sibling of the gRPC servicer over the same :class:`DataPlane`: each route
turns the HTTP request into the gRPC request message, calls the core, and
turns the answer back, so validation, routing, batching and metrics are
literally the gRPC path's. The infer body codec (JSON tensors, binary parts)
is :mod:`lmaas.server.http.oip_codec`.

A JSON infer body of :data:`OFF_LOOP_BYTES` or more is decoded in a thread, and
an answer with as many bytes of JSON ``data`` is encoded in one: ``json.loads``
of a 254 KB tensor takes milliseconds, which would stall every other request on
the loop. Smaller ones stay inline, where a thread hop would cost more than it saves.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from lmaas.protos.errors import InvalidArgument, Unavailable, Unimplemented
from lmaas.server.dataplane import DataPlane
from lmaas.server.http.asgi import Request, Response, Route, json_response
from lmaas.server.http.oip_codec import (
    decode_infer_request,
    encode_infer_response,
    json_header_size,
    json_output_bytes,
)
from lmaas.server.logsettings import log_settings
from lmaas.server.uploads import FILE_PREFIX, check_parameters

__all__ = ["OFF_LOOP_BYTES", "build_routes", "message_dict"]

#: JSON bodies (and JSON output data) this large are decoded (encoded) off the event loop.
OFF_LOOP_BYTES = 64 << 10
_HEADER_LENGTH = "inference-header-content-length"
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
        split = request.headers.get(_HEADER_LENGTH)
        args = (body, split, request.params["model"], request.params.get("version", ""))
        if json_header_size(len(body), split) >= OFF_LOOP_BYTES:
            pb_request, binary_outputs, timeout_us = await asyncio.to_thread(decode_infer_request, *args)
        else:
            pb_request, binary_outputs, timeout_us = decode_infer_request(*args)
        deadline = None if timeout_us is None else asyncio.get_running_loop().time() + timeout_us / 1e6
        pb_response = await self.dp.infer(pb_request, deadline)
        if json_output_bytes(pb_response, binary_outputs) >= OFF_LOOP_BYTES:
            payload, header_length = await asyncio.to_thread(encode_infer_response, pb_response, binary_outputs)
        else:
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
