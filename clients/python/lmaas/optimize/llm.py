"""``int8-dynamic`` for LLM directory versions: per-channel int8 weights, per-row dynamic int8 activations
(:mod:`lmaas.server.llm.quant`), measured beside the parent with the serving engine's own forward.

Accuracy is never exact greedy text (one near-tie flips it and every later token differs): the parent's greedy
continuation of a fixed prompt set is fed to both versions (teacher forcing) and their next-token logits are compared
at every step: top-1 agreement, top-5 overlap and |Δlogit| (max, mean; relative to the largest / mean |logit|).
Speed is decode tokens/s of one forward step at batch 1 and 8, both versions interleaved in the same process.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmaas.client.control import ControlPlaneClient
from lmaas.optimize.base import Job, Made, Recipe
from lmaas.protos.errors import DataLoss, FailedPrecondition, InvalidArgument
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from lmaas.protos.manifests import Manifest, check_path

__all__ = ["DEFAULT_MAX_ERROR", "LLM_RECIPES", "PROMPTS", "download_directory", "measure", "optimize_llm"]

#: The fixed prompt set of the accuracy figures.
PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three laws of thermodynamics are",
)
#: Gate on max |Δlogit| / max |logit| when the caller gives none (SmolLM2 int8 measured well under it).
DEFAULT_MAX_ERROR = 0.25
_STEPS = 16


def download_directory(client: ControlPlaneClient, version: pb.ModelVersion, dest: Path,
                       timeout: float | None = None) -> Manifest:
    """Every file of a directory version under ``dest`` (manifest and files verified by sha256)."""
    from lmaas.protos.lmaas.worker.v1 import artifacts_pb2, artifacts_pb2_grpc

    stub = artifacts_pb2_grpc.ArtifactsStub(client._channel)

    def fetch(digest: str) -> bytes:
        data = b"".join(c.data for c in stub.Download(artifacts_pb2.DownloadRequest(digest=digest),
                                                      metadata=client.metadata or None, timeout=timeout))
        if hashlib.sha256(data).hexdigest() != digest:
            raise DataLoss(f"downloaded blob has sha256:{hashlib.sha256(data).hexdigest()}, expected {digest}")
        return data

    manifest = Manifest.parse(fetch(version.digest))
    for f in manifest.files:
        path = dest / check_path(f.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(fetch(f.sha256))
    return manifest


def _continuation(model: Any, ids: list[int]) -> list[int]:
    from lmaas.server.llm.model import SeqInput

    cache, out = model.new_cache(len(ids) + _STEPS + 1), []
    logits = model.forward([SeqInput(ids, cache, True)])[0]
    for _ in range(_STEPS):
        out.append(int(logits.argmax()))
        logits = model.forward([SeqInput([out[-1]], cache, True)])[0]
    return out


def _forced(model: Any, ids: list[int], continuation: list[int]) -> list[Any]:
    from lmaas.server.llm.model import SeqInput

    cache = model.new_cache(len(ids) + len(continuation) + 1)
    logits = [model.forward([SeqInput(ids, cache, True)])[0]]
    logits += [model.forward([SeqInput([t], cache, True)])[0] for t in continuation[:-1]]
    return logits


def _decode_tok_s(model: Any, batch: int, seconds: float) -> float:
    from lmaas.server.llm.model import SeqInput

    caches = [model.new_cache(256) for _ in range(batch)]
    for c in caches:
        model.forward([SeqInput([1, 2, 3, 4], c, False)])
    steps, start = 0, time.perf_counter()
    while True:
        model.forward([SeqInput([7], c, True) for c in caches])
        steps += 1
        elapsed = time.perf_counter() - start
        if (elapsed >= seconds and steps >= 2) or caches[0].length >= 250:
            return steps * batch / elapsed


def measure(parent_dir: Path, derived_dir: Path, *, prompts: Sequence[str] = PROMPTS, seconds: float = 1.0,
            batches: Sequence[int] = (1, 8), rounds: int = 3) -> tuple[pb.AccuracyMeasurement, dict[str, float],
                                                                         list[pb.SpeedMeasurement]]:
    """Accuracy of ``derived_dir`` against ``parent_dir`` (module doc), extra figures, decode speed-ups."""
    import torch
    from tokenizers import Tokenizer

    from lmaas.server.llm.model import Llama

    parent, derived = Llama.load(parent_dir), Llama.load(derived_dir)
    tok = Tokenizer.from_file(str(parent_dir / "tokenizer.json"))
    diffs, refs, agree, overlap = [], [], 0, 0
    for prompt in prompts:
        ids = tok.encode(prompt).ids
        cont = _continuation(parent, ids)
        for r, g in zip(_forced(parent, ids, cont), _forced(derived, ids, cont), strict=True):
            diffs.append((g - r).abs())
            refs.append(r.abs())
            agree += int(r.argmax() == g.argmax())
            overlap += len(set(r.topk(5).indices.tolist()) & set(g.topk(5).indices.tolist()))
    d, ref = torch.stack(diffs), torch.stack(refs)
    acc = pb.AccuracyMeasurement(
        reference="parent-teacher-forced", samples=len(diffs), max_abs_error=float(d.max()),
        mean_abs_error=float(d.mean()), max_rel_error=float(d.max() / ref.max()),
        mean_rel_error=float(d.mean() / ref.mean()), top1_agreement=agree / len(diffs),
    )
    extra = {"top5_overlap": overlap / (5 * len(diffs)), "prompts": float(len(prompts)), "steps": float(_STEPS)}
    speeds = []
    for b in batches:
        p = q = 0.0
        for _ in range(rounds):  # interleaved, best of each: load changes hit both
            p = max(p, _decode_tok_s(parent, b, seconds / rounds))
            q = max(q, _decode_tok_s(derived, b, seconds / rounds))
        speeds.append(pb.SpeedMeasurement(batch=b, parent_samples_per_s=p, derived_samples_per_s=q, speedup=q / p))
    return acc, extra, speeds


def _size(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def _tools() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for t in ("torch", "safetensors", "tokenizers"):
        try:
            out[t] = importlib.metadata.version(t)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def optimize_llm(client: ControlPlaneClient, parent: pb.ModelVersion, recipe: str, *, max_error: float | None = None,
                 deploy_canary: int = 0, options: dict[str, Any] | None = None, seconds: float = 1.0,
                 progress: Callable[[str], None] | None = None) -> tuple[pb.Derivation, pb.ModelVersion, int]:
    """Derive the int8 version of the LLM directory version ``parent`` and push it; (derivation, version, canary)."""
    from lmaas.server.llm.quant import quantize_directory

    model, version = parent.model, parent.version
    if recipe != "int8-dynamic":
        raise FailedPrecondition(f"recipe {recipe!r} does not suit model '{model}' version {version}: an LLM "
                                 "directory version takes int8-dynamic")
    exclude = tuple(str(m) for m in (options or {}).get("exclude", ()))
    say = progress or (lambda _step: None)
    current = 0
    if deploy_canary:
        current = client.get_deployment(model).deployment.spec.stable_version
        if not current:
            raise FailedPrecondition(f"model '{model}' has no stable deployment to put a canary beside")
    with tempfile.TemporaryDirectory(prefix="lmaas-optimize-llm-") as tmp:
        src, dst = Path(tmp) / "parent", Path(tmp) / "derived"
        say(f"downloading {model} version {version} (directory)")
        download_directory(client, parent, src)
        say("quantising the linear layers to int8")
        try:
            qc = quantize_directory(src, dst, exclude=exclude)
        except ValueError as exc:
            raise InvalidArgument(f"recipe {recipe!r} on model '{model}' version {version}: {exc}") from exc
        say("measuring accuracy and decode speed beside the parent")
        acc, extra, speeds = measure(src, dst, seconds=seconds)
        gate = DEFAULT_MAX_ERROR if max_error is None else max_error
        params: dict[str, Any] = {"method": qc["quant_method"], "weights": qc["weights"],
                                  "activations": qc["activations"], "modules_not_quantized": list(exclude), **extra}
        d = pb.Derivation(
            recipe=recipe, params={k: json.dumps(v, sort_keys=True) for k, v in sorted(params.items())},
            tool_versions=_tools(), parent_size_bytes=_size(src), size_bytes=_size(dst), accuracy=acc,
            max_error=gate,
        )
        d.speed.extend(speeds)
        if acc.max_rel_error > gate:
            from lmaas.optimize.pipeline import figures

            raise FailedPrecondition(f"recipe {recipe!r} on model '{model}' version {version} is over the accuracy "
                                     f"gate: {figures(d)} > --max-error {gate:g}; no version registered")
        say("pushing the derived version")
        pushed = client.push(model, dst, format="llm", config=parent.config_json or None,
                             description=f"{recipe} of version {version}", parent_version=version, derivation=d)
    if deploy_canary:
        say(f"deploying version {pushed.version} as a {deploy_canary}% canary")
        client.deploy(model, current, canary=pushed.version, weight=deploy_canary)
        client.wait_rollout(model, timeout=120)
    return d, pushed, deploy_canary


def _flow(client: ControlPlaneClient, model: str, version: int, recipe: str, *, max_error: float | None = None,
          deploy_canary: int = 0, options: dict[str, Any] | None = None, seconds: float = 1.0,
          progress: Callable[[str], None] | None = None, **_onnx_only: Any) -> Any:
    """The pipeline's flow hook (``Recipe.flow``): eval/calibration files, --with and threads are ONNX-only."""
    from lmaas.optimize.pipeline import Optimized

    d, pushed, canary = optimize_llm(client, client.get_version(model, version), recipe, max_error=max_error,
                                     deploy_canary=deploy_canary, options=options, seconds=seconds,
                                     progress=progress)
    return Optimized(d, pushed, canary)


def _no_job(job: Job) -> Made:
    raise FailedPrecondition(f"recipe {job.recipe!r} on an LLM directory version runs its own flow")


#: Recipes for ``llm`` directory versions, by name (the pipeline picks them for an ``llm`` parent).
LLM_RECIPES: dict[str, Recipe] = {
    "int8-dynamic": Recipe(
        "int8-dynamic", "LLM: int8 per-channel weights, per-row dynamic int8 activations (integer GEMMs)", _no_job,
        DEFAULT_MAX_ERROR, ("torch", "safetensors", "tokenizers"), ("llm",), _flow),
}
