"""fp16: float initialisers and ops in half precision, inputs and outputs kept fp32 (onnxruntime.transformers'
float16 converter, which ships in the onnxruntime wheel; onnxconverter-common is not needed)."""

from __future__ import annotations

import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16

from lmaas.optimize.base import Job, Made, unsuitable

__all__ = ["fp16"]


def fp16(job: Job) -> Made:
    model = job.load()
    if not any(i.data_type == onnx.TensorProto.FLOAT for i in model.graph.initializer):
        raise unsuitable(job, "it has no fp32 weights to convert")
    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    onnx.save(half, str(job.dst))
    return Made({"keep_io_types": True, "converter": "onnxruntime.transformers.float16"})
