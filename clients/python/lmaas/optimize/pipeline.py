"""``optimize``: download a version, apply a recipe, measure the result beside the parent, gate it on accuracy and
push it as a derived version whose ``derivation`` records all of it.

The work runs here, in the caller's process: the control plane only stores the result.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from lmaas.client.control import ControlPlaneClient
from lmaas.optimize.base import Job, Made
from lmaas.optimize.evaldata import EvalSet, load_npz, sample_inputs
from lmaas.optimize.measure import accuracy, run_all, session, speed
from lmaas.optimize.recipes import get_recipe
from lmaas.protos.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

__all__ = ["Optimized", "derive", "figures", "optimize", "summary"]

#: ``progress(step)``, called before each long step.
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Optimized:
    """A derived version and what it measured (``version`` is None when only measured, never pushed)."""

    derivation: pb.Derivation
    version: pb.ModelVersion | None
    #: The canary deployment it was put on, if asked.
    canary_weight: int = 0


def _tool_versions(tools: Sequence[str]) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for t in tools:
        try:
            out[t] = importlib.metadata.version(t)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def derive(job: Job, *, eval_set: EvalSet, max_error: float | None = None, threads: int = 1,
           seconds: float = 0.5, progress: Progress | None = None) -> tuple[pb.Derivation, Made]:
    """Apply the job's recipe, measure it and check the gate; (derivation, what the recipe made).

    FailedPrecondition with the figures when the accuracy is over the gate.
    """
    recipe = get_recipe(job.recipe, job.model, job.version)
    say = progress or (lambda _step: None)
    say(f"applying {recipe.name}")
    made = recipe.run(job)
    say("measuring accuracy")
    parent, derived = session(job.src, threads), session(made.measured or job.dst, threads)
    reference = eval_set.expected or run_all(parent, eval_set)
    acc = accuracy(run_all(derived, eval_set), reference, eval_set.source)
    gate = recipe.default_max_error if max_error is None else max_error
    d = pb.Derivation(
        recipe=recipe.name, params={k: json.dumps(v, sort_keys=True) for k, v in sorted(made.params.items())},
        tool_versions=_tool_versions(recipe.tools), parent_size_bytes=job.src.stat().st_size,
        size_bytes=job.dst.stat().st_size, accuracy=acc, max_error=gate or 0.0,
        merged_versions=list(made.merged_versions),
    )
    if gate is not None and acc.max_rel_error > gate:
        raise FailedPrecondition(
            f"recipe {recipe.name!r} on model '{job.model}' version {job.version} is over the accuracy gate: "
            f"{figures(d)} > --max-error {gate:g}; no version registered"
        )
    if recipe.name != "tune":  # tune's figure is its own concurrency measurement (in params)
        say("timing beside the parent")
        d.speed.extend(speed(parent, derived, eval_set, seconds=seconds))
    else:
        p = json.loads(d.params["base_samples_per_s"])
        b = json.loads(d.params["best_samples_per_s"])
        d.speed.append(pb.SpeedMeasurement(batch=1, parent_samples_per_s=p, derived_samples_per_s=b, speedup=b / p))
    return d, made


def figures(d: pb.Derivation) -> str:
    """The accuracy figures in one phrase."""
    a = d.accuracy
    text = (f"max rel error {a.max_rel_error:.4g} (max abs {a.max_abs_error:.4g}, mean abs {a.mean_abs_error:.4g}, "
            f"mean rel {a.mean_rel_error:.4g}")
    if a.HasField("top1_agreement"):
        text += f", top-1 agreement {a.top1_agreement:.1%}"
    return text + f"; {a.samples} samples vs {a.reference})"


def summary(d: pb.Derivation) -> str:
    """Speed-ups, size and error of a derivation in one line."""
    speeds = ", ".join(f"{m.speedup:.2f}x at batch {m.batch}" for m in d.speed) or "no timing"
    ratio = d.size_bytes / d.parent_size_bytes if d.parent_size_bytes else 0.0
    return f"{d.recipe}: {speeds}; size {d.parent_size_bytes} -> {d.size_bytes} bytes ({ratio:.2f}x); {figures(d)}"


def optimize(client: ControlPlaneClient, model: str, version: int, recipe: str, *, eval_file: str | Path | None = None,
             calibration_file: str | Path | None = None, max_error: float | None = None, deploy_canary: int = 0,
             with_versions: Sequence[int] = (), options: dict[str, Any] | None = None, threads: int = 1,
             seconds: float = 0.5, samples: int = 64, progress: Progress | None = None) -> Optimized:
    """Make a derived version of ``model`` ``version`` with ``recipe`` and push it with its lineage and figures.

    Without ``eval_file`` the reference is the parent's outputs on ``samples`` inputs drawn from the declared
    shapes (recorded as ``sampled-parent``). ``deploy_canary`` W > 0 then deploys it as a W % canary of the
    current deployment's stable version. Over the gate: FailedPrecondition, and nothing is registered.
    """
    chosen = get_recipe(recipe, model, version)
    if with_versions and recipe != "merge":
        raise InvalidArgument(f"--with is for recipe 'merge', not {recipe!r}")
    if not 0 <= deploy_canary <= 100:
        raise InvalidArgument(f"--deploy-canary {deploy_canary}: expected a percentage 0-100")
    say = progress or (lambda _step: None)
    parent = client.get_version(model, version)
    if parent.format == "llm":  # LLM directory versions: their own recipes (lmaas.optimize.llm)
        from lmaas.optimize.llm import LLM_RECIPES

        chosen = LLM_RECIPES.get(recipe, chosen)
    if parent.format not in chosen.formats:
        raise FailedPrecondition(f"recipe {recipe!r} does not suit model '{model}' version {version}: its format is "
                                 f"{parent.format!r}; {recipe!r} works on {', '.join(chosen.formats)} versions")
    if chosen.flow is not None:
        result: Optimized = chosen.flow(
            client, model, version, recipe, eval_file=eval_file, calibration_file=calibration_file,
            max_error=max_error, deploy_canary=deploy_canary, with_versions=with_versions, options=options,
            threads=threads, seconds=seconds, samples=samples, progress=progress)
        return result
    if deploy_canary:
        current = client.get_deployment(model).deployment.spec.stable_version  # NOT_FOUND before anything else
        if not current:
            raise FailedPrecondition(f"model '{model}' has no stable deployment to put a canary beside")
    with tempfile.TemporaryDirectory(prefix="lmaas-optimize-") as tmp:
        work = Path(tmp)
        src, dst = work / "parent.onnx", work / "derived.onnx"
        say(f"downloading {model} version {version}")
        try:
            client.download(model, version, src)
        except PermissionDenied as exc:
            raise PermissionDenied(f"{exc.message} (optimize downloads the parent with Artifacts.Download, which "
                                   "needs the download permission: a deployer, worker or admin token)") from exc
        others = {}
        for v in with_versions:
            if v == version:
                continue
            other = client.get_version(model, v)
            if other.format != "onnx":
                raise FailedPrecondition(f"recipe {recipe!r}: version {v} of model '{model}' is {other.format!r}")
            client.download(model, v, work / f"v{v}.onnx")
            others[v] = work / f"v{v}.onnx"
        graph = onnx.load(str(src))
        eval_set = load_npz(Path(eval_file), graph) if eval_file else sample_inputs(graph, samples)
        calibration = load_npz(Path(calibration_file), graph) if calibration_file else eval_set
        job = Job(model, version, recipe, src, dst, calibration, dict(options or {}), parent.config_json, others)
        derivation, made = derive(job, eval_set=eval_set, max_error=max_error, threads=threads,
                                         seconds=seconds, progress=say)
        say("pushing the derived version")
        config = made.config_json if made.config_json is not None else (parent.config_json or None)
        pushed = client.push(model, dst, format=made.format, config=config,
                             description=f"{recipe} of version {version}", parent_version=version,
                             derivation=derivation)
    if deploy_canary:
        say(f"deploying version {pushed.version} as a {deploy_canary}% canary")
        client.deploy(model, current, canary=pushed.version, weight=deploy_canary)
        client.wait_rollout(model, timeout=120)
    return Optimized(derivation, pushed, deploy_canary)
