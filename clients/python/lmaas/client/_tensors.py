"""numpy arrays ↔ request and response tensors, on the client side (the codec is :mod:`lmaas.protos.tensors`).

Decoded outputs are read-only views of the response buffer (``numpy.frombuffer``); copy one to write to it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmaas.protos.errors import InvalidArgument
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.tensors import DTYPES, TYPED_FIELD, datatype_of, decode_raw, decode_typed, encode_raw

__all__ = ["DTYPES", "datatype_of", "decode_output", "encode"]

Array = np.ndarray[Any, Any]


def encode(name: str, value: Any) -> tuple[pb.ModelInferRequest.InferInputTensor, bytes]:
    """The tensor header and raw contents of one input (anything ``numpy.asarray`` accepts)."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    datatype = datatype_of(array)
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=array.shape)
    return tensor, encode_raw(array)


def decode_output(tensor: pb.ModelInferResponse.InferOutputTensor, raw: bytes | None) -> Array:
    """One output as numpy: from ``raw`` when the server sent raw contents, else from typed contents."""
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    if datatype not in DTYPES:
        raise InvalidArgument(f"output '{name}' has unknown datatype {datatype!r}")
    if raw is not None:
        return decode_raw(name, datatype, shape, raw, role="output")
    if datatype not in TYPED_FIELD:
        raise InvalidArgument(f"output '{name}': {datatype} has no typed contents and the server sent no raw ones")
    return decode_typed(name, datatype, shape, tensor.contents, role="output")
