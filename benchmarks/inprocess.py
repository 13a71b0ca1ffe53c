"""The in-process ONNX Runtime limit: what one process reaches calling ``InferenceSession.run`` directly.

The session is created with exactly the options the LMaaS worker uses by default
(``lmaas.server.backends.onnx.session_options({}, instance_count=1)``: intra-op threads = the cores
available, one inter-op thread, spinning off, all graph optimizations). Each measurement calls ``run`` in
a closed loop from 1 or 2 Python threads on that one session, for a fixed time window and a bounded number
of calls. Reported per model:

* ``batch1``: serial batch-1 calls — per-call latency (p50/p99, µs) and calls/s;
* ``grid``: rows/s for every (batch size, caller threads) pair measured. A limit is a capacity, and load
  from other programs can only lower it, so each point's ``rows_per_s`` is its best of three equal
  sub-windows (``rows_per_s_mean``: the whole window);
* ``limit_batch1``: the best rows/s with batch-1 calls (any thread count);
* ``limit``: the best rows/s over the whole grid — the in-process limit the server is compared against;
* ``limit_at``: for each benchmark concurrency c, the best rows/s with batches of at most c rows (what a
  server that only ever sees c outstanding batch-1 requests could reach at best).

``python -m benchmarks.inprocess --hop cnn`` measures what the worker's batcher spends per c=1 request when a
lone request runs on the event loop versus through the executor (the hop it avoids), in CPU and wall time,
interleaved rounds in one run (CPU time: what other programs' load disturbs least).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.models import ModelSpec, example_batch

__all__ = ["measure_hop", "measure_inprocess", "worker_session_options"]

MAX_CALLS = 2_000_000  # every loop is bounded in count as well as time


def worker_session_options() -> tuple[ort.SessionOptions, str]:
    """The worker's default ORT session options, and where they came from."""
    try:
        from lmaas.server.backends.onnx import session_options

        return session_options({}, 1), "lmaas.server.backends.onnx.session_options({}, 1)"
    except ImportError:  # same defaults, written out
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, len(os.sched_getaffinity(0)))
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return opts, "fallback copy of the worker defaults"


SUB_WINDOWS = 3


