"""Memory through control-plane deploys: one real worker, three versions of a 16 MiB model, deploy after deploy.

``tests/server/test_memory.py`` already cycles load/unload through the repository RPCs (20 cycles in CI, 200
with ``-m soak``). This is the same question asked the way production asks it: each deploy makes the worker
download (once), load and warm a version beside the serving one, flip, drain and unload the one two deploys back
(the previous stable version stays warm for rollbacks). Three versions in rotation, because with two the
"previous" is always warm and a deploy loads nothing: the test checks that too (ten flips between two versions
load nothing). Figures: worker RSS after warm-up, at the end and at its peak; deploy → ACK latency.

CI: 20 deploys after 6 warm-up deploys. ``-m soak``: 200 deploys, figures in
``benchmarks/results/reliability-deploy-memory.json``. Run with ``-s`` to see them.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from lmaas.client.control import ControlPlaneClient
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from processes import ServerProcess
from reliability_fleet import Fleet
from reliability_kit import latency_summary, rss_mib, save_results, wait_until, write_matmul_onnx

MODEL = "big"
WARMUP = 6


def loads_of(worker: ServerProcess) -> int:
    """How many loads of MODEL the worker logged ("loaded model=...", not "unloaded ...")."""
    return len(re.findall(rf"\bloaded model={MODEL} ", worker.output()))


def deploy_cycles(fleet: Fleet, tmp: Path, deploys: int) -> dict[str, object]:
    control = fleet.control_plane(f"sqlite:///{tmp / 'control.db'}")
    worker = fleet.worker("w1", control.grpc)
    pid = worker.proc.pid
    with ControlPlaneClient(control.grpc) as client:
        wait_until(lambda: len(client.workers()) == 1, what="worker connected")
        for seed in range(3):  # 16 MiB each, different weights
            client.push(MODEL, write_matmul_onnx(tmp / f"v{seed + 1}.onnx", n=2048, layers=1, seed=seed))

        def deploy(version: int) -> float:
            started = time.monotonic()
            generation = client.deploy(MODEL, version).deployment.generation
            assert client.wait_rollout(MODEL, generation, timeout=60).phase == pb.ROLLOUT_PHASE_SUCCEEDED
            return time.monotonic() - started

        for i in range(WARMUP):
            deploy(i % 3 + 1)
        time.sleep(0.5)  # the unload after the last ACK drains: measure like the final figure below
        baseline = rss_mib(pid)
        peak, latencies = baseline, []
        loads_before = loads_of(worker)
        for i in range(deploys):
            latencies.append(deploy((WARMUP + i) % 3 + 1))
            peak = max(peak, rss_mib(pid))
        time.sleep(0.5)  # the last unload drains
        final = rss_mib(pid)
        loads = loads_of(worker) - loads_before

        # Two versions in turn: the previous one is kept warm, so a flip loads nothing.
        current = (WARMUP + deploys - 1) % 3 + 1
        other = current % 3 + 1
        deploy(other)
        loads_two = loads_of(worker)
        flips = [deploy(v) for v in (current, other) * 5]
        assert loads_of(worker) == loads_two, "a flip between two warm versions loaded"
    growth = (final - baseline) / baseline * 100
    figures: dict[str, object] = {
        "deploys": deploys, "model_mib": 16, "versions_in_rotation": 3, "loads": loads,
        "rss_baseline_mib": round(baseline, 1), "rss_final_mib": round(final, 1), "rss_peak_mib": round(peak, 1),
        "rss_growth_percent": round(growth, 2), "deploy_to_ack": latency_summary(latencies),
        "flip_between_two_warm_versions": latency_summary(flips),
    }
    d, f = latency_summary(latencies), latency_summary(flips)
    print(
        f"\n{deploys} control-plane deploys rotating 3 versions of a 16 MiB model on one worker ({loads} loads + "
        f"unloads): worker RSS {baseline:.1f} MiB -> {final:.1f} MiB ({growth:+.1f} %), peak {peak:.1f} MiB; "
        f"deploy -> ACK p50 {d['p50_ms']:.0f} ms, max {d['max_ms']:.0f} ms; 10 flips between two warm versions: "
        f"no load, p50 {f['p50_ms']:.0f} ms"
    )
    assert loads == deploys
    assert growth < 10, f"worker RSS grew {growth:.1f} % over {deploys} deploys"
    return figures


def test_deploy_cycles_do_not_leak(fleet: Fleet, tmp_path: Path) -> None:
    deploy_cycles(fleet, tmp_path, 20)


@pytest.mark.soak
def test_deploy_cycles_soak(fleet: Fleet, tmp_path: Path) -> None:
    save_results("deploy-memory", deploy_cycles(fleet, tmp_path, 200))
