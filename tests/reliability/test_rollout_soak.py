"""Rollout soak: continuous inference from 4 client threads against 2 real workers while deploy / canary /
rollback cycles run through a real control plane on etcd.

One cycle is four changes, each waited for until every worker ACKed: deploy v2 → canary (v1 stable, v2 at
30 %) → rollback (back to v2) → deploy v1. Every request is recorded: none may fail, every answer must come from
v1 or v2, and latency is reported for the steady state before the cycles and for requests in flight during a
change (sent → all workers ACKed; the changes run back to back, so that is nearly every request after the steady
phase).

CI: 15 cycles. ``-m soak``: 100 cycles, figures in ``benchmarks/results/reliability-rollout-soak.json``. Run with
``-s`` to see the figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from etcd_cluster import EtcdCluster
from lmaas.client.control import ControlPlaneClient
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from reliability_fleet import Fleet
from reliability_kit import (
    InferenceLoad,
    fmt,
    latency_summary,
    overlaps,
    rss_mib,
    save_results,
    scale_of,
    wait_until,
    write_scale_onnx,
)

MODEL = "scale"


@dataclass
class Change:
    kind: str
    started: float
    finished: float = 0.0
    phase: int = 0


@dataclass
class Soak:
    changes: list[Change] = field(default_factory=list)

    def run(self, client: ControlPlaneClient, kind: str, *, stable: int = 0, canary: int = 0, weight: int = 0) -> None:
        change = Change(kind, time.monotonic())
        if kind == "rollback":
            generation = client.rollback(MODEL).deployment.generation
        else:
            generation = client.deploy(MODEL, stable, canary=canary, weight=weight).deployment.generation
        change.phase = client.wait_rollout(MODEL, generation, timeout=60).phase
        change.finished = time.monotonic()
        self.changes.append(change)


def rollout_soak(
    fleet: Fleet, etcd: EtcdCluster, tmp: Path, *, cycles: int, steady_seconds: float
) -> dict[str, object]:
    control = fleet.control_plane(etcd.url)
    workers = [fleet.worker(f"w{i}", control.grpc) for i in (1, 2)]
    soak = Soak()
    with ControlPlaneClient(control.grpc) as client:
        wait_until(lambda: len(client.workers()) == 2, what="both workers connected")
        for factor in (1, 2):
            client.push(MODEL, write_scale_onnx(tmp / f"v{factor}" / "model.onnx", float(factor)))
        soak.run(client, "deploy", stable=1)
        wait_until(lambda: all(scale_of(w.grpc) == 1.0 for w in workers), what="v1 served everywhere")
        rss_before = [rss_mib(w.proc.pid) for w in workers]

        load = InferenceLoad([w.grpc for w in workers], MODEL, threads=4, timeout=10, max_seconds=900).start()
        try:
            steady_from = time.monotonic()
            time.sleep(steady_seconds)
            steady_to = time.monotonic()
            for _ in range(cycles):
                soak.run(client, "deploy", stable=2)
                soak.run(client, "canary", stable=1, canary=2, weight=30)
                soak.run(client, "rollback")
                soak.run(client, "deploy", stable=1)
        finally:
            load.stop()
        rss_after = [rss_mib(w.proc.pid) for w in workers]
        final = client.get_deployment(MODEL).deployment.spec.stable_version

    cycled = soak.changes[1:]
    windows = [(c.started, c.finished) for c in cycled]
    samples = load.samples
    ok = [s for s in samples if s.code == "OK"]
    steady = [s.latency for s in ok if steady_from <= s.start and s.start + s.latency <= steady_to]
    during = [s.latency for s in ok if s.start > steady_to and overlaps(s, windows)]
    answers = {s.value for s in ok}
    by_kind = {
        kind: latency_summary(c.finished - c.started for c in cycled if c.kind == kind)
        for kind in ("deploy", "canary", "rollback")
    }
    figures: dict[str, object] = {
        "cycles": cycles, "changes": len(cycled), "clients": 4, "workers": 2, "store": "etcd",
        "requests": len(samples), "failed": len(load.failed), "errors": load.errors(),
        "answers": sorted(answers), "steady": latency_summary(steady), "during_changes": latency_summary(during),
        "change_to_all_acked": by_kind,
        "requests_per_second": round(len(samples) / max(samples[-1].start - samples[0].start, 1e-9), 1),
        "worker_rss_mib": {"before": [round(r, 1) for r in rss_before], "after": [round(r, 1) for r in rss_after]},
        "changes_failed": [c.kind for c in cycled if c.phase != pb.ROLLOUT_PHASE_SUCCEEDED],
    }
    print(
        f"\nrollout soak: {cycles} cycles ({len(cycled)} changes: deploy, canary 30 %, rollback, deploy) with 4 "
        f"client threads on 2 workers: {len(samples)} requests sent ({figures['requests_per_second']}/s), "
        f"{len(load.failed)} failed; answers from versions {sorted(answers)}\n"
        f"  latency steady state ({steady_seconds:.0f} s, no changes): {fmt(latency_summary(steady))}\n"
        f"  latency during changes (sent → all ACKed):     {fmt(latency_summary(during))}\n"
        f"  change → all workers ACKed: "
        + "; ".join(f"{k} p50 {v['p50_ms']:.0f} ms max {v['max_ms']:.0f} ms" for k, v in by_kind.items())
        + f"\n  worker RSS {[f'{r:.0f}' for r in rss_before]} → {[f'{r:.0f}' for r in rss_after]} MiB; time in "
        f"changes {sum(b - a for a, b in windows):.1f} s"
    )
    assert not figures["changes_failed"], figures["changes_failed"]
    assert not load.failed, load.errors()
    assert answers <= {1.0, 2.0}, answers
    assert final == 1
    assert during and steady, "no requests measured"
    return figures


def test_rollout_cycles_under_load(fleet: Fleet, etcd1: EtcdCluster, tmp_path: Path) -> None:
    rollout_soak(fleet, etcd1, tmp_path, cycles=15, steady_seconds=3)


@pytest.mark.soak
def test_rollout_soak_100_cycles(fleet: Fleet, etcd1: EtcdCluster, tmp_path: Path) -> None:
    figures = rollout_soak(fleet, etcd1, tmp_path, cycles=100, steady_seconds=15)
    save_results("rollout-soak", figures)
