"""What every recipe gets (a :class:`Job`) and gives back (a :class:`Made`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from lmaas.optimize.evaldata import EvalSet
from lmaas.protos.errors import FailedPrecondition

__all__ = ["Job", "Made", "Recipe", "unsuitable"]


@dataclass(frozen=True)
class Job:
    """One optimisation: the parent's ONNX file in, the derived artifact out."""

    model: str
    version: int
    recipe: str
    src: Path
    dst: Path
    #: Calibration data (int8-static): --calibration, else the eval set, else sampled inputs.
    calibration: EvalSet
    #: Recipe options from the caller (sparsity, structured, threads...).
    options: dict[str, Any] = field(default_factory=dict)
    #: The parent's configuration as JSON ("" = defaults).
    config_json: str = ""
    #: ONNX files of the other versions to merge, by version number (merge).
    others: dict[int, Path] = field(default_factory=dict)

    def load(self) -> onnx.ModelProto:
        return onnx.load(str(self.src))


@dataclass(frozen=True)
class Made:
    """What a recipe produced besides ``job.dst``."""

    #: Every parameter the recipe used (recorded in the derivation, values JSON-encoded).
    params: dict[str, Any]
    #: The derived version's configuration; None = the parent's.
    config_json: str | None = None
    #: Versions merged into it besides the parent.
    merged_versions: tuple[int, ...] = ()
    #: The derived artifact's format (lmaas.protos.formats).
    format: str = "onnx"
    #: The ONNX file to measure when ``job.dst`` is not one (a compressed artifact); None = ``job.dst``.
    measured: Path | None = None


@dataclass(frozen=True)
class Recipe:
    """One entry of the recipe table."""

    name: str
    #: One line for help texts.
    description: str
    run: Callable[[Job], Made]
    #: The accuracy gate (largest max_rel_error) used when the caller gives none; None = no default gate.
    default_max_error: float | None
    #: Python packages whose versions are recorded.
    tools: tuple[str, ...] = ("onnx", "onnxruntime")
    #: Parent formats (lmaas.protos.formats) it works on; another is refused naming recipe, model and format.
    formats: tuple[str, ...] = ("onnx",)
    #: A recipe with a flow of its own (e.g. an LLM directory version: its own download, measurement and
    #: push): :func:`~lmaas.optimize.pipeline.optimize` hands it the whole call, with the same arguments, after
    #: checking the format. None = the ONNX flow (``run`` on a :class:`Job`).
    flow: Callable[..., Any] | None = None


def unsuitable(job: Job, why: str) -> FailedPrecondition:
    """The error for a model the recipe does not suit, naming both."""
    return FailedPrecondition(f"recipe {job.recipe!r} does not suit model '{job.model}' version {job.version}: {why}")
