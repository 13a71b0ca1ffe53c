"""ONNX Runtime backend: signatures and dtypes come from the model file."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnxruntime as ort
from lmaas.protos.errors import InvalidArgument
from lmaas.server.backends.base import Array, Backend, BackendError, Signature

__all__ = ["OnnxBackend", "default_threads", "session_options"]

_BF16 = np.dtype(ml_dtypes.bfloat16)
_ONNX_BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16
_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}


def _signature(arg: Any) -> Signature:
    try:
        datatype = _ORT_TYPES[arg.type]
    except KeyError:
        raise BackendError(f"tensor '{arg.name}' has unsupported ONNX type {arg.type}") from None
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return Signature(arg.name, datatype, shape)


def _as_text(name: str, array: Array) -> Array:
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat_in):
        try:
            flat_out[i] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        except UnicodeDecodeError:
            raise InvalidArgument(f"input '{name}': element {i} is not UTF-8; ONNX string tensors hold text") from None
    return out


def default_threads(instance_count: int) -> int:
    """Intra-op threads when neither the config nor the self-tune sets them: the usable cores split over the
    instances."""
    return max(1, len(os.sched_getaffinity(0)) // instance_count)


def session_options(parameters: Mapping[str, Any], instance_count: int) -> ort.SessionOptions:
    """Threads default to the cores available split over the instances; spinning off (shares cores with gRPC)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(parameters.get("intra_op_threads", default_threads(instance_count)))
    opts.inter_op_num_threads = int(parameters.get("inter_op_threads", 1))
    spinning = "1" if parameters.get("allow_spinning", False) else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    level = parameters.get("graph_optimization_level", "all")
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[str(level)]
    return opts


class OnnxBackend(Backend):
    platform = "onnxruntime_onnx"

    def __init__(self, path: Path, parameters: Mapping[str, Any], instance_count: int = 1) -> None:
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=session_options(parameters, instance_count), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise BackendError(f"onnxruntime cannot load {path.name}: {exc}") from exc
        self.inputs = tuple(_signature(a) for a in self._session.get_inputs())
        self.outputs = tuple(_signature(a) for a in self._session.get_outputs())
        self._strings = {s.name for s in self.inputs if s.datatype == "BYTES"}
        self._bf16 = any(s.datatype == "BF16" for s in (*self.inputs, *self.outputs))

    def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        feed = dict(inputs)
        for name in self._strings:  # ORT string tensors hold text; the protocol carries bytes
            feed[name] = _as_text(name, feed[name])
        try:
            results = self._run_ort_values(feed, outputs) if self._bf16 else self._session.run(list(outputs), feed)
        except Exception as exc:
            raise BackendError(f"onnxruntime failed: {exc}") from exc
        return dict(zip(outputs, results, strict=True))

    def _run_ort_values(self, feed: Mapping[str, Array], outputs: Sequence[str]) -> list[Array]:
        """BF16 has no numpy type ORT knows: pass raw uint16 bits tagged as bfloat16, read outputs by pointer."""
        values = {}
        for name, array in feed.items():
            if array.dtype == _BF16:
                values[name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                    np.ascontiguousarray(array).view(np.uint16), _ONNX_BFLOAT16
                )
            else:
                values[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
        results = []
        for value in self._session.run_with_ort_values(list(outputs), values):
            if value.data_type() == "tensor(bfloat16)":
                shape = value.shape()
                count = int(np.prod(shape))
                raw = (ctypes.c_uint16 * count).from_address(value.data_ptr())
                results.append(np.frombuffer(bytes(raw), dtype=_BF16).reshape(shape))
            else:
                results.append(value.numpy())
        return results

    def close(self) -> None:
        del self._session
