"""Optimised versions: quantise, convert, optimise, tune, prune or merge a version into a derived version with
lineage, measured speed-up and an accuracy gate (``lmaas model optimize``).

::

    from lmaas.client.control import ControlPlaneClient
    from lmaas.optimize import optimize
    with ControlPlaneClient() as cp:
        result = optimize(cp, "cnn", 1, "int8-static", max_error=0.02)
        print(result.version.version, result.derivation.speed)

One module per recipe family (:mod:`~lmaas.optimize.quantize`, :mod:`~lmaas.optimize.precision`,
:mod:`~lmaas.optimize.graph`, :mod:`~lmaas.optimize.tune`, :mod:`~lmaas.optimize.weights`); the table is
:data:`~lmaas.optimize.recipes.RECIPES`.
"""

from __future__ import annotations

from lmaas.optimize.pipeline import Optimized, derive, figures, optimize, summary
from lmaas.optimize.recipes import RECIPES, get_recipe

__all__ = ["RECIPES", "Optimized", "derive", "figures", "get_recipe", "optimize", "summary"]