def _closed_loop(
    session: ort.InferenceSession, feed: dict[str, np.ndarray], threads: int, window_s: float
) -> tuple[float, float, list[float]]:
    """Run ``threads`` closed loops for ``window_s``.

    Returns (calls/s over the whole window, calls/s of the best of ``SUB_WINDOWS`` equal sub-windows,
    per-call latencies in s). A call spanning a sub-window boundary counts in proportion to its overlap.
    """
    spans: list[list[tuple[float, float]]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)
    deadline = [0.0]

    def loop(out: list[tuple[float, float]]) -> None:
        run = session.run
        clock = time.perf_counter
        barrier.wait()
        end = deadline[0]
        for _ in range(MAX_CALLS):
            t0 = clock()
            run(None, feed)
            t1 = clock()
            out.append((t0, t1))
            if t1 >= end:
                break

    workers = [threading.Thread(target=loop, args=(spans[i],), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    start = time.perf_counter()
    deadline[0] = start + window_s
    barrier.wait()
    for w in workers:
        w.join(timeout=window_s + 60)
    elapsed = time.perf_counter() - start
    flat = [span for per_thread in spans for span in per_thread]
    sub = elapsed / SUB_WINDOWS
    counts = [0.0] * SUB_WINDOWS
    for t0, t1 in flat:
        for k in range(SUB_WINDOWS):
            lo, hi = start + k * sub, start + (k + 1) * sub
            overlap = min(t1, hi) - max(t0, lo)
            if overlap > 0:
                counts[k] += overlap / max(t1 - t0, 1e-9)
    return len(flat) / elapsed, max(counts) / sub, [t1 - t0 for t0, t1 in flat]


def measure_inprocess(
    model_path: Path,
    spec: ModelSpec,
    *,
    window_s: float,
    batch_sizes: Iterable[int],
    threads: Iterable[int] = (1, 2),
    concurrencies: Iterable[int] = (),
) -> dict[str, Any]:
    opts, origin = worker_session_options()
    session = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
    batch_sizes = sorted(set(batch_sizes) | {1})
    threads = sorted(set(threads) | {1})

    def feed(batch: int) -> dict[str, np.ndarray]:
        return {spec.input_name: example_batch(spec, batch, seed=batch)}

    for b in batch_sizes:  # warm every shape once (ORT allocates per shape on first use)
        for _ in range(3):
            session.run(None, feed(b))

    rate, _, lat = _closed_loop(session, feed(1), 1, window_s)
    lat_us = np.asarray(lat) * 1e6
    batch1 = {
        "calls_per_s": rate,
        "p50_us": float(np.percentile(lat_us, 50)),
        "p99_us": float(np.percentile(lat_us, 99)),
        "mean_us": float(lat_us.mean()),
        "calls": len(lat),
    }

    grid: list[dict[str, Any]] = []
    for b in batch_sizes:
        for t in threads:
            rate, best_rate, lat = _closed_loop(session, feed(b), t, window_s)
            grid.append(
                {
                    "batch": b,
                    "threads": t,
                    "rows_per_s": best_rate * b,
                    "rows_per_s_mean": rate * b,
                    "p50_us": float(np.percentile(np.asarray(lat) * 1e6, 50)),
                }
            )

    best = max(grid, key=lambda g: g["rows_per_s"])
    best1 = max((g for g in grid if g["batch"] == 1), key=lambda g: g["rows_per_s"])
    limit_at = {str(c): max(g["rows_per_s"] for g in grid if g["batch"] <= c) for c in sorted(set(concurrencies))}
    return {
        "session_options": origin,
        "intra_op_threads": opts.intra_op_num_threads,
        "batch1": batch1,
        "grid": grid,
        "limit_batch1": best1["rows_per_s"],
        "limit": best["rows_per_s"],
        "limit_config": {"batch": best["batch"], "threads": best["threads"]},
        "limit_at": limit_at,
    }


def measure_hop(model_path: Path, spec: ModelSpec, *, calls: int = 60, rounds: int = 6) -> dict[str, Any]:
    """c=1 requests through two lmaas Batchers on one session: one that runs a lone request on the event loop
    (the worker's behaviour for a measured model under IDLE_INLINE_SECONDS) and one that always hops to the
    executor (before). Medians over ``rounds`` interleaved rounds of ``calls`` requests: CPU and wall µs."""
    import asyncio
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    from lmaas.server.backends.onnx import OnnxBackend
    from lmaas.server.batching import Batcher, BatchPolicy
    from lmaas.server.metrics import WorkerMetrics
    from prometheus_client import CollectorRegistry

    backend = OnnxBackend(model_path, {}, 1)
    outputs = tuple(s.name for s in backend.outputs)
    feed = {spec.input_name: example_batch(spec, 1, seed=1)}

    def run(inputs: Any) -> dict[str, Any]:
        return backend.run(inputs, outputs)

    async def main() -> dict[str, Any]:
        metrics = WorkerMetrics(CollectorRegistry())
        samples: dict[str, list[tuple[float, float]]] = {"loop": [], "executor": []}
        batchers, executors = {}, []
        for mode in samples:
            executor = ThreadPoolExecutor(1)
            executors.append(executor)
            batcher = Batcher(run, BatchPolicy(max_batch_size=64), executor, metrics.for_model(mode, 1))
            batcher.start()
            started = time.perf_counter()
            run(feed)
            if mode == "loop":
                batcher.estimate(time.perf_counter() - started)  # measured, as the worker's warm-up does
            batchers[mode] = batcher
        try:
            for _ in range(rounds):
                for mode, batcher in batchers.items():
                    for _ in range(5):
                        await batcher.submit(feed, 1, None)
                    cpu0, wall0 = time.process_time(), time.perf_counter()
                    for _ in range(calls):
                        await batcher.submit(feed, 1, None)
                    samples[mode].append(
                        ((time.process_time() - cpu0) / calls * 1e6, (time.perf_counter() - wall0) / calls * 1e6)
                    )
        finally:
            for batcher in batchers.values():
                await batcher.stop()
            for executor in executors:
                executor.shutdown()
        return {
            mode: {
                "cpu_us": statistics.median(c for c, _ in v),
                "wall_us": statistics.median(w for _, w in v),
                "inline": batchers[mode].inline,
            }
            for mode, v in samples.items()
        }

    return asyncio.run(main())


if __name__ == "__main__":
    import argparse
    import json
    import sys

    from benchmarks.models import MODELS, build_repository

    parser = argparse.ArgumentParser(prog="python -m benchmarks.inprocess", description=__doc__)
    parser.add_argument("--hop", required=True, metavar="MODEL", choices=list(MODELS))
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent / ".cache" / "model-repository")
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=6)
    a = parser.parse_args()
    facts = build_repository(a.repo, [a.hop])
    result = measure_hop(Path(facts[a.hop]["path"]), MODELS[a.hop], calls=a.calls, rounds=a.rounds)
    loop, hop = result["loop"], result["executor"]
    print(json.dumps(result, indent=1))
    print(
        f"{a.hop} c=1 through the batcher: on the loop {loop['cpu_us']:.0f} µs CPU / {loop['wall_us']:.0f} µs wall, "
        f"via the executor {hop['cpu_us']:.0f} / {hop['wall_us']:.0f}; the hop costs "
        f"{hop['cpu_us'] - loop['cpu_us']:.0f} µs CPU per request",
        file=sys.stderr,
    )
