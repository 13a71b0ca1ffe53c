"""ort-optimize: onnxruntime's graph optimisations (constant folding, fusions) saved into the model, so a worker
loads the optimised graph instead of redoing them at every load."""

from __future__ import annotations

import onnxruntime as ort

from lmaas.optimize.base import Job, Made
from lmaas.protos.errors import InvalidArgument

__all__ = ["ort_optimize"]

# "extended" fusions stay portable; "all" adds layout changes (NCHWc) tied to this CPU.
_LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
           "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}


def ort_optimize(job: Job) -> Made:
    level = str(job.options.get("level", "extended"))
    if level not in _LEVELS:
        raise InvalidArgument(f"ort-optimize level {level!r}: expected one of {', '.join(_LEVELS)}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = _LEVELS[level]
    opts.optimized_model_filepath = str(job.dst)
    ort.InferenceSession(str(job.src), opts, providers=["CPUExecutionProvider"])
    return Made({"level": level, "provider": "CPUExecutionProvider"})
