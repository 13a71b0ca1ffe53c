"""The table of optimisation recipes (``lmaas model optimize --recipe NAME``)."""

from __future__ import annotations

from lmaas.optimize.base import Recipe
from lmaas.optimize.compress import compress
from lmaas.optimize.graph import ort_optimize
from lmaas.optimize.precision import fp16
from lmaas.optimize.quantize import int8_dynamic, int8_static
from lmaas.optimize.tune import tune
from lmaas.optimize.weights import merge, prune
from lmaas.protos.errors import InvalidArgument

__all__ = ["RECIPES", "get_recipe"]

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("int8-dynamic", "int8 weights, activations quantised at run time (transformers, MatMul nets)",
               int8_dynamic, 0.05),
        Recipe("int8-static", "int8 QDQ per-channel, activations calibrated (CNNs)", int8_static, 0.05),
        Recipe("fp16", "half-precision weights and ops, fp32 inputs and outputs", fp16, 0.01),
        Recipe("ort-optimize", "onnxruntime graph optimisations saved into the model", ort_optimize, 1e-4),
        Recipe("tune", "fastest instance_count x intra-op threads, recorded in the config", tune, 1e-6),
        Recipe("prune", "magnitude pruning of weight matrices at --sparsity", prune, None, ("onnx", "numpy")),
        Recipe("merge", "uniform weight average with --with V2,V3 (same architecture)", merge, None,
               ("onnx", "numpy")),
        Recipe("compress", "xz-compressed artifact (onnx.xz), unpacked and verified by the worker", compress, 0.0,
               ()),
    )
}


def get_recipe(name: str, model: str, version: int) -> Recipe:
    """The recipe called ``name``, or InvalidArgument naming it, the model and the known recipes."""
    recipe = RECIPES.get(name)
    if recipe is None:
        raise InvalidArgument(f"unknown recipe {name!r} for model '{model}' version {version}: expected one of "
                              f"{', '.join(RECIPES)}")
    return recipe
