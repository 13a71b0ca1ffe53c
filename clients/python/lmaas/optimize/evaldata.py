"""Eval and calibration data of ``lmaas model optimize``: ``.npz`` files, or inputs sampled from declared shapes.

An ``.npz`` holds arrays named after the model's inputs and, optionally, arrays
named after its outputs: the expected outputs, which become the accuracy
reference. Without expected outputs the parent's own outputs are the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from lmaas.protos.errors import InvalidArgument

__all__ = ["EvalSet", "load_npz", "sample_inputs", "signature"]

_NP: dict[int, type[np.generic]] = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.BOOL: np.bool_,
}
#: Size given to a dynamic dimension other than the batch when sampling.
SAMPLED_DIM = 16


@dataclass(frozen=True)
class TensorSig:
    name: str
    dtype: type[np.generic]
    #: Dimensions; None for a dynamic one.
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class EvalSet:
    """Named inputs (first axis = samples) and, when given, the expected outputs."""

    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray] | None
    #: "eval" (expected outputs given), "eval-parent" or "sampled-parent" (the parent's outputs are the reference).
    source: str

    @property
    def samples(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def batch(self, start: int, size: int) -> dict[str, np.ndarray]:
        """``size`` samples from ``start`` on, wrapping around."""
        idx = np.arange(start, start + size) % self.samples
        return {k: v[idx] for k, v in self.inputs.items()}


def signature(model: onnx.ModelProto) -> tuple[list[TensorSig], list[TensorSig]]:
    """The graph's inputs (initialisers excluded) and outputs."""
    inits = {i.name for i in model.graph.initializer}

    def sig(v: onnx.ValueInfoProto) -> TensorSig:
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        return TensorSig(v.name, _NP.get(int(t.elem_type), np.float32), dims)

    return [sig(v) for v in model.graph.input if v.name not in inits], [sig(v) for v in model.graph.output]


def sample_inputs(model: onnx.ModelProto, samples: int = 64, seed: int = 0) -> EvalSet:
    """N(0, 1) floats (small non-negative integers for integer inputs) in the declared shapes."""
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for s in signature(model)[0]:
        rest = tuple(d if d is not None else SAMPLED_DIM for d in s.shape[1:])
        shape = (samples, *rest)
        if np.issubdtype(s.dtype, np.integer):
            inputs[s.name] = rng.integers(0, 10, size=shape).astype(s.dtype)
        elif s.dtype is np.bool_:
            inputs[s.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            inputs[s.name] = rng.standard_normal(shape).astype(s.dtype)
    return EvalSet(inputs, None, "sampled-parent")


def load_npz(path: Path, model: onnx.ModelProto) -> EvalSet:
    """The inputs (and expected outputs, if any) of ``path`` for ``model``; InvalidArgument names what is wrong."""
    try:
        data = dict(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read eval data {path}: {exc}") from exc
    ins, outs = signature(model)
    missing = [s.name for s in ins if s.name not in data]
    if missing:
        raise InvalidArgument(f"eval data {path} lacks input(s) {', '.join(missing)} (has {', '.join(data)})")
    inputs = {s.name: np.asarray(data[s.name]).astype(s.dtype, copy=False) for s in ins}
    counts = {v.shape[0] if v.ndim else 0 for v in inputs.values()}
    if len(counts) != 1 or 0 in counts:
        raise InvalidArgument(f"eval data {path}: every input needs the same number (>0) of samples on axis 0")
    expected = {s.name: np.asarray(data[s.name]) for s in outs if s.name in data} or None
    return EvalSet(inputs, expected, "eval" if expected else "eval-parent")
