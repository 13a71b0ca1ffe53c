"""Process faults with real processes: SIGKILL a worker mid-download and mid-load, SIGKILL a control-plane replica
while workers stream, restart everything from cold, and a worker whose disk cache was corrupted while stopped.

* **Mid-download, mid-load** — a 64 MiB model reaches the worker through a throttling TCP proxy (the worker's only
  way to the control plane), so the download takes seconds. The worker is SIGKILLed once a third of the artifact
  sits in its cache's ``.partial`` file; restarted, it must resume at that offset (its log says so, and the proxy
  counts only the rest crossing the wire). It is SIGKILLed again while it loads the verified file (its repository
  index says LOADING; its log has no "loaded" line); restarted once more, it must load from its cache without
  downloading again, ACK the rollout, and answer what the model computes.
* **Replica failover, cold restart, corrupt cache** — two control-plane replicas A and B on one etcd, two
  workers started with ``--control-plane A,B``. A is SIGKILLed under inference load: the workers move to B, a
  deploy through B reaches both, and no inference fails. Then every process (etcd included) stops; while they
  are down one worker's cached artifact gets a flipped weight (still a valid model, answering 3 instead of 2:
  only the digest check can tell); everything starts again on the same data and the desired state converges,
  the corrupted artifact downloaded again and the right answers served.

Faults of the worker's sync stream itself (a replica stopped mid-download, repeated network failures) are in
``test_sync_faults.py``. Figures are printed (run with ``-s``); ``-m soak`` repeats the failover ten times and
writes ``benchmarks/results/reliability-process-faults.json``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from etcd_cluster import EtcdCluster, free_port
from lmaas.client.control import ControlPlaneClient
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from processes import ServerProcess
from reliability_fleet import Fleet
from reliability_kit import (
    InferenceLoad,
    ThrottledProxy,
    infer,
    model_state,
    partial_size,
    save_results,
    scale_of,
    size_of,
    wait_until,
    write_matmul_onnx,
    write_scale_onnx,
)

BIG_N, BIG_LAYERS = 2048, 4  # 64 MiB of weights; ~0.4 s to load here
RATE = 24 << 20  # bytes/s through the proxy: the download takes ~3 s


def test_worker_killed_mid_download_and_mid_load(fleet: Fleet, tmp_path: Path) -> None:
    control = fleet.control_plane(f"sqlite:///{tmp_path / 'control.db'}")
    big = write_matmul_onnx(tmp_path / "big.onnx", n=BIG_N, layers=BIG_LAYERS)
    size = big.stat().st_size
    x = np.random.default_rng(1).standard_normal((2, BIG_N), dtype=np.float32)
    expected = ort.InferenceSession(str(big), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with ThrottledProxy(control.grpc, RATE) as proxy, ControlPlaneClient(control.grpc) as client:
        port = free_port()
        worker = fleet.worker("w1", proxy.address, port=port)
        wait_until(lambda: len(client.workers()) == 1, what="worker connected")
        version = client.push("big", big)
        final = fleet.cached("w1", version.digest)
        generation = client.deploy("big", version.version).deployment.generation

        # 1. SIGKILL mid-download.
        wait_until(lambda: partial_size(final) >= size // 3, timeout=60, interval=0.005, what="a third downloaded")
        fleet.kill(worker)
        kept = partial_size(final)
        assert 0 < kept < size and not final.exists()

        # 2. Restart: the download resumes at `kept`; SIGKILL again while the verified file is loading.
        down_before = proxy.bytes_down
        restarted = time.monotonic()
        worker = fleet.worker("w1", proxy.address, port=port)
        wait_until(final.exists, timeout=60, interval=0.002, what="download finished")
        wait_until(lambda: model_state(worker.grpc, "big") == "LOADING", timeout=5, interval=0.002, what="loading")
        fleet.kill(worker)
        resumed_after = time.monotonic() - restarted
        transferred = proxy.bytes_down - down_before
        log = worker.output()
        offsets = [int(m) for m in re.findall(r"resuming download of sha256:\w+ at byte (\d+) of", log)]
        assert offsets == [kept], f"expected a resume at byte {kept}, log says {offsets}:\n{log}"
        assert transferred < size - kept + (2 << 20), f"{transferred} bytes crossed the proxy after the restart"
        assert "loaded model=big" not in log, "the kill came after the load finished"
        assert partial_size(final) == 0 and size_of(final) == size

        # 3. Restart from the complete cache: no download, load, ACK, right answers.
        down_before = proxy.bytes_down
        restarted = time.monotonic()
        worker = fleet.worker("w1", proxy.address, port=port)
        rollout = client.wait_rollout("big", generation, timeout=60)
        converged = time.monotonic() - restarted
        assert rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED, rollout
        wait_until(lambda: infer(worker.grpc, "big", x).shape == expected.shape, what="big served")
        np.testing.assert_allclose(infer(worker.grpc, "big", x), expected, rtol=1e-4, atol=1e-4)
        again = proxy.bytes_down - down_before
        assert again < (1 << 20), f"{again} bytes downloaded again from a complete cache"
        load_s = re.search(r"loaded model=big version=1 \S+ seconds=([\d.]+)", worker.output())
    print(
        f"\nworker SIGKILL mid-download of a {size / 2**20:.0f} MiB artifact (throttled to {RATE / 2**20:.0f} MiB/s): "
        f"{kept / 2**20:.1f} MiB kept in the partial file; the restarted worker resumed at byte {kept} and pulled "
        f"{transferred / 2**20:.1f} MiB (not {size / 2**20:.0f}) in {resumed_after:.2f} s; SIGKILL mid-load; the "
        f"next restart loaded from cache ({again} bytes over the wire, load {load_s.group(1) if load_s else '?'} s) "
        f"and its rollout was ACKed {converged:.2f} s after the start"
    )


def corrupt_weight(path: Path, old: float, new: float) -> None:
    """Replace the float32 ``old`` in a model file by ``new``: a valid model with a different answer."""
    data = path.read_bytes()
    needle, replacement = np.float32(old).tobytes(), np.float32(new).tobytes()
    assert data.count(needle) == 1
    path.write_bytes(data.replace(needle, replacement))


def replica_failover(
    fleet: Fleet, victim: ServerProcess, survivor: str, survivor_name: str, workers: list[ServerProcess], version: int
) -> dict[str, float]:
    """SIGKILL ``victim`` under load; the workers move to ``survivor``; a deploy of ``version`` (scale model of
    factor ``version``) through it reaches both. Returns the timings."""
    load = InferenceLoad([w.grpc for w in workers], "scale", threads=2, timeout=10).start()
    try:
        time.sleep(0.5)
        killed = time.monotonic()
        fleet.kill(victim)
        with ControlPlaneClient(survivor) as client:
            wait_until(
                lambda: [w.control_plane for w in client.workers()] == [survivor_name] * 2, timeout=30,
                what=f"both workers on replica {survivor_name}",
            )
            moved = time.monotonic() - killed
            started = time.monotonic()
            generation = client.deploy("scale", version).deployment.generation
            rollout = client.wait_rollout("scale", generation, timeout=30)
            assert rollout.phase == pb.ROLLOUT_PHASE_SUCCEEDED and len(rollout.workers) == 2, rollout
            deployed = time.monotonic() - started
        wait_until(lambda: all(scale_of(w.grpc) == version for w in workers), what=f"v{version} served")
        time.sleep(0.3)
    finally:
        load.stop()
    assert not load.failed, load.errors()
    assert len(load.samples) > 50
    return {"failover_s": round(moved, 3), "deploy_after_failover_s": round(deployed, 3),
            "requests": len(load.samples), "failed": len(load.failed)}


def test_replica_failover_cold_restart_and_corrupt_cache(fleet: Fleet, etcd1: EtcdCluster, tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    addresses = [f"127.0.0.1:{p}" for p in ports]
    replicas = fleet.replicas(etcd1.url, ports)
    worker_ports = {"w1": free_port(), "w2": free_port()}
    both = ",".join(addresses)
    workers = [fleet.worker(w, both, port=p) for w, p in worker_ports.items()]
    with ControlPlaneClient(addresses[0]) as client:
        wait_until(lambda: len(client.workers()) == 2, what="both workers on replica A")
        assert {w.control_plane for w in client.workers()} == {"cpA"}
        for factor in (1, 2):
            client.push("scale", write_scale_onnx(tmp_path / f"v{factor}.onnx", float(factor)))
        client.deploy("scale", 1)
        assert client.wait_rollout("scale", timeout=30).phase == pb.ROLLOUT_PHASE_SUCCEEDED
        digest_v2 = client.get_version("scale", 2).digest
    wait_until(lambda: all(scale_of(w.grpc) == 1.0 for w in workers), what="v1 served")

    failover = replica_failover(fleet, replicas[0], addresses[1], "cpB", workers, version=2)

    # Cold: stop every process, etcd included; corrupt w2's cached v2 meanwhile; start everything again.
    fleet.stop_all()
    etcd1.stop()
    corrupt_weight(fleet.cached("w2", digest_v2), 2.0, 3.0)
    cold = time.monotonic()
    etcd1.start()
    fleet.replicas(etcd1.url, ports)
    workers = [fleet.worker(w, both, port=p) for w, p in worker_ports.items()]
    converge = wait_until(lambda: all(scale_of(w.grpc) == 2.0 for w in workers), timeout=60, what="v2 again")
    cold_s = time.monotonic() - cold
    with ControlPlaneClient(addresses[1]) as client:
        assert [v.version for v in client.list_versions("scale")] == [1, 2]
        assert client.get_deployment("scale").deployment.spec.stable_version == 2
        wait_until(lambda: len(client.workers()) == 2, what="both workers registered after the cold start")
    assert "is corrupt; downloading it again" in workers[1].output()
    assert all(scale_of(w.grpc, timeout=5) == 2.0 for w in workers for _ in range(20))
    assert all(float(infer(w.grpc, "scale")[0, 1]) == 2.0 for w in workers)
    print(
        f"\ncontrol-plane replica SIGKILL (2 replicas on etcd, 2 workers with --control-plane A,B): both workers on "
        f"replica B {failover['failover_s']:.2f} s after the kill; a deploy through B ACKed by both in "
        f"{failover['deploy_after_failover_s'] * 1000:.0f} ms; {failover['requests']:.0f} inference requests during "
        f"it, 0 failed.\ncold restart of everything (etcd, 2 replicas, 2 workers) with one corrupted cache entry: "
        f"desired state served again {cold_s:.2f} s after etcd started ({converge:.2f} s after the workers were "
        f"up); the corrupted artifact was detected and downloaded again"
    )


@pytest.mark.soak
def test_replica_failover_soak(fleet: Fleet, etcd1: EtcdCluster, tmp_path: Path) -> None:
    """Ten failovers under load: kill A, the workers move to B, deploy through B; restart A; kill B; and so on."""
    ports = [free_port(), free_port()]
    addresses = [f"127.0.0.1:{p}" for p in ports]
    replicas = fleet.replicas(etcd1.url, ports)
    workers = [fleet.worker(w, ",".join(addresses)) for w in ("w1", "w2")]
    with ControlPlaneClient(addresses[0]) as client:
        wait_until(lambda: len(client.workers()) == 2)
        for factor in (1, 2):
            client.push("scale", write_scale_onnx(tmp_path / f"v{factor}.onnx", float(factor)))
        client.deploy("scale", 1)
        client.wait_rollout("scale", timeout=30)
    rounds = []
    for i in range(10):
        dead, alive = i % 2, 1 - i % 2
        figures = replica_failover(fleet, replicas[dead], addresses[alive], Fleet.REPLICAS[alive], workers, 2 - i % 2)
        rounds.append(figures)
        print(f"failover {i + 1} ({Fleet.REPLICAS[dead]} killed): {figures}")
        replicas[dead] = fleet.control_plane(etcd1.url, port=ports[dead], replica=Fleet.REPLICAS[dead])
    failovers = [r["failover_s"] for r in rounds]
    figures_all = {"failovers": rounds, "failover_p50_s": float(np.median(failovers)), "failover_max_s": max(failovers)}
    print(f"\n10 control-plane replica kills: workers moved in p50 {figures_all['failover_p50_s']:.2f} s, max "
          f"{figures_all['failover_max_s']:.2f} s; every deploy after a failover ACKed by both; 0 failed requests")
    save_results("process-faults", figures_all)
