"""Decode and validate a ModelInferRequest against a model; encode the response.

Everything a request can get wrong is caught here, before it joins a batch,
so that a bad request fails alone with INVALID_ARGUMENT naming the tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from lmaas.protos.errors import InvalidArgument
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.tensors import DTYPES, decode_raw, decode_typed, encode_raw
from lmaas.server.models import ModelVersion

__all__ = ["DecodedRequest", "decode_request", "encode_response"]

Array = np.ndarray[Any, Any]


@dataclass(frozen=True, slots=True)
class DecodedRequest:
    inputs: dict[str, Array]
    batch: int
    outputs: tuple[str, ...]


def _check_shape(model: ModelVersion, name: str, declared: tuple[int, ...], shape: tuple[int, ...]) -> None:
    if len(shape) != len(declared) or any(d != -1 and d != s for d, s in zip(declared, shape, strict=True)):
        raise InvalidArgument(
            f"input '{name}': shape {list(shape)} does not match the model's {list(declared)} (-1 = any size)"
        )
    if any(s < 0 for s in shape):
        raise InvalidArgument(f"input '{name}': shape {list(shape)} has a negative dimension")
    if model.max_batch_size and shape[0] > model.max_batch_size:
        raise InvalidArgument(
            f"input '{name}': batch size {shape[0]} exceeds the model's max_batch_size {model.max_batch_size}"
        )
    if model.max_batch_size and shape[0] < 1:
        raise InvalidArgument(f"input '{name}': batch size must be at least 1")


def decode_request(model: ModelVersion, request: pb.ModelInferRequest, max_elements: int) -> DecodedRequest:
    raw = request.raw_input_contents
    if raw:  # before the count check, as Triton: the mixed input is what the caller needs to hear about
        for tensor in request.inputs:
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"contents field must not be specified when using raw_input_contents for '{tensor.name}' "
                    f"for model '{model.name}'"
                )
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    inputs: dict[str, Array] = {}
    batch = 0
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        sig = model.inputs.get(name)
        if sig is None:
            raise InvalidArgument(f"unexpected input '{name}': model '{model.name}' takes {sorted(model.inputs)}")
        if name in inputs:
            raise InvalidArgument(f"input '{name}' is given twice")
        if tensor.datatype != sig.datatype:
            if tensor.datatype not in DTYPES:
                raise InvalidArgument(f"input '{name}': unknown datatype '{tensor.datatype}'")
            raise InvalidArgument(f"input '{name}': datatype {tensor.datatype} given, model expects {sig.datatype}")
        shape = tuple(tensor.shape)
        _check_shape(model, name, sig.shape, shape)
        count = 1
        for d in shape:
            count *= d
        if count > max_elements:
            raise InvalidArgument(f"input '{name}': {count} elements exceed the limit of {max_elements}")
        if raw:
            inputs[name] = decode_raw(name, sig.datatype, shape, raw[i])
        else:
            if not tensor.HasField("contents"):
                raise InvalidArgument(f"input '{name}' has no data (neither contents nor raw_input_contents)")
            inputs[name] = decode_typed(name, sig.datatype, shape, tensor.contents)
        if model.max_batch_size:
            if batch and shape[0] != batch:
                raise InvalidArgument(f"input '{name}': batch size {shape[0]} differs from other inputs' {batch}")
            batch = shape[0]
    missing = model.inputs.keys() - inputs.keys()
    if missing:
        raise InvalidArgument(f"missing input(s) {sorted(missing)} for model '{model.name}'")
    if request.outputs:
        wanted = tuple(o.name for o in request.outputs)
        for name in wanted:
            if name not in model.outputs:
                raise InvalidArgument(f"unknown output '{name}': model '{model.name}' has {sorted(model.outputs)}")
    else:
        wanted = model.output_names
    return DecodedRequest(inputs, batch or 1, wanted)


def encode_response(
    model: ModelVersion, request: pb.ModelInferRequest, outputs: Mapping[str, Array], wanted: tuple[str, ...]
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request.id)
    for name in wanted:
        array = outputs[name]
        response.outputs.add(name=name, datatype=model.outputs[name].datatype, shape=array.shape)
        response.raw_output_contents.append(encode_raw(array))
    return response
