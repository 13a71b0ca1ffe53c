"""int8 recipes with onnxruntime.quantization: dynamic (transformers, MatMul-heavy nets) and static QDQ per-channel
(CNNs).

Measured (research notes §4): dynamic int8 gives the encoder 1.98x but runs conv nets 4-5x *slower*
(``ConvInteger``), so int8-dynamic refuses models with Conv nodes; static QDQ per-channel gives the CNN 1.92x at
1.8 % relative error but costs the encoder 11.8 %.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from lmaas.optimize.base import Job, Made, unsuitable

__all__ = ["head", "int8_dynamic", "int8_static"]

CALIBRATION_SAMPLES = 64
#: Below this many MatMul/Gemm weights dynamic int8 costs more than it saves (measured: the 21k-parameter MLP ran
#: 0.79x at batch 1): refused.
MIN_DYNAMIC_WEIGHTS = 100_000


def _pre_process(job: Job, tmp: Path) -> tuple[Path, bool]:
    """ORT's recommended pre-processing (shape inference, fusions); the raw model when it cannot run."""
    out = tmp / "pre.onnx"
    try:
        quant_pre_process(str(job.src), str(out), skip_symbolic_shape=False)
        return out, True
    except Exception:  # pre-processing is an optimisation: quantising the raw graph is still correct
        return job.src, False


def int8_dynamic(job: Job) -> Made:
    model = job.load()
    convs = sum(n.op_type == "Conv" for n in model.graph.node)
    if convs:
        raise unsuitable(job, f"it has {convs} Conv node(s), which dynamic int8 runs as ConvInteger, 4-5x slower "
                              "than fp32 (measured); use int8-static for conv nets")
    inits = {i.name: i for i in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    if not matmuls:
        raise unsuitable(job, "it has no MatMul or Gemm node to quantise")
    count = sum(int(np.prod(inits[i].dims)) for n in matmuls for i in n.input if i in inits and len(inits[i].dims) == 2)
    if count < MIN_DYNAMIC_WEIGHTS:
        raise unsuitable(job, f"its MatMul/Gemm weights hold {count} parameters, fewer than {MIN_DYNAMIC_WEIGHTS}: "
                              "too small to gain from dynamic int8 (a 21k-parameter MLP measured 0.79x)")
    with tempfile.TemporaryDirectory() as tmp:
        src, pre = _pre_process(job, Path(tmp))
        quantize_dynamic(str(src), str(job.dst), weight_type=QuantType.QInt8, per_channel=False, reduce_range=False)
    return Made({"weight_type": "QInt8", "per_channel": False, "reduce_range": False, "pre_process": pre})


class _Reader(CalibrationDataReader):
    def __init__(self, inputs: dict[str, np.ndarray], samples: int) -> None:
        self._iter: Iterator[dict[str, np.ndarray]] = iter(
            {k: v[i:i + 1] for k, v in inputs.items()} for i in range(samples)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)


def head(model: onnx.ModelProto) -> list[str]:
    """The final classifier: the last MatMul/Gemm node when no Conv or MatMul/Gemm follows it (else none).

    Kept in fp32 by int8-static: its output is the logits themselves, so its rounding decides near-tied
    classes, and it is a small share of the work (measured on the benchmark CNN: max rel error 1.5 % -> 0.47 %).
    """
    heavy = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    return [heavy[-1].name] if heavy and heavy[-1].op_type in ("MatMul", "Gemm") and heavy[-1].name else []


def int8_static(job: Job) -> Made:
    samples = min(int(job.options.get("calibration_samples", CALIBRATION_SAMPLES)), job.calibration.samples)
    keep_head = bool(job.options.get("keep_head_fp32", True))
    with tempfile.TemporaryDirectory() as tmp:
        src, pre = _pre_process(job, Path(tmp))
        excluded = head(onnx.load(str(src))) if keep_head else []
        quantize_static(str(src), str(job.dst), _Reader(job.calibration.inputs, samples),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=excluded)
    return Made({"quant_format": "QDQ", "per_channel": True, "activation_type": "QInt8", "weight_type": "QInt8",
                 "calibrate_method": "MinMax", "calibration_samples": samples,
                 "calibration_source": job.calibration.source, "pre_process": pre, "nodes_to_exclude": excluded})
