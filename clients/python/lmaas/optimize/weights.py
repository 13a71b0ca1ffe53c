"""Recipes that rewrite ONNX weights in place: magnitude pruning and weight averaging (a "model soup").

Both work on the graph's initialisers, so the architecture (and the worker's loader) is unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from lmaas.optimize.base import Job, Made, unsuitable
from lmaas.protos.errors import InvalidArgument

__all__ = ["architecture", "merge", "prune"]

_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def _weights(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Float initialisers of rank >= 2 (weight matrices and kernels; biases and constants are left alone)."""
    return [i for i in model.graph.initializer if i.data_type in _FLOATS and len(i.dims) >= 2]


def prune(job: Job) -> Made:
    sparsity = float(job.options.get("sparsity", 0.5))
    structured = bool(job.options.get("structured", False))
    if not 0.0 < sparsity < 1.0:
        raise InvalidArgument(f"prune --sparsity {sparsity}: expected a fraction between 0 and 1")
    model = job.load()
    targets = _weights(model)
    if not targets:
        raise unsuitable(job, "it has no weight matrix (float initialiser of rank >= 2) to prune")
    zeros = total = 0
    for init in targets:
        w = numpy_helper.to_array(init).copy()
        if structured:  # whole slices along axis 0 (Conv output channels, MatMul input rows) by L2 norm
            norms = np.sqrt((w.reshape(w.shape[0], -1).astype(np.float64) ** 2).sum(axis=1))
            k = round(sparsity * w.shape[0])
            if k:
                w[np.argsort(norms, kind="stable")[:k]] = 0
        else:
            k = round(sparsity * w.size)
            if k:
                flat = w.reshape(-1)
                flat[np.argsort(np.abs(flat), kind="stable")[:k]] = 0
        zeros += int(np.count_nonzero(w == 0))
        total += w.size
        init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(job.dst))
    return Made({"method": "magnitude", "structured": structured, "sparsity": sparsity, "tensors": len(targets),
                 "measured_sparsity": round(zeros / total, 6)})


def architecture(model: onnx.ModelProto) -> tuple[object, ...]:
    """What must match for weights to be averaged: the nodes, inputs, outputs and each initialiser's name, type
    and shape."""
    g = model.graph
    nodes = tuple((n.op_type, tuple(n.input), tuple(n.output)) for n in g.node)
    inits = tuple(sorted((i.name, i.data_type, tuple(i.dims)) for i in g.initializer))
    return nodes, inits, tuple(i.name for i in g.input), tuple(o.name for o in g.output)


def merge(job: Job) -> Made:
    if not job.others:
        raise InvalidArgument(f"recipe 'merge' of model '{job.model}' needs --with V2[,V3...]: the versions to merge")
    base = job.load()
    models = {job.version: base}
    for v, path in job.others.items():
        other = onnx.load(str(path))
        if architecture(other) != architecture(base):
            raise unsuitable(job, f"version {v} has a different architecture (nodes or initialiser shapes differ)")
        models[v] = other
    tables = {v: {i.name: i for i in m.graph.initializer} for v, m in models.items()}
    averaged = 0
    for init in base.graph.initializer:
        arrays = [numpy_helper.to_array(t[init.name]) for t in tables.values()]
        if init.data_type in _FLOATS:
            mean = np.mean(np.stack([a.astype(np.float64) for a in arrays]), axis=0).astype(arrays[0].dtype)
            init.CopyFrom(numpy_helper.from_array(mean, init.name))
            averaged += 1
        elif not all(np.array_equal(arrays[0], a) for a in arrays[1:]):
            raise unsuitable(job, f"non-float initialiser {init.name!r} differs between versions")
    onnx.save(base, str(job.dst))
    versions = sorted(models)
    return Made({"method": "uniform weight average", "versions": versions, "averaged_tensors": averaged},
                merged_versions=tuple(v for v in versions if v != job.version))
