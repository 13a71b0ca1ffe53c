"""Memory through control-plane deploys: one real worker, three versions of a 16 MiB model, deploy after deploy.

``tests/server/test_memory.py`` already cycles load/unload through the repository RPCs (20 cycles in CI, 200
with ``-m soak``). This is the same question asked the way production asks it: each deploy makes the worker
download (once), load and warm a version beside the serving one, flip, drain and unload the one two deploys back
(the previous stable version stays warm for rollbacks). Three versions in rotation, because with two the
"previous" is always warm and a deploy loads nothing: the test checks that too (ten flips between two versions
load nothing). Figures: worker RSS once each deploy settled (the old version unloaded): the lowest of the first
deploys against the lowest of the last (the floor, which a leak raises; the settled RSS itself moves in steps of
the model size as the allocator keeps and returns freed weights), means, range and peak; deploy → ACK latency.

CI: 20 deploys after 6 warm-up deploys (the floor may rise by at most two model sizes: 20 deploys give few low
points). ``-m soak``: 200 deploys with glibc's default allocator settings and 200 with a fixed mmap threshold
(figures for both; the floor may rise 10 %), in ``benchmarks/results/reliability-deploy-memory.json``. Run with
``-s`` to see them.
"""

from __future__ import annotations

import re
import statistics
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


def unloads_of(worker: ServerProcess) -> int:
    return worker.output().count(f"unloaded model={MODEL} ")


def deploy_cycles(
    fleet: Fleet, tmp: Path, deploys: int, *, env: dict[str, str] | None = None, tolerance: str = "percent"
) -> dict[str, object]:
    """``deploys`` deploys after WARMUP; ``env`` for the worker (allocator settings); the floor may grow by
    10 % (``tolerance="percent"``) or by two model sizes (``"models"``: 20 deploys give too few low points)."""
    tmp.mkdir(parents=True, exist_ok=True)
    control = fleet.control_plane(f"sqlite:///{tmp / 'control.db'}")
    worker = fleet.worker("w1", control.grpc, env=env)
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

        def settled() -> float:
            """RSS once the worker holds just the two versions (the unload after the ACK is done)."""
            wait_until(lambda: unloads_of(worker) == loads_of(worker) - 2, what="the old version unloaded")
            time.sleep(0.1)
            return rss_mib(pid)

        for i in range(WARMUP):
            deploy(i % 3 + 1)
        loads_before = loads_of(worker)
        peak, latencies, rss = 0.0, [], []
        for i in range(deploys):
            latencies.append(deploy((WARMUP + i) % 3 + 1))
            peak = max(peak, rss_mib(pid))  # three versions held for a moment: the new, the previous, the unloading
            rss.append(settled())
        loads = loads_of(worker) - loads_before
        # Settled RSS moves in steps of the model size (freed weights the allocator keeps for a while: 135 to ~200
        # MiB here, with no trend). A leak raises the floor, so compare the lowest settled RSS of the first and the
        # last deploys; means are reported too.
        window = max(5, deploys // 10)
        baseline, final = min(rss[:window]), min(rss[-window:])
        mean_first, mean_last = statistics.fmean(rss[:window]), statistics.fmean(rss[-window:])

        # Two versions in turn: the previous one is kept warm, so a flip loads nothing.
        current = (WARMUP + deploys - 1) % 3 + 1
        other = current % 3 + 1
        deploy(other)
        loads_two = loads_of(worker)
        flips = [deploy(v) for v in (current, other) * 5]
        assert loads_of(worker) == loads_two, "a flip between two warm versions loaded"
    growth = (final - baseline) / baseline * 100
    figures: dict[str, object] = {
        "deploys": deploys, "model_mib": 16, "versions_in_rotation": 3, "loads": loads, "worker_env": env or {},
        "rss_floor_first_mib": round(baseline, 1), "rss_floor_last_mib": round(final, 1),
        "rss_mean_first_mib": round(mean_first, 1), "rss_mean_last_mib": round(mean_last, 1),
        "rss_settled_range_mib": [round(min(rss), 1), round(max(rss), 1)], "rss_peak_mib": round(peak, 1),
        "rss_growth_percent": round(growth, 2), "rss_settled_mib": [round(r, 1) for r in rss],
        "deploy_to_ack": latency_summary(latencies),
        "flip_between_two_warm_versions": latency_summary(flips),
    }
    d, f = latency_summary(latencies), latency_summary(flips)
    print(
        f"\n{deploys} control-plane deploys rotating 3 versions of a 16 MiB model on one worker ({loads} loads + "
        f"unloads): worker RSS once settled, lowest of the first / last {window} deploys {baseline:.1f} -> "
        f"{final:.1f} MiB ({growth:+.1f} %), mean {mean_first:.1f} -> {mean_last:.1f} MiB, range {min(rss):.0f}-"
        f"{max(rss):.0f} MiB, peak during a deploy {peak:.1f} MiB; "
        f"deploy -> ACK p50 {d['p50_ms']:.0f} ms, max {d['max_ms']:.0f} ms; 10 flips between two warm versions: "
        f"no load, p50 {f['p50_ms']:.0f} ms"
    )
    assert loads == deploys
    series = [round(r) for r in rss]
    if tolerance == "percent":
        assert growth < 10, f"worker RSS floor grew {growth:.1f} % over {deploys} deploys: {series}"
    else:
        assert final - baseline < 2 * 16, f"worker RSS floor grew {final - baseline:.0f} MiB: {series}"
    return figures


def test_deploy_cycles_do_not_leak(fleet: Fleet, tmp_path: Path) -> None:
    deploy_cycles(fleet, tmp_path, 20, tolerance="models")


@pytest.mark.soak
def test_deploy_cycles_soak(fleet: Fleet, tmp_path: Path) -> None:
    """200 deploys with glibc's defaults, then 200 with a fixed mmap threshold (``MALLOC_MMAP_THRESHOLD_``, which
    also turns off glibc's dynamic threshold): large buffers are then mapped and unmapped, never kept in a heap."""
    default = deploy_cycles(fleet, tmp_path / "default", 200)
    fleet.stop_all()
    fixed = deploy_cycles(fleet, tmp_path / "mmap", 200, env={"MALLOC_MMAP_THRESHOLD_": str(1 << 20)})
    save_results("deploy-memory", {"glibc_defaults": default, "mmap_threshold_1mib": fixed})
