"""Lazy models on one worker: cold first requests, LRU eviction under --memory-limit, hot latency vs an eager model.

    python -m benchmarks.lazy                      # 8 lazy models of ~20 MiB, --memory-limit 300MiB
    python -m benchmarks.lazy --smoke              # a few seconds: 3 models of ~2 MiB

Starts ``lmaas control-plane`` and one ``lmaas worker --memory-limit LIMIT`` (real processes on loopback),
pushes one reference model deployed as usual (eager) and ``--models`` models deployed ``--lazy``, then:

1. cold: the first request to each lazy model, timed by the client, against the load time the worker logs for
   it (``loaded model=... seconds=...``); the overhead is what a cold request pays beyond the load itself
   (issue 12's target: at most 100 ms);
2. churn: ``--rounds`` passes over every lazy model in turn, so that when they do not all fit under the limit
   the least recently used idle one is unloaded for each load; counts the loads and evictions the worker
   logs, and samples the worker's RSS after every request (target: never above the limit + 10 %);
3. hot: ``--requests`` requests to one loaded lazy model and to the eager reference, interleaved; p50 and p99
   of each and their ratio (target: within 1.2x).

Every figure is printed with the reference it is compared with, measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.models import write_matmul_onnx

__all__ = ["main"]

_LISTENING = re.compile(r"listening grpc=(\S+) metrics=(\S+)")
_LOADED = re.compile(r"loaded model=(\S+) version=\d+ platform=\S+ seconds=([\d.]+)")
_EVICTED = re.compile(r"unloading model=(\S+) version=\d+ to make room")
TOKEN = "lmaas_00000000be01_" + "benchmark-admin-token-lazy-models-000000000"


class Proc:
    """An ``lmaas`` subprocess whose output is collected; ready once it prints its 'listening' line."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmaas.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env,
        )
        self.lines: list[str] = []
        self.grpc = ""
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(120) or not self.grpc:
            self.stop()
            raise RuntimeError("did not start:\n" + "\n".join(self.lines[-30:]))

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if (m := _LISTENING.search(line)) and not self.grpc:
                self.grpc = m.group(1)
                self._ready.set()
        self._ready.set()

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=8, help="lazy models")
    parser.add_argument("--size-mib", type=float, default=20.0, help="weights of each model")
    parser.add_argument("--memory-limit", default="300MiB", help="the worker's --memory-limit")
    parser.add_argument("--rounds", type=int, default=3, help="passes over every lazy model (churn)")
    parser.add_argument("--requests", type=int, default=300, help="hot requests to each of the two models")
    parser.add_argument("--smoke", action="store_true", help="a few seconds: 3 models of 2 MiB, few requests")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.size_mib, args.rounds, args.requests = 3, 2.0, 1, 30

    import tritonclient.grpc as grpcclient
    from lmaas.client.control import ControlPlaneClient
    from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
    from lmaas.server.memory import parse_size

    limit = parse_size(args.memory_limit)
    n = int(math.sqrt(args.size_mib * (1 << 20) / 4))
    x = grpcclient.InferInput("x", [1, n], "FP32")
    x.set_data_from_numpy(np.ones((1, n), dtype=np.float32))
    with tempfile.TemporaryDirectory(prefix="lmaas-lazy-") as tmp:
        work = Path(tmp)
        (work / "admin.token").write_text(TOKEN + "\n")
        (work / "admin.token").chmod(0o600)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "LMAAS_TOKEN": TOKEN}
        control = Proc(["control-plane", "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0",
                        "--artifact-dir", str(work / "artifacts"), "--store", f"sqlite:///{work / 'cp.db'}",
                        "--bootstrap-token-file", str(work / "admin.token")], env)
        worker = None
        try:
            worker = Proc(["worker", "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0",
                           "--control-plane", control.grpc, "--memory-limit", args.memory_limit,
                           "--cache-dir", str(work / "cache"), "--no-autotune", "--lazy-load-wait", "600"], env)
            names = [f"lazy{i}" for i in range(args.models)]
            with ControlPlaneClient(control.grpc, token=TOKEN) as client:
                deadline = time.monotonic() + 60
                while not client.workers():
                    assert time.monotonic() < deadline, "the worker never connected"
                    time.sleep(0.05)
                for i, name in enumerate(["ref", *names]):
                    client.push(name, write_matmul_onnx(work / f"{name}.onnx", n=n, seed=i))
                for name in ["ref", *names]:
                    reply = client.deploy(name, 1, lazy=name != "ref")
                    rollout = client.wait_rollout(name, reply.deployment.generation, timeout=300)
                    assert rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED, rollout
            infer = grpcclient.InferenceServerClient(worker.grpc)
            infer.infer("ref", [x])
            baseline = worker.rss()

            # 1. cold first requests vs the load time the worker measured
            overheads, colds, loads = [], [], []
            for name in names:
                seen = len(worker.lines)
                started = time.perf_counter()
                infer.infer(name, [x])
                cold = time.perf_counter() - started
                deadline = time.monotonic() + 30
                while not (found := [m for line in worker.lines[seen:] if (m := _LOADED.search(line))
                                     and m.group(1) == name]):
                    assert time.monotonic() < deadline, f"no load line for {name}"
                    time.sleep(0.01)
                load = float(found[-1].group(2))
                colds.append(cold)
                loads.append(load)
                overheads.append(cold - load)

            # 2. churn over all lazy models; RSS after each request
            seen = len(worker.lines)
            peak = worker.rss()
            for _ in range(args.rounds):
                for name in names:
                    infer.infer(name, [x])
                    peak = max(peak, worker.rss())
            churn = worker.lines[seen:]
            reloads = sum(1 for line in churn if _LOADED.search(line))
            evictions = sum(1 for line in churn if _EVICTED.search(line))

            # 3. hot: the last lazy model used vs the eager reference, interleaved
            hot_name = names[-1]
            infer.infer(hot_name, [x])
            hot: dict[str, list[float]] = {hot_name: [], "ref": []}
            for _ in range(args.requests):
                for name in (hot_name, "ref"):
                    started = time.perf_counter()
                    infer.infer(name, [x])
                    hot[name].append(time.perf_counter() - started)
            infer.close()
        finally:
            if worker is not None:
                worker.stop()
            control.stop()

    mib = 1 << 20
    print(f"lazy models: {args.models} x {4 * n * n / mib:.1f} MiB, --memory-limit {limit / mib:.0f} MiB, "
          f"worker RSS with the eager reference loaded {baseline / mib:.0f} MiB")
    print(f"cold first request: p50 {pct(colds, 50) * 1e3:.1f} ms, load (worker's figure) p50 "
          f"{pct(loads, 50) * 1e3:.1f} ms; overhead beyond the load p50 {pct(overheads, 50) * 1e3:.1f} ms, "
          f"max {max(overheads) * 1e3:.1f} ms (target <= 100 ms)")
    print(f"churn: {args.rounds} passes over {args.models} models: {reloads} loads, {evictions} LRU evictions; "
          f"peak RSS {peak / mib:.0f} MiB = {peak / limit:.2f} x the limit (target <= 1.10)")
    p50 = {k: pct(v, 50) for k, v in hot.items()}
    p99 = {k: pct(v, 99) for k, v in hot.items()}
    print(f"hot: lazy {hot_name} p50 {p50[hot_name] * 1e3:.2f} ms p99 {p99[hot_name] * 1e3:.2f} ms | eager ref p50 "
          f"{p50['ref'] * 1e3:.2f} ms p99 {p99['ref'] * 1e3:.2f} ms | ratio p50 {p50[hot_name] / p50['ref']:.2f} "
          f"p99 {p99[hot_name] / p99['ref']:.2f} (target <= 1.2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
