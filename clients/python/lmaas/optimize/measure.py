"""Measurements of a derived version beside its parent: throughput (one process, same engine and threads) and
accuracy against a reference."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lmaas.optimize.evaldata import EvalSet
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb

__all__ = ["accuracy", "run_all", "session", "speed"]


def session(path: Path | bytes, threads: int = 1) -> ort.InferenceSession:
    """An ORT CPU session with ``threads`` intra-op threads (the same for parent and derived version)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run_all(sess: ort.InferenceSession, data: EvalSet, batch: int = 8) -> dict[str, np.ndarray]:
    """Every output over every sample, in batches (one sample at a time for a fixed-batch model)."""
    first = sess.get_inputs()[0].shape
    if first and isinstance(first[0], int):
        batch = first[0]
    names = [o.name for o in sess.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, data.samples, batch):
        feed = {k: v[start:start + batch] for k, v in data.inputs.items()}
        if next(iter(feed.values())).shape[0] < batch and first and isinstance(first[0], int):
            break
        for n, out in zip(names, sess.run(names, feed), strict=True):
            parts[n].append(np.asarray(out))
    return {n: np.concatenate(p) for n, p in parts.items()}


def accuracy(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], source: str) -> pb.AccuracyMeasurement:
    """Absolute and relative error over every output element; top-1 agreement when the first output looks like
    class scores (rank 2, at least two columns)."""
    names = [n for n in reference if n in outputs]
    got = np.concatenate([outputs[n].astype(np.float64).ravel() for n in names])
    ref = np.concatenate([reference[n][: outputs[n].shape[0]].astype(np.float64).ravel() for n in names])
    diff = np.abs(got - ref)
    scale_max, scale_mean = float(np.max(np.abs(ref))) or 1.0, float(np.mean(np.abs(ref))) or 1.0
    m = pb.AccuracyMeasurement(
        reference=source, samples=int(outputs[names[0]].shape[0]), max_abs_error=float(diff.max()),
        mean_abs_error=float(diff.mean()), max_rel_error=float(diff.max()) / scale_max,
        mean_rel_error=float(diff.mean()) / scale_mean,
    )
    first_out, first_ref = outputs[names[0]], reference[names[0]][: outputs[names[0]].shape[0]]
    if first_out.ndim == 2 and first_out.shape[1] >= 2:
        m.top1_agreement = float(np.mean(np.argmax(first_out, axis=1) == np.argmax(first_ref, axis=1)))
    return m


def _throughput(sess: ort.InferenceSession, feed: dict[str, np.ndarray], seconds: float) -> float:
    names = [o.name for o in sess.get_outputs()]
    sess.run(names, feed)  # warm-up
    batch = int(next(iter(feed.values())).shape[0])
    calls, start = 0, time.perf_counter()
    while True:
        sess.run(names, feed)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 3:
            return calls * batch / elapsed


def speed(parent: ort.InferenceSession, derived: ort.InferenceSession, data: EvalSet, *,
          batches: Sequence[int] = (1, 8), seconds: float = 0.5, rounds: int = 3) -> list[pb.SpeedMeasurement]:
    """Samples/s of both sessions, interleaved in ``rounds`` so load changes hit both; best round of each.

    A batch size the model's fixed first dimension does not allow is skipped.
    """
    first = parent.get_inputs()[0].shape
    fixed = first[0] if first and isinstance(first[0], int) else None
    result = []
    for b in batches:
        if fixed is not None and b != fixed:
            continue
        feed = data.batch(0, b)
        p = d = 0.0
        for _ in range(rounds):
            p = max(p, _throughput(parent, feed, seconds / rounds))
            d = max(d, _throughput(derived, feed, seconds / rounds))
        result.append(pb.SpeedMeasurement(batch=b, parent_samples_per_s=p, derived_samples_per_s=d, speedup=d / p))
    return result
