"""End to end with real processes: a control plane (SQLite or etcd), two real workers, tritonclient.

Figures (deploy→serving and rollback latencies, requests during flips) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tc
from cp_harness import lmaas, start_control_plane, write_scale_onnx
from etcd_cluster import EtcdCluster, free_port
from lmaas.client.control import ControlPlaneClient
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from processes import ServerProcess, start_worker

X = np.arange(8, dtype=np.float32).reshape(2, 4)


@dataclass
class Cluster:
    tmp: Path
    port: int
    store: str
    control: ServerProcess
    workers: dict[str, ServerProcess] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_control(self) -> None:
        self.control = start_control_plane(self.tmp, "--grpc-port", str(self.port), store=self.store)

    def start_worker(self, worker_id: str) -> ServerProcess:
        self.workers[worker_id] = start_worker(
            None, "--control-plane", self.address, "--worker-id", worker_id,
            "--cache-dir", str(self.tmp / f"cache-{worker_id}"), "--drain-timeout", "5",
        )
        return self.workers[worker_id]

    def stop(self) -> None:
        for proc in self.workers.values():
            proc.stop()
        self.control.stop()


def scale(address: str, version: str = "") -> float:
    """Which version answered: the factor the model multiplied by."""
    with tc.InferenceServerClient(address) as client:
        x = tc.InferInput("x", list(X.shape), "FP32")
        x.set_data_from_numpy(X)
        y = client.infer("scale", [x], model_version=version).as_numpy("y")
    return float(y[0, 1] / X[0, 1])


def wait_for(check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def serving_everywhere(cluster: Cluster, factor: float) -> bool:
    return all(scale(w.grpc) == factor for w in cluster.workers.values())


@pytest.fixture(params=["sqlite", "etcd"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    if request.param == "etcd":
        etcd: EtcdCluster = request.getfixturevalue("etcd_server")
        store = etcd.url
        import asyncio

        from lmaas.control_plane.store.etcd import EtcdStore

        async def wipe() -> None:
            async with EtcdStore(etcd.endpoints) as s:
                await s.delete("", prefix=True)

        asyncio.run(wipe())
    else:
        store = f"sqlite:///{tmp_path / 'control.db'}"
    port = free_port()
    c = Cluster(tmp_path, port, store, start_control_plane(tmp_path, "--grpc-port", str(port), store=store))
    try:
        for worker_id in ("w1", "w2"):
            c.start_worker(worker_id)
        with ControlPlaneClient(c.address) as client:
            wait_for(lambda: len(client.workers()) == 2)
        yield c
    finally:
        c.stop()


def push_versions(cluster: Cluster) -> None:
    for factor in (1.0, 2.0):
        path = write_scale_onnx(cluster.tmp / f"v{factor:.0f}" / "model.onnx", factor)
        assert lmaas("model", "push", "scale", str(path), "-q", address=cluster.address).stdout.strip() == (
            f"{factor:.0f}"
        )
    corrupt = cluster.tmp / "v3" / "model.onnx"
    corrupt.parent.mkdir()
    corrupt.write_bytes(os.urandom(4096))  # uploads fine (its digest is right), fails to load on the workers
    assert lmaas("model", "push", "scale", str(corrupt), "-q", address=cluster.address).stdout.strip() == "3"


def test_deploy_rollback_canary_and_nack(cluster: Cluster) -> None:
    push_versions(cluster)
    address = cluster.address
    lmaas("deploy", "scale", "1", "--wait", address=address)
    assert serving_everywhere(cluster, 1.0)
    lmaas("deploy", "scale", "2", "--wait", address=address)
    assert serving_everywhere(cluster, 2.0)
    assert all(scale(w.grpc, "1") == 1.0 for w in cluster.workers.values())  # the previous version stays warm
    lmaas("rollback", "scale", "--wait", address=address)
    assert serving_everywhere(cluster, 1.0)

    lmaas("deploy", "scale", "1", "--canary", "2", "--weight", "30", "--wait", address=address)
    seen = [scale(w.grpc) for w in cluster.workers.values() for _ in range(200)]
    share = seen.count(2.0) / len(seen)
    print(f"\ncanary 30%: {share:.1%} of {len(seen)} requests went to the canary")
    # each request picks independently: the share is binomial; 6 standard deviations fail once in ~10^9 runs
    assert set(seen) == {1.0, 2.0} and abs(share - 0.3) <= 6 * (0.3 * 0.7 / len(seen)) ** 0.5

    lmaas("deploy", "scale", "1", "--wait", address=address)
    failed = lmaas("deploy", "scale", "3", "--wait", address=address, check=False)
    assert failed.returncode == 1 and "failed" in failed.stderr and "rejected generation" in failed.stderr
    with ControlPlaneClient(address) as client:
        got = client.get_deployment("scale")
        assert got.rollout.phase == pb.ROLLOUT_PHASE_FAILED and got.deployment.spec.stable_version == 1
        wait_for(lambda: all(m.ok for w in client.workers() for m in w.models))
    assert serving_everywhere(cluster, 1.0)


def test_zero_failed_requests_through_deploy_rollback_cycles(cluster: Cluster) -> None:
    push_versions(cluster)
    stop = threading.Event()
    counts = {"sent": 0, "failed": 0}
    errors: list[str] = []

    def load(address: str) -> None:
        with tc.InferenceServerClient(address) as client:
            x = tc.InferInput("x", list(X.shape), "FP32")
            x.set_data_from_numpy(X)
            while not stop.is_set():
                try:
                    client.infer("scale", [x])
                    counts["sent"] += 1
                except Exception as exc:
                    counts["failed"] += 1
                    errors.append(repr(exc))

    with ControlPlaneClient(cluster.address) as client:
        start = time.perf_counter()
        client.deploy("scale", 1)
        client.wait_rollout("scale")
        cold = time.perf_counter() - start
        wait_for(lambda: serving_everywhere(cluster, 1.0))
        threads = [threading.Thread(target=load, args=(w.grpc,)) for w in cluster.workers.values() for _ in range(2)]
        for t in threads:
            t.start()
        deploys, rollbacks = [], []
        try:
            for _ in range(20):
                start = time.perf_counter()
                reply = client.deploy("scale", 2)
                assert client.wait_rollout("scale", reply.deployment.generation).phase == pb.ROLLOUT_PHASE_SUCCEEDED
                deploys.append(time.perf_counter() - start)
                start = time.perf_counter()
                back = client.rollback("scale")
                assert client.wait_rollout("scale", back.deployment.generation).phase == pb.ROLLOUT_PHASE_SUCCEEDED
                rollbacks.append(time.perf_counter() - start)
        finally:
            stop.set()
            for t in threads:
                t.join()
    print(
        f"\n20 deploy/rollback cycles, 2 workers: {counts['sent']} requests, {counts['failed']} failed; "
        f"first deploy (download+load+warm): {cold * 1000:.0f} ms, first deploy of v2 under load: "
        f"{deploys[0] * 1000:.0f} ms; deploy→all workers ACKed: median {statistics.median(deploys) * 1000:.0f} ms, "
        f"max {max(deploys) * 1000:.0f} ms; rollback: median {statistics.median(rollbacks) * 1000:.0f} ms, "
        f"max {max(rollbacks) * 1000:.0f} ms"
    )
    assert counts["failed"] == 0, errors[:5]
    assert counts["sent"] > 100


def test_worker_kill_and_control_plane_restart(cluster: Cluster) -> None:
    push_versions(cluster)
    lmaas("deploy", "scale", "2", "--wait", address=cluster.address)
    assert serving_everywhere(cluster, 2.0)

    cluster.workers["w1"].stop(signal.SIGKILL)
    start = time.perf_counter()
    cluster.start_worker("w1")  # a fresh process, the same id and cache
    wait_for(lambda: scale(cluster.workers["w1"].grpc) == 2.0)
    print(f"\nkill -9 + restart: the new worker served the desired version {time.perf_counter() - start:.2f} s "
          "after it was started")

    assert cluster.control.stop(signal.SIGTERM) == 0
    assert serving_everywhere(cluster, 2.0)  # the data plane keeps serving without its control plane
    time.sleep(1.0)
    assert serving_everywhere(cluster, 2.0)
    cluster.start_control()
    with ControlPlaneClient(cluster.address) as client:
        assert [v.version for v in client.list_versions("scale")] == [1, 2, 3]
        assert client.get_deployment("scale").deployment.spec.stable_version == 2
        wait_for(lambda: len(client.workers()) == 2)
        client.deploy("scale", 1)
        assert client.wait_rollout("scale").phase == pb.ROLLOUT_PHASE_SUCCEEDED
    assert serving_everywhere(cluster, 1.0)


def test_two_control_plane_replicas_on_one_etcd(etcd_server: EtcdCluster, tmp_path: Path) -> None:
    import asyncio

    from lmaas.control_plane.store.etcd import EtcdStore

    async def wipe() -> None:
        async with EtcdStore(etcd_server.endpoints) as s:
            await s.delete("", prefix=True)

    asyncio.run(wipe())
    replicas = [start_control_plane(tmp_path, "--replica-id", f"cp{i}", store=etcd_server.url) for i in (1, 2)]
    workers = []
    try:
        for i, replica in enumerate(replicas):  # one worker on each replica
            workers.append(start_worker(None, "--control-plane", replica.grpc, "--worker-id", f"w{i + 1}",
                                        "--cache-dir", str(tmp_path / f"cache-{i}")))
        path = write_scale_onnx(tmp_path / "model.onnx", 3.0)
        with ControlPlaneClient(replicas[0].grpc) as client:
            wait_for(lambda: len(client.workers()) == 2)
            assert {w.control_plane for w in client.workers()} == {"cp1", "cp2"}
            client.push("scale", path)
            client.deploy("scale", 1)  # through replica 1 only
            rollout = client.wait_rollout("scale")
            assert rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED and len(rollout.workers) == 2
        assert all(scale(w.grpc) == 3.0 for w in workers)
        with ControlPlaneClient(replicas[1].grpc) as other:  # the other replica sees the same state
            assert other.get_deployment("scale").deployment.spec.stable_version == 1
    finally:
        for proc in (*workers, *replicas):
            proc.stop()
