"""numpy arrays ↔ Open Inference Protocol tensors, on the client side.

Raw contents are row-major little-endian bytes; a BYTES element is a 4-byte
little-endian length followed by its bytes. BYTES arrays are numpy object
arrays of ``bytes`` (``str`` elements are sent as UTF-8); BF16 is
``ml_dtypes.bfloat16``. Decoded outputs are read-only views of the response
buffer (``numpy.frombuffer``); copy one to write to it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np

from lmaas.protos.errors import InvalidArgument
from lmaas.protos.inference import grpc_service_pb2 as pb

__all__ = ["DTYPES", "datatype_of", "decode_output", "encode"]

Array = np.ndarray[Any, Any]

#: numpy dtype of each OIP datatype.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(np.object_),
}
_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in DTYPES.items() if name not in ("BYTES", "BF16")}

# InferTensorContents field per datatype, for servers that answer with typed contents (FP16/BF16 have none).
_TYPED = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_LEN = struct.Struct("<I")


def datatype_of(array: Array) -> str:
    """The OIP datatype of a numpy array (object, str and bytes arrays are BYTES)."""
    dt = array.dtype
    if dt == DTYPES["BF16"]:
        return "BF16"
    if dt.kind in ("O", "U", "S"):
        return "BYTES"
    try:
        return _BY_KIND[(dt.kind, dt.itemsize)]
    except KeyError:
        raise InvalidArgument(f"numpy dtype {dt} has no inference-protocol datatype") from None


def _encode_bytes(array: Array) -> bytes:
    parts: list[bytes] = []
    for item in array.reshape(-1):
        if isinstance(item, bytes | bytearray | memoryview):
            b = bytes(item)
        elif isinstance(item, str):
            b = item.encode()
        else:
            raise InvalidArgument(f"a BYTES element must be bytes or str, not {type(item).__name__}")
        parts.append(_LEN.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def encode(name: str, value: Any) -> tuple[pb.ModelInferRequest.InferInputTensor, bytes]:
    """The tensor header and raw contents of one input (anything ``numpy.asarray`` accepts)."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    datatype = datatype_of(array)
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=array.shape)
    if datatype == "BYTES":
        return tensor, _encode_bytes(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return tensor, array.tobytes()


def _count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _decode_bytes(name: str, raw: bytes, count: int) -> Array:
    out = np.empty(count, dtype=np.object_)
    view = memoryview(raw)
    pos, size = 0, len(raw)
    for i in range(count):
        if pos + 4 > size:
            raise InvalidArgument(f"output '{name}': BYTES contents end after {i} of {count} elements")
        (length,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + length > size:
            raise InvalidArgument(f"output '{name}': BYTES element {i} claims {length} bytes, {size - pos} left")
        out[i] = bytes(view[pos : pos + length])
        pos += length
    if pos != size:
        raise InvalidArgument(f"output '{name}': {size - pos} bytes left over after {count} BYTES elements")
    return out


def decode_output(tensor: pb.ModelInferResponse.InferOutputTensor, raw: bytes | None) -> Array:
    """One output as numpy: from ``raw`` when the server sent raw contents, else from typed contents."""
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"output '{name}' has unknown datatype {datatype!r}")
    count = _count(shape)
    if raw is not None:
        if datatype == "BYTES":
            return _decode_bytes(name, raw, count).reshape(shape)
        if len(raw) != count * dtype.itemsize:
            raise InvalidArgument(
                f"output '{name}': {len(raw)} raw bytes do not hold shape {shape} of {datatype}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    field = _TYPED.get(datatype)
    values: Sequence[Any] = getattr(tensor.contents, field) if field else ()
    if len(values) != count:
        raise InvalidArgument(f"output '{name}': {len(values)} values do not fill shape {shape} of {datatype}")
    if datatype == "BYTES":
        out = np.empty(count, dtype=np.object_)
        out[:] = list(values)
        return out.reshape(shape)
    return np.array(values, dtype=dtype).reshape(shape)
