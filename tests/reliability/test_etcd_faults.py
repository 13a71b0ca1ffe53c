"""etcd cluster faults: a 3-member etcd cluster on loopback, a real control plane on it, one real worker.

While a writer thread pushes versions and deploys them (one change every ~50 ms, so rollouts run all the time)
and a client keeps inferring on the worker, one member is SIGKILLed (the leader, or a follower), left dead for
a few seconds, and restarted on its data dir. The control plane's store list starts with the victim, so its
connection is the one that breaks. Then:

* every **acknowledged** write is still there: each acked push has its version with its digest, each acked
  deploy its generation with its spec in the deployment's history (writes that failed are reported, and those
  that were applied all the same are counted);
* the control plane **recovered by itself**: a push and deploy after the fault succeed and the worker ACKs the
  rollout, with no restart of the control plane;
* the **data plane served throughout**: the inference client saw no failure.

Figures: write latency before the fault and its spike during it, failed writes, the longest gap between
acknowledged writes, the recovery time (kill → first acknowledged write that started after it), and how long an
acknowledged deploy took to be served by the worker (seen by the inference client), overall and during the fault.

CI: one leader kill and one follower kill (one test each). ``-m soak``: 6 faults alternating leader/follower in
one cluster, figures in ``benchmarks/results/reliability-etcd-faults.json``. Run with ``-s`` to see them.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from cp_harness import version_requests
from etcd_cluster import EtcdCluster
from lmaas.client.control import ControlPlaneClient
from lmaas.protos.lmaas.control.v1 import (
    deployments_pb2,
    deployments_pb2_grpc,
    registry_pb2_grpc,
    resources_pb2,
)
from processes import ServerProcess
from reliability_fleet import Fleet
from reliability_kit import (
    InferenceLoad,
    Sample,
    latency_summary,
    save_results,
    scale_of,
    wait_until,
    write_scale_onnx,
)

PACE = 0.05  # seconds between writes


@dataclass
class Write:
    kind: str  # push | deploy
    started: float
    latency: float = 0.0
    code: str = "OK"
    version: int = 0
    digest: str = ""
    generation: int = 0

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @property
    def finished(self) -> float:
        return self.started + self.latency


@dataclass
class Writer:
    """Pushes ``model`` versions (each a distinct artifact) and deploys each acked one, no retries, until stopped."""

    address: str
    model: str
    tmp: Path
    writes: list[Write] = field(default_factory=list)
    factors: dict[int, float] = field(default_factory=dict)  # acked version → its scale factor
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        token = os.environ.get("LMAAS_TOKEN")
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        deadline = time.monotonic() + 600
        with grpc.insecure_channel(self.address) as channel:
            registry = registry_pb2_grpc.ModelRegistryStub(channel)
            deployments = deployments_pb2_grpc.DeploymentsStub(channel)
            i = 0
            while not self._stop.is_set() and time.monotonic() < deadline:
                i += 1
                factor = float(1000 + len(self.writes) + i)
                data = write_scale_onnx(self.tmp / f"{self.model}-{i}.onnx", factor).read_bytes()
                requests = version_requests(self.model, data)
                push = self._call("push", partial(registry.CreateVersion, iter(requests), timeout=10,
                                                  metadata=metadata))
                if push.ok:
                    self.factors[push.version] = factor
                    time.sleep(PACE)
                    spec = resources_pb2.DeploymentSpec(stable_version=push.version)
                    request = deployments_pb2.DeployRequest(model=self.model, spec=spec)
                    deploy = partial(deployments.Deploy, request, timeout=10, metadata=metadata)
                    self._call("deploy", deploy, stable=push.version)
                time.sleep(PACE)

    def _call(self, kind: str, fn: Callable[[], Any], stable: int = 0) -> Write:
        w = Write(kind, time.monotonic())
        try:
            reply = fn()
        except grpc.RpcError as exc:
            w.code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
        else:
            if kind == "push":
                w.version, w.digest = reply.version.version, reply.version.digest
            else:
                w.generation, w.version = reply.deployment.generation, stable
        w.latency = time.monotonic() - w.started
        self.writes.append(w)
        return w


def verify_acknowledged(client: ControlPlaneClient, model: str, writes: list[Write]) -> dict[str, int]:
    """Every acked write is in the store; returns counts, including writes that failed but were applied."""
    versions = {v.version: v for v in client.list_versions(model)}
    deployment = client.get_deployment(model).deployment
    history = {r.generation: r for r in deployment.history}
    acked_push = [w for w in writes if w.kind == "push" and w.ok]
    acked_deploy = [w for w in writes if w.kind == "deploy" and w.ok]
    for w in acked_push:
        assert w.version in versions, f"acknowledged push of version {w.version} lost"
        assert versions[w.version].digest == w.digest, f"version {w.version} has another digest"
    oldest = min(history)
    for w in acked_deploy:
        assert deployment.generation >= w.generation
        if w.generation >= oldest:
            assert w.generation in history, f"acknowledged deploy generation {w.generation} lost"
            assert history[w.generation].spec.stable_version == w.version
    assert len({w.generation for w in acked_deploy}) == len(acked_deploy), "two acked deploys share a generation"
    assert len(acked_push) == len({w.version for w in acked_push}), "two acked pushes share a version"
    acked_gens = {w.generation for w in acked_deploy}
    return {
        "acked_pushes": len(acked_push),
        "acked_deploys": len(acked_deploy),
        "failed_writes": sum(not w.ok for w in writes),
        "failed_but_applied_pushes": len(set(versions) - {w.version for w in acked_push}),
        "failed_but_applied_deploys": sum(1 for g in history if g not in acked_gens and g > 1),
    }


def fault_figures(writes: list[Write], killed: float, restarted: float) -> dict[str, object]:
    before = [w.latency for w in writes if w.finished < killed and w.ok]
    during = [w for w in writes if killed <= w.finished and w.started <= restarted + 1.0]
    acked_after = [w for w in writes if w.ok and w.started >= killed]
    acked_times = sorted(w.finished for w in writes if w.ok)
    around = [t for t in acked_times if killed - 2 <= t <= restarted + 2]
    gaps = [b - a for a, b in itertools.pairwise(around)]
    return {
        "write_latency_before": latency_summary(before),
        "write_latency_fault": latency_summary(w.latency for w in during),
        "failed_during_fault": {c: sum(1 for w in during if w.code == c) for c in {w.code for w in during} - {"OK"}},
        "longest_gap_between_acked_writes_s": round(max(gaps, default=0.0), 3),
        "recovery_s": round(acked_after[0].finished - killed, 3) if acked_after else None,
    }


def serving_lag(writes: list[Write], factors: dict[int, float], samples: list[Sample], window: tuple[float, float]
                ) -> dict[str, object]:
    """Acked deploy → first inference answered by that version (or a later one), from the client's samples.

    Versions get increasing factors, so "that version or later" is an answer >= its factor. Deploys superseded
    before any request saw them count as served by the next one. Returned for all deploys and for those acked
    during ``window`` (the fault).
    """
    answered = sorted((s.start, s.value) for s in samples if s.code == "OK")
    lags, lags_fault = [], []
    for w in writes:
        if w.kind != "deploy" or not w.ok:
            continue
        factor = factors[w.version]
        seen = next((t for t, v in answered if t >= w.started and v >= factor), None)
        if seen is None:
            continue
        lag = max(seen - w.finished, 0.0)
        lags.append(lag)
        if window[0] <= w.finished <= window[1]:
            lags_fault.append(lag)
    return {"deploy_to_served": latency_summary(lags), "deploy_to_served_fault": latency_summary(lags_fault)}


def fmt_fault(role: str, f: dict[str, object], counts: dict[str, int], inference: InferenceLoad) -> str:
    before, spike = f["write_latency_before"], f["write_latency_fault"]
    lag, lag_fault = f["deploy_to_served"], f["deploy_to_served_fault"]
    assert isinstance(before, dict) and isinstance(spike, dict)
    assert isinstance(lag, dict) and isinstance(lag_fault, dict)
    return (
        f"\netcd {role} SIGKILL during writes and rollouts: writes p50 {before['p50_ms']:.0f} ms / p99 "
        f"{before['p99_ms']:.0f} ms before; during the fault max {spike['max_ms']:.0f} ms (p50 {spike['p50_ms']:.0f}); "
        f"failed {f['failed_during_fault'] or 0}; longest gap between acked writes "
        f"{f['longest_gap_between_acked_writes_s']} s; recovery (kill → first acked write) {f['recovery_s']} s; "
        f"{counts['acked_pushes']} acked pushes + {counts['acked_deploys']} acked deploys all present; "
        f"failed-but-applied: {counts['failed_but_applied_pushes']} pushes, {counts['failed_but_applied_deploys']} "
        f"deploys; acked deploy → served by the worker p50 {lag['p50_ms']:.0f} ms, max {lag['max_ms']:.0f} ms "
        f"(max {lag_fault['max_ms']:.0f} ms for deploys acked during the fault); inference {len(inference.samples)} "
        f"requests, {len(inference.failed)} failed"
    )


@dataclass
class Setup:
    cluster: EtcdCluster
    control: ServerProcess
    worker: ServerProcess
    client: ControlPlaneClient


def start(fleet: Fleet, cluster: EtcdCluster, first: int) -> Setup:
    """Control plane on the cluster with member ``first`` at the head of its endpoint list, one worker."""
    order = [first] + [i for i in range(len(cluster.members)) if i != first]
    store = "etcd://" + ",".join(cluster.members[i].endpoint for i in order)
    control = fleet.control_plane(store)
    worker = fleet.worker("w1", control.grpc)
    client = ControlPlaneClient(control.grpc)
    wait_until(lambda: len(client.workers()) == 1, what="worker connected")
    return Setup(cluster, control, worker, client)


def fault_round(
    setup: Setup, tmp: Path, model: str, victim: int, role: str, *, before: float, dead: float, after: float
) -> dict[str, object]:
    client, worker = setup.client, setup.worker
    first = client.push(model, write_scale_onnx(tmp / f"{model}-base.onnx", 1.0))
    client.deploy(model, first.version)
    client.wait_rollout(model, timeout=30)
    wait_until(lambda: scale_of(worker.grpc, model) == 1.0, what="v1 served")

    inference = InferenceLoad([worker.grpc], model, threads=2, timeout=10).start()
    writer = Writer(setup.control.grpc, model, tmp).start()
    member = setup.cluster.members[victim]
    try:
        time.sleep(before)
        killed = time.monotonic()
        member.kill()
        time.sleep(dead)
        restarted = time.monotonic()
        member.start(timeout=30)
        time.sleep(after)
    finally:
        writer.stop()
        inference.stop()

    # Recovered by itself: a new version pushed and deployed through the same control plane reaches the worker.
    started = time.monotonic()
    last = client.push(model, write_scale_onnx(tmp / f"{model}-final.onnx", 7.0))
    generation = client.deploy(model, last.version).deployment.generation
    rollout = client.wait_rollout(model, generation, timeout=60)
    assert rollout.phase == resources_pb2.ROLLOUT_PHASE_SUCCEEDED, rollout
    try:
        wait_until(lambda: scale_of(worker.grpc, model) == 7.0, what="final version served")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nworker log:\n" + "\n".join(worker.log[-40:])) from None
    final_change_s = time.monotonic() - started

    bookends = [
        Write("push", 0, version=first.version, digest=first.digest),
        Write("push", 0, version=last.version, digest=last.digest),
        Write("deploy", 0, version=last.version, generation=generation),
    ]
    counts = verify_acknowledged(client, model, [*writer.writes, *bookends])
    figures = {"victim": role, "member": member.name, "was_store_endpoint": True, **fault_figures(
        writer.writes, killed, restarted), **counts, "final_push_deploy_acked_s": round(final_change_s, 3),
        **serving_lag(writer.writes, writer.factors, inference.samples, (killed, restarted + 2.0)),
        "inference_requests": len(inference.samples), "inference_failed": len(inference.failed)}
    print(fmt_fault(role, figures, counts, inference) + f"; afterwards push+deploy→ACK {final_change_s:.2f} s")
    assert not inference.failed, inference.errors()
    allowed = {1.0, 7.0, *writer.factors.values()}
    assert {s.value for s in inference.samples} <= allowed
    assert counts["acked_deploys"] > 0 and any(w.ok and w.started > killed for w in writer.writes)
    return figures


@pytest.mark.parametrize("role", ["leader", "follower"])
def test_member_kill_during_writes(role: str, fleet: Fleet, etcd3: EtcdCluster, tmp_path: Path) -> None:
    leader = etcd3.leader_index()
    victim = leader if role == "leader" else etcd3.follower_indexes()[0]
    setup = start(fleet, etcd3, victim)
    try:
        fault_round(setup, tmp_path, f"etcd-{role}", victim, role, before=1.5, dead=3.0, after=3.0)
    finally:
        setup.client.close()


@pytest.mark.soak
def test_etcd_faults_soak(fleet: Fleet, etcd3: EtcdCluster, tmp_path: Path) -> None:
    setup = start(fleet, etcd3, etcd3.leader_index())
    rounds = []
    try:
        for i in range(6):
            role = "leader" if i % 2 == 0 else "follower"
            victim = etcd3.leader_index() if role == "leader" else etcd3.follower_indexes()[0]
            figures = fault_round(setup, tmp_path, f"etcd-r{i}", victim, role, before=3.0, dead=8.0, after=4.0)
            figures["was_store_endpoint"] = i == 0
            rounds.append(figures)
    finally:
        setup.client.close()
    save_results("etcd-faults", {"rounds": rounds})
