"""OIP v2 / Triton tensors of a generative model, in the Triton vLLM backend's convention (what stock clients send).

Inputs: ``text_input`` BYTES [1] (required); optional ``sampling_parameters`` BYTES [1] (a JSON object: vLLM
names ``max_tokens`` (default 16), ``temperature``, ``top_p``, ``top_k`` (-1 or 0 = off), ``seed``, ``stop``
(string or list), ``ignore_eos``, ``repetition_penalty``, ``frequency_penalty``, ``presence_penalty``), ``stream``
BOOL [1] (default false: one response with the whole text), ``exclude_input_in_output`` BOOL [1] (default false:
a non-streamed answer starts with the prompt; streamed responses carry only new text), ``return_finish_reason`` and
``return_num_output_tokens`` BOOL [1] (ask for those outputs). Outputs: ``text_output`` BYTES [1]; when asked,
``finish_reason`` BYTES [1] ("" until the last response) and ``num_output_tokens`` UINT32 [1] (tokens in *this*
response, as vLLM's backend counts them).

Every response carries the request ``id`` and the parameter ``triton_final_response``; the last one also carries
``finish_reason`` (string), ``num_output_tokens`` (total completion tokens) and ``num_input_tokens`` as response
parameters, whatever outputs were asked for. With the request parameter ``triton_enable_empty_final_response``
the final flag comes in an extra response without outputs, as Triton's decoupled models do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from lmaas.protos.errors import InvalidArgument
from lmaas.protos.inference import grpc_service_pb2 as pb
from lmaas.protos.tensors import DTYPES, decode_raw, decode_typed, encode_raw
from lmaas.server.backends.base import Signature
from lmaas.server.llm.types import GenerationChunk, SamplingParams

__all__ = ["INPUTS", "OUTPUTS", "LLMRequest", "final_response", "parse_request", "response"]

INPUTS = (
    Signature("text_input", "BYTES", (1,)),
    Signature("sampling_parameters", "BYTES", (1,)),
    Signature("stream", "BOOL", (1,)),
    Signature("exclude_input_in_output", "BOOL", (1,)),
    Signature("return_finish_reason", "BOOL", (1,)),
    Signature("return_num_output_tokens", "BOOL", (1,)),
)
OUTPUTS = (
    Signature("text_output", "BYTES", (-1,)),
    Signature("finish_reason", "BYTES", (-1,)),
    Signature("num_output_tokens", "UINT32", (-1,)),
)
_INPUTS = {s.name: s for s in INPUTS}
_NUMBERS = ("temperature", "top_p", "repetition_penalty", "frequency_penalty", "presence_penalty")
_INTS = ("max_tokens", "top_k", "seed")
_KNOWN = frozenset((*_NUMBERS, *_INTS, "stop", "ignore_eos"))


@dataclass(frozen=True, slots=True)
class LLMRequest:
    id: str
    prompt: str
    params: SamplingParams
    stream: bool = False
    exclude_input: bool = False
    return_finish_reason: bool = False
    return_num_output_tokens: bool = False
    empty_final: bool = False


def _scalar(request: pb.ModelInferRequest, index: int, tensor: Any) -> Any:
    sig = _INPUTS.get(tensor.name)
    if sig is None:
        raise InvalidArgument(f"unexpected input '{tensor.name}': a generative model takes {sorted(_INPUTS)}")
    if tensor.datatype != sig.datatype:
        if tensor.datatype not in DTYPES:
            raise InvalidArgument(f"input '{tensor.name}': unknown datatype '{tensor.datatype}'")
        raise InvalidArgument(f"input '{tensor.name}': datatype {tensor.datatype} given, model expects {sig.datatype}")
    shape = tuple(tensor.shape)
    if any(d != 1 for d in shape) or not shape:
        raise InvalidArgument(f"input '{tensor.name}': shape {list(shape)} given, the model expects [1]")
    raw = request.raw_input_contents
    if raw:
        value = decode_raw(tensor.name, sig.datatype, shape, raw[index])
    elif tensor.HasField("contents"):
        value = decode_typed(tensor.name, sig.datatype, shape, tensor.contents)
    else:
        raise InvalidArgument(f"input '{tensor.name}' has no data (neither contents nor raw_input_contents)")
    item = value.reshape(-1)[0]
    if sig.datatype == "BYTES":
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"input '{tensor.name}' is not valid UTF-8: {exc}") from None
    return bool(item)


def sampling_params(text: str) -> SamplingParams:
    """The ``sampling_parameters`` JSON (vLLM names) → SamplingParams; any problem is InvalidArgument naming it."""
    try:
        raw = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"sampling_parameters is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument("sampling_parameters must be a JSON object")
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise InvalidArgument(f"sampling_parameters: unsupported key(s) {unknown}; supported: {sorted(_KNOWN)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:
            continue
        if key in _INTS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgument(f"sampling_parameters: {key} must be an integer (got {value!r})")
            values[key] = value
        elif key in _NUMBERS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidArgument(f"sampling_parameters: {key} must be a number (got {value!r})")
            values[key] = float(value)
        elif key == "ignore_eos":
            if not isinstance(value, bool):
                raise InvalidArgument(f"sampling_parameters: ignore_eos must be true or false (got {value!r})")
            values[key] = value
        else:  # stop
            stops = [value] if isinstance(value, str) else value
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise InvalidArgument("sampling_parameters: stop must be a string or a list of strings")
            values[key] = tuple(stops)
    if values.get("top_k") == -1:
        values["top_k"] = 0  # vLLM spells "no cut" -1
    return SamplingParams(**values)


def parse_request(request: pb.ModelInferRequest) -> LLMRequest:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    values: dict[str, Any] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name in values:
            raise InvalidArgument(f"input '{tensor.name}' is given twice")
        values[tensor.name] = _scalar(request, i, tensor)
    if "text_input" not in values:
        raise InvalidArgument("missing input 'text_input' (BYTES [1]: the prompt)")
    for out in request.outputs:
        if out.name not in {s.name for s in OUTPUTS}:
            raise InvalidArgument(f"unknown output '{out.name}': a generative model has {[s.name for s in OUTPUTS]}")
    empty = request.parameters.get("triton_enable_empty_final_response")
    return LLMRequest(
        id=request.id,
        prompt=values["text_input"],
        params=sampling_params(values.get("sampling_parameters", "")),
        stream=values.get("stream", False),
        exclude_input=values.get("exclude_input_in_output", False),
        return_finish_reason=values.get("return_finish_reason", False),
        return_num_output_tokens=values.get("return_num_output_tokens", False),
        empty_final=bool(empty is not None and empty.bool_param),
    )


def response(
    name: str, version: int, req: LLMRequest, text: str, tokens: int, last: GenerationChunk | None, final: bool
) -> pb.ModelInferResponse:
    """One response with ``text_output`` (and the asked-for outputs); ``last`` is the final chunk, if this is it."""
    r = pb.ModelInferResponse(model_name=name, model_version=str(version), id=req.id)
    outputs: list[tuple[str, str, np.ndarray[Any, Any]]] = [("text_output", "BYTES", np.array([text.encode()], object))]
    if req.return_finish_reason:
        reason = (last.finish_reason or "") if last is not None else ""
        outputs.append(("finish_reason", "BYTES", np.array([reason.encode()], object)))
    if req.return_num_output_tokens:
        outputs.append(("num_output_tokens", "UINT32", np.array([tokens], np.uint32)))
    for out_name, datatype, array in outputs:
        r.outputs.add(name=out_name, datatype=datatype, shape=[1])
        r.raw_output_contents.append(encode_raw(array))
    if last is not None:
        r.parameters["finish_reason"].string_param = last.finish_reason or ""
        r.parameters["num_output_tokens"].int64_param = last.completion_tokens
        r.parameters["num_input_tokens"].int64_param = last.prompt_tokens
    r.parameters["triton_final_response"].bool_param = final
    return r


def final_response(name: str, version: int, req: LLMRequest) -> pb.ModelInferResponse:
    """The empty final response (``triton_enable_empty_final_response``)."""
    r = pb.ModelInferResponse(model_name=name, model_version=str(version), id=req.id)
    r.parameters["triton_final_response"].bool_param = True
    return r
