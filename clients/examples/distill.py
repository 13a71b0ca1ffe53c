#!/usr/bin/env python3
"""Distillation: train a small student to imitate a transformer version and push it as a derived version.

1. Teacher: version ``--teacher-version`` of ``--model``, downloaded from the control plane (ONNX; token ids in,
   class logits out). With ``--push-teacher`` the example first trains a demo teacher (a 2-layer encoder on a
   synthetic task: is the sequence mostly small token ids?) and pushes it, so it runs against an empty LMaaS.
2. Soft targets: the teacher's logits on ``--samples`` sequences, computed with onnxruntime from the downloaded
   file, so the student learns what the served version does, not the training labels.
3. Student: a 1-layer encoder with a quarter of the width, trained on the teacher's logits (mean squared error
   plus temperature-scaled KL), exported to ONNX with the teacher's input and output names and shapes.
4. Measure beside the teacher with :mod:`lmaas.optimize.measure` (what ``lmaas model optimize`` uses): top-1
   agreement and logit errors on held-out sequences, samples/s at batch 1 and 8, sizes.
5. Push the student with ``parent_version`` = the teacher and a derivation whose recipe is ``distill`` and whose
   parameters name the teacher (``teacher: "MODEL:VERSION"``), the student's architecture and the training
   settings, so ``lmaas model versions MODEL`` shows it under its teacher. Refused (nothing pushed, exit 1)
   when top-1 agreement is below ``--min-top1``.

::

    lmaas up &
    python clients/examples/distill.py --push-teacher            # teacher v1, student v2 (derived from v1)
    lmaas model versions distill-demo

Prints one line per step; ``--report FILE`` writes the figures and version numbers as JSON. Needs torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from lmaas.client import ControlPlaneClient
from lmaas.optimize.evaldata import EvalSet
from lmaas.optimize.measure import accuracy, run_all, session, speed
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from torch import nn

__all__ = ["Encoder", "Layer", "distill", "main", "make_teacher", "sequences"]

VOCAB, SEQ, CLASSES = 256, 32, 2
INPUT, OUTPUT = "ids", "logits"


class Layer(nn.Module):
    """A pre-norm encoder layer with attention written out (torch's fused attention does not export to ONNX)."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv, self.out = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.out((weights @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.ffn(self.norm2(x))  # type: ignore[no-any-return]


class Encoder(nn.Module):
    """Token ids [B, SEQ] → logits [B, CLASSES]: embedding + position, encoder layers, mean pool, head."""

    def __init__(self, d_model: int, layers: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Parameter(torch.randn(1, SEQ, d_model) * 0.02)
        self.blocks = nn.Sequential(*(Layer(d_model, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(ids) + self.pos)).mean(dim=1))  # type: ignore[no-any-return]


def sequences(count: int, seed: int) -> np.ndarray:
    """Token ids whose share of small ids (< VOCAB/2) varies from sequence to sequence (the demo task)."""
    rng = np.random.default_rng(seed)
    share = rng.uniform(0.1, 0.9, size=(count, 1))
    small = rng.random((count, SEQ)) < share
    ids = np.where(small, rng.integers(0, VOCAB // 2, (count, SEQ)), rng.integers(VOCAB // 2, VOCAB, (count, SEQ)))
    return ids.astype(np.int64)


def export(module: nn.Module, path: Path) -> Path:
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module, (torch.zeros(1, SEQ, dtype=torch.int64),), str(path), input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                          opset_version=17, dynamo=False)
    return path


def make_teacher(path: Path, steps: int, seed: int) -> Path:
    """The demo teacher (d_model 128, 2 layers) trained on the synthetic task, as ONNX."""
    torch.manual_seed(seed)
    teacher = Encoder(128, 2, 4)
    ids = torch.from_numpy(sequences(steps * 32, seed))
    labels = (ids < VOCAB // 2).float().mean(dim=1).gt(0.5).long()
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    teacher.train()
    for i in range(steps):
        batch = slice(i * 32, (i + 1) * 32)
        loss = nn.functional.cross_entropy(teacher(ids[batch]), labels[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return export(teacher, path)


def distill(teacher_onnx: Path, student_onnx: Path, *, samples: int, epochs: int, temperature: float,
            seed: int) -> dict[str, Any]:
    """Train the student on the teacher's logits and export it; returns the training settings."""
    teacher = ort.InferenceSession(str(teacher_onnx), providers=["CPUExecutionProvider"])
    ids = sequences(samples, seed + 1)
    targets = np.concatenate([teacher.run([OUTPUT], {INPUT: ids[i:i + 64]})[0] for i in range(0, samples, 64)])
    torch.manual_seed(seed)
    student = Encoder(32, 1, 2)
    x, t = torch.from_numpy(ids), torch.from_numpy(targets)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    student.train()
    for _ in range(epochs):
        for start in range(0, samples, 32):
            out, soft = student(x[start:start + 32]), t[start:start + 32]
            kl = nn.functional.kl_div(nn.functional.log_softmax(out / temperature, dim=1),
                                      nn.functional.softmax(soft / temperature, dim=1), reduction="batchmean")
            loss = nn.functional.mse_loss(out, soft) + kl * temperature ** 2
            opt.zero_grad()
            loss.backward()
            opt.step()
    export(student, student_onnx)
    return {"student": {"d_model": 32, "layers": 1, "heads": 2}, "loss": "mse + kl(T^2)",
            "temperature": temperature, "samples": samples, "epochs": epochs, "optimizer": "adam lr=3e-3",
            "seed": seed, "soft_targets": "teacher logits (onnxruntime, the downloaded artifact)"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--control-plane", default=os.environ.get("LMAAS_CONTROL_PLANE", "127.0.0.1:8090"))
    p.add_argument("--token", default=os.environ.get("LMAAS_TOKEN"), help="a deployer (or admin) token")
    p.add_argument("--model", default="distill-demo")
    p.add_argument("--teacher-version", type=int, default=0, help="default: the latest (or the pushed) version")
    p.add_argument("--push-teacher", action="store_true", help="train and push the demo teacher first")
    p.add_argument("--teacher-steps", type=int, default=150)
    p.add_argument("--samples", type=int, default=2048, help="sequences the student learns from")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--min-top1", type=float, default=0.9, help="refuse a student that agrees less often")
    p.add_argument("--seconds", type=float, default=0.5, help="timing per batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    report: dict[str, Any] = {"model": args.model}
    with tempfile.TemporaryDirectory(prefix="lmaas-distill-") as tmp, \
            ControlPlaneClient(args.control_plane, token=args.token) as cp:
        work = Path(tmp)
        if args.push_teacher:
            began = time.perf_counter()
            made = make_teacher(work / "teacher.onnx", args.teacher_steps, args.seed)
            teacher_v = cp.push(args.model, made, description="demo teacher (2-layer encoder)").version
            print(f"teacher: trained and pushed {args.model} version {teacher_v} "
                  f"({time.perf_counter() - began:.1f} s)", flush=True)
        else:
            teacher_v = args.teacher_version or cp.get_model(args.model).latest_version
        parent = cp.download(args.model, teacher_v, work / "parent.onnx")
        began = time.perf_counter()
        params = distill(work / "parent.onnx", work / "student.onnx", samples=args.samples, epochs=args.epochs,
                         temperature=args.temperature, seed=args.seed)
        print(f"student: distilled from {args.model} version {teacher_v} ({time.perf_counter() - began:.1f} s)",
              flush=True)
        held_out = EvalSet({INPUT: sequences(256, args.seed + 2)}, None, "eval-parent")
        t_sess, s_sess = session(work / "parent.onnx"), session(work / "student.onnx")
        acc = accuracy(run_all(s_sess, held_out), run_all(t_sess, held_out), held_out.source)
        d = pb.Derivation(
            recipe="distill", params={k: json.dumps(v, sort_keys=True) for k, v in
                                      {"teacher": f"{args.model}:{teacher_v}", **params}.items()},
            tool_versions={"torch": torch.__version__, "onnxruntime": ort.__version__,
                           "python": sys.version.split()[0]},
            parent_size_bytes=parent.size_bytes, size_bytes=(work / "student.onnx").stat().st_size, accuracy=acc,
        )
        d.speed.extend(speed(t_sess, s_sess, held_out, seconds=args.seconds))
        figures = {"top1_agreement": acc.top1_agreement, "max_abs_error": acc.max_abs_error,
                   "mean_abs_error": acc.mean_abs_error, "size_ratio": d.size_bytes / d.parent_size_bytes,
                   **{f"speedup_b{m.batch}": m.speedup for m in d.speed}}
        print("measured: " + ", ".join(f"{k} {v:.3g}" for k, v in figures.items()), flush=True)
        report.update(teacher_version=teacher_v, figures=figures)
        if acc.top1_agreement < args.min_top1:
            print(f"refused: top-1 agreement {acc.top1_agreement:.1%} < --min-top1 {args.min_top1:.0%}; "
                  "nothing pushed", flush=True)
            report["student_version"] = None
            code = 1
        else:
            student = cp.push(args.model, work / "student.onnx", config=parent.config_json or None,
                              description=f"student distilled from version {teacher_v}", parent_version=teacher_v,
                              derivation=d)
            print(f"{args.model}: derived version {student.version} (distill of version {teacher_v})", flush=True)
            report["student_version"] = student.version
            code = 0
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
