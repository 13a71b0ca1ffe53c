"""Per-recipe table of ``lmaas model optimize`` on the benchmark models (mlp, cnn, transformer).

Runs each recipe in-process through :func:`lmaas.optimize.derive` (the same code the CLI runs before pushing):
speed-up timed beside the parent at batch 1 and 8 with the same intra-op threads, accuracy on 64 held-out
inputs (the parent's outputs as the reference), int8-static calibrated on 64 other inputs. ``tune`` reports its
concurrency grid's best over the parent's config (instance_count 1, 1 thread) at batch 1.

    .venv/bin/python -m benchmarks.optimize                       # every model and recipe, ~3 min
    .venv/bin/python -m benchmarks.optimize --models cnn --recipes int8-static --seconds 2

``cnn-probe`` is the benchmark CNN with its classifier head fitted (ridge regression on the pooled features)
to a synthetic 10-class task (a smooth random template per class, amplitude 2, plus N(0, 1) noise), evaluated
and calibrated on that task. The plain ``cnn`` has random weights: on N(0, 1) inputs its class scores are
near-ties (the printed ``parent_gap`` is the median top-1 minus top-2 score), so any rounding, even fp16,
flips some of them; top-1 agreement is only meaningful on inputs a classifier actually separates.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from lmaas.optimize import RECIPES, derive
from lmaas.optimize.base import Job
from lmaas.optimize.evaldata import EvalSet
from lmaas.optimize.measure import run_all, session
from lmaas.protos.errors import LMaaSError

from benchmarks.models import MODELS, build_repository, example_batch

__all__ = ["main"]

DEFAULT_RECIPES = ("int8-dynamic", "int8-static", "fp16", "ort-optimize", "prune", "compress", "tune")


#: Benchmark models besides benchmarks.models.MODELS: the CNN with a fitted head, on its own task.
PROBE = "cnn-probe"
PROBE_CLASSES = 10


def _set(name: str, seed: int) -> EvalSet:
    spec = MODELS[name]
    return EvalSet({spec.input_name: example_batch(spec, 64, seed=seed)}, None, "eval-parent")


class _Probe:
    """The benchmark CNN's features with a ridge-fitted head for 10 template classes (a trained classifier)."""

    def __init__(self, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        spec = MODELS["cnn"]
        coarse = 2.0 * rng.standard_normal((PROBE_CLASSES, spec.shape[0], 8, 8))
        scale = spec.shape[1] // 8
        self.templates = np.kron(coarse, np.ones((1, 1, scale, scale))).astype(np.float32)  # smooth patterns

    def inputs(self, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        labels = np.arange(samples) % PROBE_CLASSES
        noise = rng.standard_normal((samples, *self.templates.shape[1:]), dtype=np.float32)
        return self.templates[labels] + noise, labels

    def export(self, path: Path, train: int = 320) -> float:
        """Fit the head on ``train`` samples, write the ONNX file; returns held-out accuracy."""
        import torch

        from benchmarks.models import _torch_module

        torch.set_num_threads(1)
        module = _torch_module("cnn")
        x, y = self.inputs(train, 100)
        with torch.no_grad():
            feats = module.features(torch.from_numpy(x)).mean(dim=(2, 3)).double().numpy()
            design = np.hstack([feats, np.ones((train, 1))])
            target = np.eye(PROBE_CLASSES)[y] * 2.0 - 1.0
            # ridge 1.0: a near-unregularised fit has huge weights that amplify any rounding (max rel error 3.6 %)
            coef = np.linalg.solve(design.T @ design + np.eye(design.shape[1]), design.T @ target)
            module.head.weight.copy_(torch.from_numpy(coef[:-1].T.copy()).float())
            module.head.bias.copy_(torch.from_numpy(coef[-1].copy()).float())
            hx, hy = self.inputs(64, 101)
            accuracy = float((module(torch.from_numpy(hx)).argmax(dim=1).numpy() == hy).mean())
            spec = MODELS["cnn"]
            torch.onnx.export(module, (torch.from_numpy(x[:2]),), str(path), input_names=[spec.input_name],
                              output_names=[spec.output_name], opset_version=17, dynamo=False,
                              dynamic_axes={spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}})
        return accuracy

    def set(self, seed: int) -> EvalSet:
        return EvalSet({MODELS["cnn"].input_name: self.inputs(64, seed)[0]}, None, "eval-parent")


def _gap(src: Path, data: EvalSet) -> float | None:
    """Median top-1 minus top-2 score of the parent on ``data`` (None unless it outputs class scores)."""
    out = run_all(session(src), data)
    first = next(iter(out.values()))
    if first.ndim != 2 or first.shape[1] < 2:
        return None
    top = np.sort(first, axis=1)
    return float(np.median(top[:, -1] - top[:, -2]))


def run(models: list[str], recipes: list[str], seconds: float, threads: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="lmaas-optimize-bench-") as tmp:
        facts = build_repository(Path(tmp) / "repo", [m for m in models if m in MODELS])
        sources: dict[str, tuple[Path, Callable[[int], EvalSet]]] = {
            m: (Path(str(facts[m]["path"])), functools.partial(_set, m)) for m in models if m in MODELS}
        if PROBE in models:
            probe, path = _Probe(), Path(tmp) / "cnn-probe.onnx"
            print(f"{PROBE}: head fitted, parent top-1 accuracy on held-out template inputs "
                  f"{probe.export(path):.1%}", flush=True)
            sources[PROBE] = (path, probe.set)
        for name in models:
            src, make_set = sources[name]
            gap = _gap(src, make_set(1))
            for recipe in recipes:
                job = Job(name, 1, recipe, src, Path(tmp) / f"{name}.{recipe}.onnx", make_set(2),
                          {"sparsity": 0.5, "tune_seconds": seconds / 2})
                try:
                    d, _ = derive(job, eval_set=make_set(1), max_error=1e9, threads=threads, seconds=seconds)
                except LMaaSError as exc:
                    rows.append({"model": name, "recipe": recipe, "refused": exc.message})
                    print(f"{name:12} {recipe:13} refused: {exc.message}", flush=True)
                    continue
                a = d.accuracy
                row: dict[str, object] = {
                    "model": name, "recipe": recipe, "size_ratio": round(d.size_bytes / d.parent_size_bytes, 3),
                    **{f"speedup_b{m.batch}": round(m.speedup, 2) for m in d.speed},
                    "max_abs": a.max_abs_error, "max_rel": a.max_rel_error, "mean_abs": a.mean_abs_error,
                    "top1": a.top1_agreement if a.HasField("top1_agreement") else None,
                }
                if gap is not None:
                    row["parent_gap"] = round(gap, 6)
                if recipe == "tune":
                    row["best"] = f"{json.loads(d.params['best_instance_count'])}x" \
                                  f"{json.loads(d.params['best_intra_op_threads'])}"
                rows.append(row)
                print(f"{name:12} {recipe:13} " + " ".join(f"{k}={v}" for k, v in row.items()
                                                           if k not in ("model", "recipe")), flush=True)
    return rows


def table(rows: list[dict[str, object]]) -> str:
    def f(v: object, pct: bool = False) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v * 100:.3g}%" if pct else f"{v:.3g}"
        return str(v)

    lines = ["| model | recipe | size | b1 speed-up | b8 speed-up | max abs err | max rel err | mean abs err | top-1 "
             "| parent top-2 gap |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['model']} | {r['recipe']} | refused: {r['refused']} |||||||| ")
            continue
        b1 = f(r.get("speedup_b1")) + "x" + (f" (best {r['best']})" if "best" in r else "")
        b8 = f(r["speedup_b8"]) + "x" if "speedup_b8" in r else "—"
        lines.append(f"| {r['model']} | {r['recipe']} | {f(r['size_ratio'])}x | {b1} | {b8} | {f(r['max_abs'])} | "
                     f"{f(r['max_rel'], True)} | {f(r['mean_abs'])} | {f(r['top1'], True)} | "
                     f"{f(r.get('parent_gap'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.optimize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=[*MODELS, PROBE], choices=[*MODELS, PROBE])
    p.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES), choices=[r for r in RECIPES if r != "merge"])
    p.add_argument("--seconds", type=float, default=1.0, help="timing per model and batch size")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of parent and derived version")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    rows = run(args.models, args.recipes, args.seconds, args.threads)
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
