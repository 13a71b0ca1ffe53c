"""Tensors between the Open Inference Protocol and numpy: the wire format, shared by servers and clients.

Raw contents are row-major little-endian bytes, viewed with ``numpy.frombuffer``
(no copy; read-only); a BYTES element travels as a 4-byte little-endian length
followed by its bytes, and BYTES arrays are numpy object arrays of ``bytes``
(``str`` elements are sent as UTF-8). BF16 uses ``ml_dtypes.bfloat16``.
Errors name the tensor and say whether it is an input or an output (``role``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np
from lmaas.protos.errors import InvalidArgument
from lmaas.protos.inference import grpc_service_pb2 as pb

__all__ = [
    "DTYPES",
    "TYPED_FIELD",
    "datatype_of",
    "decode_bytes",
    "decode_raw",
    "decode_typed",
    "element_count",
    "encode_bytes",
    "encode_raw",
]

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

# InferTensorContents field per datatype (FP16 and BF16 have none: raw only).
TYPED_FIELD: dict[str, str] = {
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
_LEN = struct.Struct("<I")


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The OIP datatype of a numpy array (strings and bytes are BYTES)."""
    dt = array.dtype
    if dt == DTYPES["BF16"]:
        return "BF16"
    if dt.kind in ("O", "U", "S"):
        return "BYTES"
    try:
        return _BY_KIND[(dt.kind, dt.itemsize)]
    except KeyError:
        raise InvalidArgument(f"numpy dtype {dt} has no inference-protocol datatype") from None


def element_count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def decode_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes, role: str = "input") -> np.ndarray[Any, Any]:
    """View raw contents as an array of ``shape``; the size must match exactly."""
    count = element_count(shape)
    if datatype == "BYTES":
        return decode_bytes(name, raw, count, role).reshape(shape)
    dtype = DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"{role} '{name}': raw contents hold {len(raw)} bytes "
            f"but shape {list(shape)} of {datatype} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def decode_bytes(name: str, raw: bytes, count: int, role: str = "input") -> np.ndarray[Any, Any]:
    """Split length-prefixed BYTES elements; exactly ``count`` must fill ``raw``."""
    if len(raw) < 4 * count:  # checked before allocating: a shape must not make us reserve memory the bytes lack
        raise InvalidArgument(f"{role} '{name}': {len(raw)} bytes cannot hold {count} BYTES elements")
    out = np.empty(count, dtype=np.object_)
    view = memoryview(raw)
    pos, size = 0, len(raw)
    for i in range(count):
        if pos + 4 > size:
            raise InvalidArgument(f"{role} '{name}': BYTES contents end after {i} of {count} elements")
        (length,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + length > size:
            raise InvalidArgument(f"{role} '{name}': BYTES element {i} claims {length} bytes, only {size - pos} left")
        out[i] = bytes(view[pos : pos + length])
        pos += length
    if pos != size:
        raise InvalidArgument(f"{role} '{name}': {size - pos} bytes left over after {count} BYTES elements")
    return out


def decode_typed(
    name: str, datatype: str, shape: Sequence[int], contents: pb.InferTensorContents, role: str = "input"
) -> np.ndarray[Any, Any]:
    field = TYPED_FIELD.get(datatype)
    if field is None:
        raise InvalidArgument(f"{role} '{name}': {datatype} has no typed contents; send it in raw_input_contents")
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidArgument(
            f"{role} '{name}': {field} holds {len(values)} elements but shape {list(shape)} needs {count}"
        )
    for other in TYPED_FIELD.values():
        if other != field and len(getattr(contents, other)):
            raise InvalidArgument(f"{role} '{name}': datatype {datatype} expects {field}, got {other}")
    if datatype == "BYTES":
        arr = np.empty(count, dtype=np.object_)
        arr[:] = list(values)
        return arr.reshape(shape)
    dtype = DTYPES[datatype]
    try:
        return np.array(values, dtype=dtype).reshape(shape)
    except OverflowError as exc:
        raise InvalidArgument(f"{role} '{name}': a value does not fit {datatype}: {exc}") from exc


def encode_bytes(array: np.ndarray[Any, Any]) -> bytes:
    """Length-prefixed elements; each must be bytes-like or str (sent as UTF-8)."""
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


def encode_raw(array: np.ndarray[Any, Any]) -> bytes:
    """Row-major little-endian bytes of an output array."""
    if array.dtype.kind in ("O", "U", "S"):
        return encode_bytes(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()
