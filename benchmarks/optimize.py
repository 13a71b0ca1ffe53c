"""Per-recipe table of ``lmaas model optimize`` on the benchmark models (mlp, cnn, transformer).

Runs each recipe in-process through :func:`lmaas.optimize.derive` (the same code the CLI runs before pushing):
speed-up timed beside the parent at batch 1 and 8 with the same intra-op threads, accuracy on 64 held-out
inputs (the parent's outputs as the reference), int8-static calibrated on 64 other inputs. ``tune`` reports its
concurrency grid's best over the parent's config (instance_count 1, 1 thread) at batch 1.

    .venv/bin/python -m benchmarks.optimize                       # every model and recipe, ~3 min
    .venv/bin/python -m benchmarks.optimize --models cnn --recipes int8-static --seconds 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from lmaas.optimize import RECIPES, derive
from lmaas.optimize.base import Job
from lmaas.optimize.evaldata import EvalSet
from lmaas.protos.errors import LMaaSError

from benchmarks.models import MODELS, build_repository, example_batch

__all__ = ["main"]

DEFAULT_RECIPES = ("int8-dynamic", "int8-static", "fp16", "ort-optimize", "prune", "compress", "tune")


def _set(name: str, seed: int) -> EvalSet:
    spec = MODELS[name]
    return EvalSet({spec.input_name: example_batch(spec, 64, seed=seed)}, None, "eval-parent")


def run(models: list[str], recipes: list[str], seconds: float, threads: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="lmaas-optimize-bench-") as tmp:
        facts = build_repository(Path(tmp) / "repo", models)
        for name in models:
            src = Path(str(facts[name]["path"]))
            for recipe in recipes:
                job = Job(name, 1, recipe, src, Path(tmp) / f"{name}.{recipe}.onnx", _set(name, 2),
                          {"sparsity": 0.5, "tune_seconds": seconds / 2})
                try:
                    d, _ = derive(job, eval_set=_set(name, 1), max_error=1e9, threads=threads, seconds=seconds)
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

    lines = ["| model | recipe | size | b1 speed-up | b8 speed-up | max abs err | max rel err | mean abs err | top-1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['model']} | {r['recipe']} | refused: {r['refused']} ||||||| ")
            continue
        b1 = f(r.get("speedup_b1")) + "x" + (f" (best {r['best']})" if "best" in r else "")
        b8 = f(r["speedup_b8"]) + "x" if "speedup_b8" in r else "—"
        lines.append(f"| {r['model']} | {r['recipe']} | {f(r['size_ratio'])}x | {b1} | {b8} | {f(r['max_abs'])} | "
                     f"{f(r['max_rel'], True)} | {f(r['mean_abs'])} | {f(r['top1'], True)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.optimize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
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
